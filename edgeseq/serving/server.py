"""`edgeseq serve`: load an artifact and serve it with uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections and lets the requests in flight finish
(up to the drain timeout); then the model closes and the process exits 0. Before the model
loads, the exposure is checked: a non-loopback host needs API keys (or `no_auth`), and the
TLS files must load. The access log (edgeseq.access) goes to stderr unless turned off.
"""

import logging
import signal
import sys
from pathlib import Path

from .access_log import LOG as ACCESS_LOG
from .app import build_app
from .auth import ApiKeys, AuthPolicy, check_exposure
from .limits import ServeLimits
from .tls import TLSOptions


def log_access_to_stderr() -> None:
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


def run_server(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
               limits: ServeLimits | None = None, threads: int | None = None, max_batch: int = 32,
               max_queue: int = 256, target: str = "ort-cpu", on_ready=None, auth: AuthPolicy | None = None,
               no_auth: bool = False, tls: TLSOptions | None = None, access_log: bool = True,
               trusted_key: str | Path | None = None, prefix_cache_mb: float | None = None) -> None:
    import uvicorn

    from edgeseq.runtimes import load

    limits = limits or ServeLimits()
    auth = auth or AuthPolicy(ApiKeys(()))
    tls = tls or TLSOptions()
    check_exposure(host, auth.keys, no_auth)
    if access_log:
        log_access_to_stderr()
    model = load(artifact, target=target, threads=threads, max_batch=max_batch, max_queue=max_queue,
                 trusted_key=trusted_key, prefix_cache_mb=prefix_cache_mb)
    name = name or Path(artifact).resolve().name
    app = build_app(model, name, limits, close_model=True, auth=auth)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=limits.drain_timeout_s, lifespan="on", **tls.uvicorn_options())
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(name)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found at
    # start: make that one a no-op, so a drained server exits 0 instead of dying by the signal
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        model.close()  # idempotent; covers a failure before the lifespan ran
