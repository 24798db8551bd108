"""The request body limit for bodies that come without a Content-Length (chunked uploads).

A declared Content-Length over the limit is refused before any byte is read (`gateway.app`); a chunked
body has no such header, so this ASGI middleware counts the bytes as the app reads them and stops the
read past the limit: a client cannot make the gateway buffer an unbounded body.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestTooLarge(HTTPException):
    """413, raised from inside the body read. FastAPI re-raises its own HTTPException from a body read
    (any other error becomes "error parsing the body"), so the app's error handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes (max_request_bytes)")


class CountedBody:
    """ASGI middleware: wraps `receive` so that reading past `limit()` bytes raises RequestTooLarge."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
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
