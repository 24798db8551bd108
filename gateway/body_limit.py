"""The REST request body limit (`max_request_bytes`), with or without a Content-Length.

A declared Content-Length over the limit is answered with 413 before any byte is read; a chunked body
has no such header, so its bytes are counted as the app reads them and the read stops past the limit: a
client cannot make the gateway buffer an unbounded body.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.protocol import error_response


class RequestTooLarge(HTTPException):
    """413, raised from inside the body read. FastAPI re-raises its own HTTPException from a body read
    (any other error becomes "error parsing the body"), so the app's error handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes (max_request_bytes)")


class BodyLimit:
    """ASGI middleware: refuses a declared Content-Length over `limit()`, and wraps `receive` so that
    reading past `limit()` bytes raises RequestTooLarge."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            message = f"the request body is {length} bytes, over the limit of {limit} (max_request_bytes)"
            refusal = error_response(413, message, "invalid_request_error", "request_too_large")
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, counted, send)
