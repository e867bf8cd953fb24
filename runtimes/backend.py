"""The backend interface the engine runs graphs through, and the table from target to backend.

A backend owns the sessions of one artifact's graphs: it runs a graph with named feeds and
returns its outputs by name, makes device tensors from numpy arrays (sharing their memory
where it can, so a preallocated cache is fed without a copy), reads them back, and closes.
The engine above it never imports a runtime library; a TensorRT backend is one new file
and one entry in BACKENDS.
"""

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edgeseq.errors import LoadError


class Backend(Protocol):
    artifact: Any

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one graph; feeds are backend tensors (or numpy arrays); outputs by name."""
        ...

    def tensor(self, array: np.ndarray) -> Any:
        """A backend tensor over `array` (sharing its memory where the device allows)."""
        ...

    def numpy(self, value: Any) -> np.ndarray:
        """A backend tensor as a numpy array."""
        ...

    def close(self) -> None: ...


def _ort(artifact, target, threads, threads_per_graph, low_memory, spin):
    from .ort_backend import OrtBackend

    return OrtBackend(artifact, target, threads, threads_per_graph, low_memory, spin)


def _ort_providers(target: str) -> Callable[[], None]:
    def check() -> None:
        from .ort_backend import check_providers

        check_providers(target)

    return check


# target -> (backend factory, a check that the target can run here)
BACKENDS: dict[str, tuple[Callable[..., Backend], Callable[[], None]]] = {
    target: (_ort, _ort_providers(target)) for target in ("ort-cpu", "ort-cuda", "ort-tensorrt")
}
PLANNED_TARGETS = ("tensorrt",)
TARGETS = tuple(BACKENDS)


def check_target(target: str) -> None:
    """Raise a clear LoadError unless `target` is a backend that can run on this machine."""
    if target in PLANNED_TARGETS:
        raise LoadError(f"target {target!r} (native TensorRT engines) is not available yet", "use --target ort-cpu")
    if target not in BACKENDS:
        raise LoadError(f"unknown target {target!r}", f"choose one of: {', '.join([*BACKENDS, *PLANNED_TARGETS])}")
    BACKENDS[target][1]()


def make_backend(artifact, target: str = "ort-cpu", threads: int | None = None,
                 threads_per_graph: dict[str, int] | None = None, low_memory: bool = False,
                 spin: bool = False) -> Backend:
    check_target(target)
    return BACKENDS[target][0](artifact, target, threads, threads_per_graph, low_memory, spin)
