"""The FastAPI app: routes, error mapping to OpenAI-style JSON, request ids and the body size limit
(`gateway.body_limit`)."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.body_limit import BodyLimit
from gateway.openai_serving import OpenAIServingChat, error_body, retry_after_header
from gateway.protocol import error_response
from gateway.routes import CHAT_PATH, STATIC_DIR, STREAM_MODELS, page, probes, v1
from gateway.serving import GatewayCore, count_refusal
from nextgpt.errors import NextGPTError
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var

logger = logging.getLogger(__name__)


REQUEST_ID = re.compile(r"[!-~]{1,128}")
"""A client's request id: 1..128 visible ASCII characters. It travels on as gRPC metadata (which refuses
control and non-ASCII characters) and into log lines (where a newline would forge a line)."""


def client_request_id(headers: Headers) -> str | None:
    """The client's `x-request-id` when it is a valid id (`REQUEST_ID`), else None: the gateway makes one."""
    value = headers.get(REQUEST_ID_HEADER)
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


class RequestContext:
    """ASGI middleware: the request id (the client's valid `x-request-id`, else a new one) on
    `request.state`, in the log context and on the response headers.

    Plain ASGI rather than `@app.middleware("http")`: that runs the rest of the app in a task of its
    own and passes every response message through a memory stream, SSE chunks included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(Headers(scope=scope)) or new_request_id()
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


NOT_JSON = "the request body is not valid JSON ({why}); send a JSON object (Content-Type: application/json)"


def _field(loc: tuple) -> str:
    """A pydantic error location as the client writes it, `messages[0].content[1].image_url.url`; union
    branch tags such as `list[...]` are left out."""
    path = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in part:
            path += f".{part}" if path else part
    return path


def _count(request: Request, status: str) -> None:
    """Every refused generation request shows in `nextgpt_gateway_requests_total`, 4xx included."""
    if request.url.path == CHAT_PATH:
        count_refusal("rest", status, request.state.request_id)


def _openapi(app: FastAPI) -> dict:
    """The schema at /openapi.json: FastAPI's, less the 422 it declares for every operation with a body
    (validation errors are 400, `routes.ERRORS`), plus the models of the SSE events (`routes.SSE`)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # caches itself in app.openapi_schema
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in STREAM_MODELS:
        model_schema = model.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, model_schema)
    return schema


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
    app.include_router(page)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")  # mounts stay out of the schema
    # FastAPI's documented way to customise the schema; mypy refuses assigning to a method on principle.
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

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
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # FastAPI's: loc is ("body", offset)
            why = f"{errors[0].get('ctx', {}).get('error')} at character {errors[0]['loc'][-1]}"
            return error_response(400, NOT_JSON.format(why=why), "invalid_request_error", "invalid_argument")
        problems = [f"{_field(err.get('loc', ())) or 'body'}: {err.get('msg')}" for err in errors]
        param = (_field(errors[0].get("loc", ())) or None) if errors else None
        return error_response(400, "; ".join(problems), "invalid_request_error", "invalid_argument", param)

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if exc.status_code == 413 else None
        detail = str(exc.detail)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "There was an error parsing the body" names no cause
            detail, code = NOT_JSON.format(why="it is not UTF-8 text"), "invalid_argument"
        _count(request, code or f"http_{exc.status_code}")
        return error_response(exc.status_code, detail, kind, code)

    return app
