"""ONNX Runtime backend: one session per graph, created up front, weights loaded once.

The weights file is memory-mapped once; each distinct tensor becomes one OrtValue that
every session which names it receives through `add_initializer`, so a weight shared by
the encoder and the decoder (RED's share_parameters) is read and held once. An int8
artifact's 8-bit weights are requantized to 7 bits here, once, on a CPU whose int8 kernel
needs it (runtimes/cpu_features.py); `int8` records the choice.
"""

import os
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeseq.errors import LoadError

from .artifact import WEIGHTS_FILE, Artifact
from .cpu_features import int8_weight_choice

PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def check_providers(target: str) -> list[str]:
    """Execution providers for an ONNX Runtime target, or a clear error saying what is missing."""
    providers = PROVIDERS[target]
    if providers[0] not in ort.get_available_providers():
        raise LoadError(
            f"target {target!r} needs {providers[0]}, which this onnxruntime build lacks",
            "install edgeseq[gpu] on a CUDA machine, or use --target ort-cpu",
        )
    return providers


def load_weights(artifact: Artifact) -> dict[str, ort.OrtValue]:
    """One OrtValue per distinct tensor of the weights file, keyed by its manifest key."""
    weights = artifact.manifest.get("weights", {"tensors": {}})
    if not weights["tensors"]:
        return {}
    # copy-on-write mapping: ORT needs a writable buffer, nothing ever writes to it
    blob = np.memmap(artifact.file(WEIGHTS_FILE), dtype=np.uint8, mode="c")
    values = {}
    for key, t in weights["tensors"].items():
        raw = blob[t["offset"] : t["offset"] + t["bytes"]]
        values[key] = ort.OrtValue.ortvalue_from_numpy(raw.view(np.dtype(t["dtype"])).reshape(t["shape"]))
    return values


def requantize_to_7_bits(artifact: Artifact, values: dict[str, ort.OrtValue]) -> int:
    """Replace every 8-bit weight (an `X.int8` initializer) and its per-column scale (`X.scale`)
    by the 7-bit pair q7 = round(q8 / 2), scale * 2, once per stored tensor, before any
    session is made; returns how many weights it rewrote."""
    pairs = {}
    for graph in artifact.manifest["graphs"].values():
        names = graph.get("initializers", {})
        for name, key in names.items():
            if name.endswith(".int8") and name[: -len(".int8")] + ".scale" in names:
                pairs[key] = names[name[: -len(".int8")] + ".scale"]
    for q_key, scale_key in pairs.items():
        q8 = values[q_key].numpy()
        q7 = np.clip(np.rint(q8.astype(np.float32) / 2), -63, 63).astype(np.int8)
        values[q_key] = ort.OrtValue.ortvalue_from_numpy(q7)
        values[scale_key] = ort.OrtValue.ortvalue_from_numpy((values[scale_key].numpy() * 2).astype(np.float32))
    return len(pairs)


class OrtBackend:
    """Sessions for every graph of an artifact (runtimes/backend.py `Backend`); `run` is safe
    to call from many threads."""

    def __init__(self, artifact: Artifact, target: str = "ort-cpu", threads: int | None = None,
                 threads_per_graph: dict[str, int] | None = None, low_memory: bool = False,
                 spin: bool = False):
        self.providers = check_providers(target)
        self.artifact = artifact
        self.weights = load_weights(artifact)  # kept alive: the sessions use this memory in place
        self.int8 = int8_weight_choice(artifact.manifest)
        if self.int8 is not None and self.int8["bits"] < self.int8["stored_bits"]:
            self.int8["requantized"] = requantize_to_7_bits(artifact, self.weights)
        self.sessions: dict[str, ort.InferenceSession] = {}
        threads = threads or os.cpu_count() or 1
        steps = set(artifact.manifest["decode"]["step"])
        for name, graph in artifact.manifest["graphs"].items():
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = (threads_per_graph or {}).get(name, threads)
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # concurrent stages must not spin: an idle stage's threads would steal the cores
            # of the busy one. One step session at a time may: waking a sleeping worker for
            # each of a step's ~250 small kernels costs more than it saves. The once-per-request
            # graph (encoder, prefill) never spins: its idle threads would spin on into the
            # first steps (measured: first-token times bimodal, 11.6 or ~15 ms on t5-small int8)
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin and name in steps else "0")
            options.add_session_config_entry("session.force_spinning_stop", "1")
            if low_memory:
                # MatMul prepacking copies every weight into a packed buffer beside the
                # mapped original: about twice the resident memory, for ~1.5x at batch 8
                options.add_session_config_entry("session.disable_prepacking", "1")
            for init_name, key in graph.get("initializers", {}).items():
                options.add_initializer(init_name, self.weights[key])
            # ONNX Runtime's own skip-norm fusion would undo passes/fuse_residual_norm.py's choice
            # for a once-per-request graph: its SkipLayerNormalization costs ~6x Add + LayerNorm
            # per row, and such a graph runs over every prompt token
            disabled = [] if name in steps else ["SkipLayerNormFusion"]
            try:
                self.sessions[name] = ort.InferenceSession(
                    str(artifact.file(graph["file"])), sess_options=options, providers=self.providers,
                    disabled_optimizers=disabled)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                raise LoadError(f"ONNX Runtime could not load graph {name!r}: {e}", "recompile the artifact") from e
        self.output_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one graph; feeds are numpy arrays (what `tensor` returns on CPU) or OrtValues;
        outputs by name, numpy arrays on the binding this was written for."""
        names = self.output_names[graph]
        session = self.sessions[graph]
        inner = getattr(session, "_sess", None)
        if inner is None:  # not the binding this was written against: the public call
            values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
            return dict(zip(names, session.run_with_ort_values(names, values)))
        # the binding itself: it wraps a numpy feed in place (no copy; an OrtValue feed is
        # taken too), releases the GIL while the graph runs and returns numpy outputs. The
        # public wrapper validates every feed and the OrtValue path wraps and unwraps every
        # output: ~15 us per call, measured on a StagFormer stage, out of a batch-1 int8
        # step of ~400
        return dict(zip(names, inner.run(names, feeds, None)))

    def tensor(self, array: np.ndarray) -> np.ndarray:
        """The array itself: the binding wraps a numpy feed over its own memory (CPU), so
        feeding it copies nothing and it sees later in-place writes to the array. The caller
        keeps the array alive."""
        return array

    def numpy(self, value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def close(self) -> None:
        self.sessions.clear()
        self.weights.clear()
