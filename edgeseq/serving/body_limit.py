"""ASGI middleware: bodies over the limit get 413 before the application reads them.

Checks Content-Length first, and counts the bytes of a chunked body as they arrive.
"""

import json

from .http_errors import HTTPProblem, error_body

FIX = "send a smaller request, or start the server with a larger --max-body-bytes"


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send, int(length))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, seen)

    async def _reject(self, send, size: int) -> None:
        problem = HTTPProblem(413, f"the request body ({size} bytes or more) is over the limit of {self.max_bytes} bytes", FIX)
        body = json.dumps(error_body(problem)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
