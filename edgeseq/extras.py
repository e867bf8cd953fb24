"""The optional parts of edgeseq, and the one-line error when a command needs a missing one.

An edge box installs the runtime alone (`pip install edgeseq`: numpy, onnxruntime, small
libraries). Compiling needs PyTorch and the ONNX toolchain (`edgeseq[compile]`), serving
needs FastAPI and uvicorn (`edgeseq[serve]`).
"""

import importlib.util

from edgeseq.errors import BuildError

EXTRAS = {
    "compile": ("torch", "onnx", "onnxscript", "onnx_ir", "safetensors"),
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, command: str) -> None:
    """Raise a BuildError naming the install line when `command` needs an absent extra."""
    absent = missing(extra)
    if absent:
        raise BuildError(f"`edgeseq {command}` needs the {extra} extra ({', '.join(absent)} not installed)",
                         f"pip install 'edgeseq[{extra}]'" + (" (torch==2.13.0 first for the CPU wheel)" if "torch" in absent else ""))
