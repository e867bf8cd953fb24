"""Serving: an HTTP server over one loaded model's scheduler, and the Ray Serve deployment.

`build_app(model, ...)` is the FastAPI application (OpenAI-style completions, the Open
Inference Protocol v2, Prometheus metrics); `run_server(artifact, ...)` loads an artifact
and serves it with uvicorn (what `edgeseq serve` runs). Needs the `serve` extra.
"""

from .app import build_app
from .limits import ServeLimits
from .server import run_server

__all__ = ["ServeLimits", "build_app", "run_server"]
