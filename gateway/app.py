"""The FastAPI app: routes, error mapping to OpenAI-style JSON, request ids and the body size limit
(`gateway.body_limit`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.body_limit import BodyLimit
from gateway.openai_serving import OpenAIServingChat, error_body, retry_after_header
from gateway.protocol import error_response
from gateway.routes import CHAT_PATH, probes, v1
from gateway.serving import GatewayCore, count_refusal
from nextgpt.errors import NextGPTError
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var

logger = logging.getLogger(__name__)


class RequestContext:
    """ASGI middleware: the request id (the client's `x-request-id`, else a new one) on
    `request.state`, in the log context and on the response headers.

    Plain ASGI rather than `@app.middleware("http")`: that runs the rest of the app in a task of its
    own and passes every response message through a memory stream, SSE chunks included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get(REQUEST_ID_HEADER) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _count(request: Request, status: str) -> None:
    """Every refused generation request shows in `nextgpt_gateway_requests_total`, 4xx included."""
    if request.url.path == CHAT_PATH:
        count_refusal("rest", status, request.state.request_id)


def build_app(core: GatewayCore) -> FastAPI:
    app = FastAPI(
        title="NExT-GPT gateway",
        description="OpenAI-compatible any-to-any chat completions (text, image, video, audio in and out).",
        version="1",
    )
    app.state.core = core
    app.state.serving_chat = OpenAIServingChat(core)
    app.include_router(v1)
    app.include_router(probes)

    # Added last, so outermost: every response, BodyLimit's 413 included, carries the request id.
    app.add_middleware(BodyLimit, limit=lambda: core.settings.max_request_bytes)
    app.add_middleware(RequestContext)

    @app.exception_handler(NextGPTError)
    @app.exception_handler(TimeoutError)
    async def domainerror_response(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        _count(request, body.error.code or "internal")
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse(body.model_dump(), status_code=status, headers=retry_after_header(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count(request, "invalid_argument")
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{loc or 'body'}: {err.get('msg')}")
        first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return error_response(400, "; ".join(problems), "invalid_request_error", "invalid_argument", param)

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if exc.status_code == 413 else None
        _count(request, code or f"http_{exc.status_code}")
        return error_response(exc.status_code, str(exc.detail), kind, code)

    return app
