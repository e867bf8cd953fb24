"""Artifact loading and decoding; torch-free (an edge box installs numpy and onnxruntime only).

    model = edgeseq.runtimes.load("artifacts/red-tiny")
    model.generate([[5, 17, 3]], max_new_tokens=8).tokens
"""

from pathlib import Path

from edgeseq.errors import LoadError

from .artifact import FORMAT_VERSION, Artifact, read_artifact
from .encoder_decoder import EncoderDecoderModel, GenerateResult
from .ort_backend import TARGETS, OrtBackend
from .sampling import SamplingOptions

# family -> the decode loop that runs it
RUNNERS = {"red": EncoderDecoderModel}


def load(path: str | Path, target: str = "ort-cpu", threads: int | None = None, verify: bool = True):
    """Load a compiled artifact: verify it, create every session, return the family's model."""
    artifact = read_artifact(path, verify=verify)
    runner = RUNNERS.get(artifact.family)
    if runner is None:
        raise LoadError(
            f"artifact family {artifact.family!r} has no runtime in this edgeseq",
            f"this edgeseq runs: {', '.join(sorted(RUNNERS))}; upgrade edgeseq",
        )
    return runner(artifact, OrtBackend(artifact, target=target, threads=threads))


__all__ = ["FORMAT_VERSION", "TARGETS", "Artifact", "GenerateResult", "SamplingOptions", "load", "read_artifact"]
