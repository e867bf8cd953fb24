"""Artifact loading and decoding; torch-free (an edge box installs numpy and onnxruntime only).

    model = edgeseq.runtimes.load("artifacts/red-tiny")
    model.generate([[5, 17, 3]], max_new_tokens=8).tokens
"""

from pathlib import Path

from edgeseq.errors import LoadError

from .artifact import FORMAT_VERSION, Artifact, read_artifact
from .decoding import GenerateResult
from .encoder_decoder import EncoderDecoderModel
from .ort_backend import TARGETS, OrtBackend
from .sampling import SamplingOptions
from .staggered import SCHEDULES, StaggeredDecoderModel

RUNTIME_FAMILIES = ("red", "nash", "stagformer")


def load(path: str | Path, target: str = "ort-cpu", threads: int | None = None, verify: bool = True,
         schedule: str = "concurrent", low_memory: bool = False):
    """Load a compiled artifact: verify it, create every session, return the family's model.

    `threads` is the total intra-op thread budget (default: all cores); `schedule`
    (StagFormer) runs the stages of a step `concurrent`ly, `sequential`ly, or
    `recurrent`ly (shared weights); `low_memory` turns off ONNX Runtime's weight
    prepacking: about half the resident memory, slower at batch > 1.
    """
    artifact = read_artifact(path, verify=verify)
    if artifact.family in ("red", "nash"):
        return EncoderDecoderModel(artifact, OrtBackend(artifact, target, threads, low_memory=low_memory, spin=True))
    if artifact.family == "stagformer":
        return StaggeredDecoderModel(artifact, target, threads, schedule, low_memory)
    raise LoadError(
        f"artifact family {artifact.family!r} has no runtime in this edgeseq",
        f"this edgeseq runs: {', '.join(RUNTIME_FAMILIES)}; upgrade edgeseq",
    )


__all__ = ["SCHEDULES", "FORMAT_VERSION", "TARGETS", "Artifact", "GenerateResult", "SamplingOptions", "load", "read_artifact"]
