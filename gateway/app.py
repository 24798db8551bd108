"""The FastAPI app: routes, error mapping to OpenAI-style JSON, request ids and the body size limit
(`gateway.body_limit`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway.body_limit import BodyLimit
from gateway.openai_serving import OpenAIServingChat, error_body
from gateway.protocol import error_response
from gateway.routes import Unauthorized, probes, v1
from gateway.serving import GatewayCore
from nextgpt.errors import NextGPTError
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var

logger = logging.getLogger(__name__)


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

    # Added first, so it sits inside request_context: the route reads the counted body directly (through
    # the http middleware's receive wrapper the 413 would surface as a 400 "error parsing the body").
    app.add_middleware(BodyLimit, limit=lambda: core.settings.max_request_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        request.state.request_id = request_id
        request_id_var.set(request_id)
        response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.exception_handler(NextGPTError)
    @app.exception_handler(TimeoutError)
    async def domainerror_response(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse(body.model_dump(), status_code=status)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(401, str(exc), "authentication_error", "invalid_api_key")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
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
        return error_response(exc.status_code, str(exc.detail), kind, code)

    return app
