"""Request ids and the access log.

Every response carries `X-Request-Id`: the client's own, when it sent a usable one (at most
128 printable ASCII characters without spaces), else a new one. When a response ends, one
line goes to the `edgeseq.access` logger: the id, method, path, status, tokens in and out,
and the duration. Never the prompt, the text, or any header (an API key included). Routes
report their token counts by `note_usage(request, prompt, completion)`; a streamed
response reports them when its stream ends, which is before this line is written.
"""

import logging
import time
import uuid

LOG = logging.getLogger("edgeseq.access")
HEADER = b"x-request-id"
MAX_ID_CHARS = 128
USAGE = "edgeseq_usage"


def usable_id(value: bytes | None) -> str | None:
    if value is None or not 0 < len(value) <= MAX_ID_CHARS:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() and " " not in text else None


def note_usage(request, prompt_tokens: int, completion_tokens: int) -> None:
    """What a route tells the access log about a request (a Starlette Request)."""
    request.scope.setdefault("state", {})[USAGE] = (prompt_tokens, completion_tokens)


class RequestLog:
    """ASGI middleware outermost in the stack, so a refused request is logged and tagged too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = dict(scope.get("headers") or []).get(HEADER)
        ident = usable_id(given) or uuid.uuid4().hex
        scope.setdefault("state", {})
        status = 500  # unless a response starts

        async def tagged_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, ident.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        finally:
            prompt, completion = scope["state"].get(USAGE, (0, 0))
            LOG.info("request_id=%s method=%s path=%s status=%d prompt_tokens=%d completion_tokens=%d duration_ms=%.1f",
                     ident, scope.get("method", "-"), scope.get("path", "-"), status, prompt, completion,
                     1000 * (time.perf_counter() - started))
