"""REST routes: short functions over `OpenAIServingChat` and `GatewayCore` (app.state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter

from gateway.auth import authorize, is_authorized
from gateway.openai_serving import OpenAIServingChat
from gateway.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from gateway.serving import GatewayCore
from nextgpt.errors import InvalidInput, NextGPTError


def _core(request: Request) -> GatewayCore:
    return request.app.state.core


async def require_api_key(request: Request) -> None:
    authorize(_core(request).settings.api_keys, request.headers.get("authorization"))


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 502, 503, 504)}
T = TypeVar("T")
CHAT_PATH = "/v1/chat/completions"
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)
probes = APIRouter()
RESPONSE_JSON = TypeAdapter(ChatCompletionResponse)


TIMEOUT_HEADER = "x-request-timeout"
"""REST clients' deadline, in seconds (gRPC clients set the call's deadline): it shortens the gateway's
request budget, and every backend call gets what is left of it."""


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


@v1.post("/chat/completions", response_model=ChatCompletionResponse, response_model_exclude_none=True)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    serving: OpenAIServingChat = request.app.state.serving_chat
    work = serving.create(body, request.state.request_id, timeout_s=request_timeout(request))
    if body.stream:  # a disconnect ends the SSE response, which closes the request's events
        result = await work
    else:  # nothing is sent until the end: watch the connection, so a client that gives up stops it
        result = await _cancelled_on_disconnect(request, work)
        if result is None:
            return Response(status_code=499)  # nobody reads it: the client is gone
    if isinstance(result, ChatCompletionResponse):
        # pydantic writes the JSON bytes in one pass; JSONResponse(model_dump()) would build a dict,
        # then json.dumps would re-scan and copy the megabytes of base64 media twice (str, bytes)
        return Response(RESPONSE_JSON.dump_json(result, exclude_none=True), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@v1.get("/models", response_model=ModelList)
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


@probes.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 only when every backend reports SERVING; the body names what is missing. With API keys set,
    a caller without a key gets the verdict only (no backend addresses, no Redis URL)."""
    core = _core(request)
    ready, details = await core.readiness()
    if not is_authorized(core.settings.api_keys, request.headers.get("authorization")):
        details = {"ready": ready, "draining": details["draining"], "missing": details["missing"]}
    return JSONResponse(details, status_code=200 if ready else 503)


@probes.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
