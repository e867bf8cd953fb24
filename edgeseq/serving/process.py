"""Run `edgeseq serve` as a child process on a free port of 127.0.0.1 (tests, benchmarks).

Waits until the server answers ready; always stops it (SIGTERM, then kill) on exit.
"""

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_ready(url: str, context=None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def serve_process(artifact: str | Path, *options: str, start_timeout: float = 60.0, tls_context=None):
    """Yields (url, process) of a running server; stops it afterwards. `tls_context` (an
    ssl.SSLContext that trusts the server's CA, with a client certificate for mutual TLS):
    the server was given TLS options, so probe it over https."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgeseq.cli", "serve", str(artifact), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"{'https' if tls_context is not None else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while not is_ready(url, tls_context):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"edgeseq serve did not start: {process.communicate(timeout=10)[1][-2000:]}")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.communicate(timeout=30)


def resident_mb(pid: int) -> float:
    """A process's resident set size in MiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
