"""API keys: who may use the server.

Keys come from `--api-key` (repeatable), `--api-key-file` (one a line, `#` comments) and
the EDGESEQ_API_KEY variable. A client sends `Authorization: Bearer KEY`. The check hashes
the presented key and compares its SHA-256 digest with every configured key's digest by
`hmac.compare_digest`, with no early exit: the time an answer takes says nothing about
which key, or how much of one, matched (hashing first also hides the length of each key).
Keys are held as digests only and never logged.

The gate is ASGI middleware in front of the whole application, so it is default-deny: a
route added later is guarded without anyone remembering to guard it. Open are the probes
(`/health/live`, `/health/ready`, `/v2/health/live`, `/v2/health/ready`) and, with
`--public-metrics`, `/metrics`.
"""

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeseq.errors import BuildError

from .http_errors import HTTPProblem

ENV_KEY = "EDGESEQ_API_KEY"
MIN_KEY_CHARS = 16
PROBES = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})
METRICS = "/metrics"
MAKE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogateescape")).digest()


def _checked(key: str, source: str) -> str:
    if len(key) < MIN_KEY_CHARS:
        raise BuildError(f"an API key from {source} has {len(key)} characters; keys need at least {MIN_KEY_CHARS}",
                         f"make one with {MAKE_KEY}")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise BuildError(f"an API key from {source} holds whitespace or control characters",
                         "use printable characters only (a Bearer token is one word)")
    return key


def read_key_file(path: Path) -> list[str]:
    """One key a line; blank lines and `#` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BuildError(f"cannot read --api-key-file {path}: {e.strerror}", "pass a readable file, one key a line") from None
    keys = [_checked(line.strip(), f"{path} line {i}") for i, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise BuildError(f"--api-key-file {path} holds no key", "write one key a line")
    return keys


class ApiKeys:
    """The configured keys, as digests."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys))

    @classmethod
    def gather(cls, keys: Iterable[str] = (), key_file: Path | None = None, environ=os.environ) -> "ApiKeys":
        """Every key from the options, the key file and the environment."""
        found = [_checked(k, "--api-key") for k in keys]
        if key_file is not None:
            found += read_key_file(key_file)
        if environ.get(ENV_KEY):
            found.append(_checked(environ[ENV_KEY], ENV_KEY))
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def admits(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys; the same work whichever key it is, if any."""
        if presented is None:
            return False
        digest = _digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)  # no early exit
        return matched


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to any interface


def check_exposure(host: str, keys: ApiKeys, no_auth: bool) -> None:
    """Refuse to open a non-loopback port to everyone unless that is said explicitly."""
    if not keys and not no_auth and not is_loopback(host):
        raise BuildError(f"--host {host} opens the server beyond this machine, and no API key is configured",
                         f"pass --api-key KEY (or --api-key-file, or {ENV_KEY}), or --no-auth to serve without keys")


@dataclass(frozen=True)
class AuthPolicy:
    keys: ApiKeys
    public_metrics: bool = False

    def is_open(self, path: str) -> bool:
        return path in PROBES or (self.public_metrics and path == METRICS)


UNAUTHORIZED = {
    "missing": HTTPProblem(401, "this server needs an API key", "send the header 'Authorization: Bearer KEY'"),
    "wrong": HTTPProblem(401, "the API key is not valid", "send one of the keys the server was started with"),
}


class AuthGate:
    """ASGI middleware: every path but the open ones needs a configured key. `answer(path,
    problem)` renders the refusal in the path's protocol shape (OpenAI or v2)."""

    def __init__(self, app, policy: AuthPolicy, answer):
        self.app, self.policy, self.answer = app, policy, answer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.policy.keys or self.policy.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        token = bearer(scope.get("headers") or [])
        if self.policy.keys.admits(token):
            return await self.app(scope, receive, send)
        response = self.answer(scope["path"], UNAUTHORIZED["missing" if token is None else "wrong"])
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
