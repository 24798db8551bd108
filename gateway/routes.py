"""REST routes: short functions over `OpenAIServingChat` and `GatewayCore` (app.state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter

from gateway.auth import authorize, is_authorized
from gateway.openai_serving import OpenAIServingChat
from gateway.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from gateway.serving import GatewayCore
from nextgpt.errors import InvalidInput, NextGPTError
from services.common.logs import REQUEST_ID_HEADER


def _core(request: Request) -> GatewayCore:
    return request.app.state.core


async def require_api_key(request: Request) -> None:
    authorize(_core(request).settings.api_keys, request.headers.get("authorization"))


TIMEOUT_HEADER = "x-request-timeout"
"""REST clients' deadline, in seconds (gRPC clients set the call's deadline): it shortens the gateway's
request budget, and every backend call gets what is left of it."""

# The schema at /openapi.json declares every status, content type and header these routes answer with
# (tests/gateway/test_fuzz.py fuzzes the API against it). Validation errors are 400, never FastAPI's 422.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorResponse, **({"headers": RETRY_AFTER} if status in (429, 503) else {})}
    for status in (400, 401, 404, 413, 429, 502, 503, 504)
}
REQUEST_HEADERS = [
    {
        "name": REQUEST_ID_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
        "description": "The request id used in logs and sent back: 1..128 visible ASCII characters; "
        "the gateway makes one when it is absent or not such.",
    },
]
CHAT_HEADERS = [
    *REQUEST_HEADERS,
    {
        "name": TIMEOUT_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0},
        "description": "The client's deadline in seconds; it shortens the gateway's request budget.",
    },
]
STREAM_MODELS = (ChatCompletionChunk, ErrorResponse)
"""The models of the SSE events' data; `gateway.app` adds them to the schema's components."""
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "description": "A `chat.completion.chunk`; an `error` object if the stream fails after the "
            "status line was sent; last, the literal `[DONE]`.",
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in STREAM_MODELS]
                    },
                },
            ],
        }
    },
}
SSE = {"text/event-stream": {"schema": SSE_EVENT}}
_HELLO = {"role": "user", "content": "Draw a fox and tell me about it."}
CHAT_EXAMPLES = {
    "text": {"summary": "Text to text", "value": {"messages": [_HELLO]}},
    "any": {
        "summary": "Text to text, image and audio, with decoding options",
        "value": {
            "messages": [_HELLO],
            "modalities": ["text", "image", "audio"],
            "seed": 7,
            "nextgpt": {"image": {"steps": 20, "height": 256, "width": 256}, "audio": {"audio_seconds": 2.0}},
        },
    },
    "stream": {"summary": "Streamed (server-sent events)", "value": {"messages": [_HELLO], "stream": True}},
}
READINESS = {
    "type": "object",
    "required": ["ready", "draining", "missing"],
    "properties": {
        "ready": {"type": "boolean"},
        "draining": {"type": "boolean"},
        "missing": {"type": "array", "items": {"type": "string"}, "description": "Backends not SERVING."},
        "dependencies": {
            "type": "object",
            "additionalProperties": {"type": "object"},
            "description": "Each backend's address and health (with API keys set: for callers with a key).",
        },
    },
}
T = TypeVar("T")
CHAT_PATH = "/v1/chat/completions"
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)
probes = APIRouter()
page = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
"""The chat page's files (`GET /`, mounted at /static by `gateway.app`); no build step."""
RESPONSE_JSON = TypeAdapter(ChatCompletionResponse)


def request_timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also NaN
        raise InvalidInput(f"header {TIMEOUT_HEADER}={value!r} must be a positive number of seconds")
    return seconds


async def _until_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body was read already: only the
    disconnect can come now)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancelled_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """`await work` in this task (its context, hence its request id and metrics), cancelled when the
    client disconnects first; None then."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_until_disconnected(request))
    watcher.add_done_callback(lambda w: None if w.cancelled() else task.cancel())
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            task.uncancel()
            return None
        raise
    finally:
        watcher.cancel()


@v1.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    response_model_exclude_none=True,
    responses={200: {"content": SSE, "description": "JSON, or with `stream: true` server-sent events."}},
    openapi_extra={
        "parameters": CHAT_HEADERS,
        "requestBody": {"content": {"application/json": {"examples": CHAT_EXAMPLES}}},
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    serving: OpenAIServingChat = request.app.state.serving_chat
    work = serving.create(body, request.state.request_id, timeout_s=request_timeout(request))
    if body.stream:  # a disconnect ends the SSE response, which closes the request's events
        result = await work
    else:  # nothing is sent until the end: watch the connection, so a client that gives up stops it
        finished = await _cancelled_on_disconnect(request, work)
        if finished is None:
            return Response(status_code=499)  # nobody reads it: the client is gone
        result = finished
    if isinstance(result, ChatCompletionResponse):
        # pydantic writes the JSON bytes in one pass; JSONResponse(model_dump()) would build a dict,
        # then json.dumps would re-scan and copy the megabytes of base64 media twice (str, bytes)
        return Response(RESPONSE_JSON.dump_json(result, exclude_none=True), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@v1.get("/models", response_model=ModelList, openapi_extra={"parameters": REQUEST_HEADERS})
async def list_models(request: Request) -> ModelList:
    core = _core(request)
    served = core.settings.model_name
    now = int(time.time())
    try:
        adapters = await core.adapters(request.state.request_id)
    except (NextGPTError, TimeoutError):  # the served model is listed even while the LLM is away
        adapters = []
    cards = [ModelCard(id=served, created=now, root=served)]
    cards += [
        ModelCard(id=name, created=now, root=served, parent=served) for name in adapters if name != served
    ]
    return ModelList(data=cards)


@probes.get("/healthz")
async def healthz() -> dict:
    """Alive: the process answers (no backend is asked)."""
    return {"status": "ok"}


@probes.get(
    "/readyz",
    responses={
        status: {"description": text, "content": {"application/json": {"schema": READINESS}}}
        for status, text in ((200, "Ready."), (503, "Not ready: `missing` names what is missing."))
    },
)
async def readyz(request: Request) -> JSONResponse:
    """200 only when every backend reports SERVING; the body names what is missing. With API keys set,
    a caller without a key gets the verdict only (no backend addresses, no Redis URL)."""
    core = _core(request)
    ready, details = await core.readiness()
    if not is_authorized(core.settings.api_keys, request.headers.get("authorization")):
        details = {"ready": ready, "draining": details["draining"], "missing": details["missing"]}
    return JSONResponse(details, status_code=200 if ready else 503)


@probes.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text."}, 401: {"model": ErrorResponse}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text; with API keys set it needs a key too (Prometheus: `authorization: {credentials:
    KEY}` in the scrape config), since it names every backend and counts every client's traffic."""
    authorize(_core(request).settings.api_keys, request.headers.get("authorization"))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@page.get("/")
async def chat_page() -> FileResponse:
    """The chat page: a plain client of /v1/chat/completions (streamed), kept out of the API's schema."""
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})
