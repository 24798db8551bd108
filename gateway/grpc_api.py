"""The public gRPC API `nextgpt.v1.NextGPT`: proto -> core types -> `GatewayCore` -> proto.

Errors are domain exceptions mapped to status codes by the shared `ErrorInterceptor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import grpc

from gateway.auth import authorize
from gateway.serving import (
    Done,
    Event,
    GatewayCore,
    MediaFailed,
    MediaReady,
    TextDelta,
    count_refusal,
    status_name,
)
from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from nextgpt.errors import NextGPTError
from nextgpt.types import GenerateResult, Message
from services.common.convert import (
    MODALITY_TO_PROTO,
    generation_options_from_proto,
    media_from_proto,
    media_to_proto,
    role_from_proto,
)
from services.common.logs import request_id_var

SERVICE_NAME = nextgpt_pb2.DESCRIPTOR.services_by_name["NextGPT"].full_name


def messages_from_proto(request: nextgpt_pb2.GenerateRequest) -> list[Message]:
    return [
        Message(
            role=role_from_proto(m.role, f"messages[{i}].role"),
            text=m.text,
            media=[media_from_proto(x, f"messages[{i}].media[{j}]") for j, x in enumerate(m.media)],
        )
        for i, m in enumerate(request.messages)
    ]


def summary_to_proto(done: Done, with_media: bool = True) -> nextgpt_pb2.GenerateResponse:
    r: GenerateResult = done.result
    return nextgpt_pb2.GenerateResponse(
        text=r.text,
        media=[media_to_proto(m) for m in r.media] if with_media else [],
        errors=[
            nextgpt_pb2.MediaError(modality=MODALITY_TO_PROTO[e.modality], message=e.message)
            for e in r.errors
        ],
        warnings=r.warnings,
        finish_reason=r.finish_reason,
        usage=common_pb2.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens),
        timings=nextgpt_pb2.Timings(
            encode_s=r.timings.get("encode", 0.0),
            llm_s=r.timings.get("llm", 0.0),
            decode_s=r.timings.get("decode", 0.0),
            total_s=r.timings.get("total", 0.0),
        ),
        forced_modalities=[MODALITY_TO_PROTO[m] for m in r.forced_modalities],
        request_id=done.result.request_id,
    )


def event_to_proto(event: Event) -> nextgpt_pb2.GenerateStreamResponse:
    if isinstance(event, TextDelta):
        return nextgpt_pb2.GenerateStreamResponse(text_delta=event.text)
    if isinstance(event, MediaReady):
        return nextgpt_pb2.GenerateStreamResponse(media=media_to_proto(event.item))
    if isinstance(event, MediaFailed):
        error = nextgpt_pb2.MediaError(
            modality=MODALITY_TO_PROTO[event.error.modality], message=event.error.message
        )
        return nextgpt_pb2.GenerateStreamResponse(error=error)
    return nextgpt_pb2.GenerateStreamResponse(summary=summary_to_proto(event, with_media=False))


class NextGPTServicer(nextgpt_pb2_grpc.NextGPTServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def _events(
        self, request: nextgpt_pb2.GenerateRequest, context: grpc.aio.ServicerContext, api: str
    ) -> AsyncGenerator[Event, None]:
        """The request's events; a refusal before any work (key, malformed request) is counted too."""
        try:
            await _authorize(self.core, context)
            messages = messages_from_proto(request)
            options = generation_options_from_proto(request.options)
        except NextGPTError as exc:
            count_refusal(api, status_name(exc), request_id_var.get())
            raise
        events = self.core.generate(
            messages,
            options,
            request_id_var.get(),
            timeout_s=context.time_remaining(),
            api=api,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: nextgpt_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> nextgpt_pb2.GenerateResponse:
        async with contextlib.aclosing(self._events(request, context, "grpc")) as events:
            async for event in events:
                if isinstance(event, Done):
                    return summary_to_proto(event)
        raise RuntimeError("the request ended without a summary")

    async def GenerateStream(  # noqa: N802
        self, request: nextgpt_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[nextgpt_pb2.GenerateStreamResponse, None]:
        async for event in self._events(request, context, "grpc_stream"):
            yield event_to_proto(event)


async def _authorize(core: GatewayCore, context: grpc.aio.ServicerContext) -> None:
    """With api_keys set, require `authorization: Bearer KEY` metadata (as REST requires the header)."""
    metadata = dict(context.invocation_metadata() or ())
    key = metadata.get("authorization")  # str: only `-bin` keys carry bytes
    authorize(core.settings.api_keys, key if isinstance(key, str) else None)
