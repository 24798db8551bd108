"""gRPC adapter of the encoder core: proto -> core inputs -> `EncoderCore.encode` -> proto.

Errors are raised, never returned: the shared interceptor maps InvalidInput to INVALID_ARGUMENT,
ModelNotReady to UNAVAILABLE and TimeoutError to DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from nextgpt._proto import encoder_pb2, encoder_pb2_grpc
from nextgpt.errors import InvalidInput
from services.common.convert import media_from_proto
from services.common.tensors import to_proto
from services.encoder.core import EncodeInput, EncoderCore

SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
T = TypeVar("T")


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, core: EncoderCore) -> None:
        self.core = core

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        inputs = inputs_from_proto(request)
        results = await within_deadline(context, self.core.encode(inputs))
        return encoder_pb2.EncodeResponse(
            embeddings=[
                encoder_pb2.Embedding(embedding=to_proto(r.embedding), cache_hit=r.cache_hit, sha256=r.sha256)
                for r in results
            ],
            model_id=self.core.model_id,
            preprocess_version=self.core.preprocess_version,
        )

    async def GetCacheStatus(
        self, request: encoder_pb2.CacheStatusRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.CacheStatus:
        state = self.core.cache.state()
        return encoder_pb2.CacheStatus(
            backend=state["backend"],
            redis_connected=bool(state["connected"]),
            redis_url=state["url"],
            lru_entries=int(state["entries"]),
        )


def inputs_from_proto(request: encoder_pb2.EncodeRequest) -> list[EncodeInput]:
    inputs: list[EncodeInput] = []
    for i, message in enumerate(request.inputs):
        kind = message.WhichOneof("input")
        if kind == "text":
            inputs.append(message.text)
        elif kind == "media":
            inputs.append(media_from_proto(message.media, f"inputs[{i}].media"))
        else:
            raise InvalidInput(f"inputs[{i}] is empty: set `media` (bytes + MIME type) or `text`")
    return inputs


async def within_deadline(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Run `work` within the caller's deadline; refuse to start once it has passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        if asyncio.iscoroutine(work):
            work.close()
        raise TimeoutError("the request's deadline passed before encoding started")
    try:
        async with asyncio.timeout(remaining):
            return await work
    except TimeoutError:
        if remaining is None:
            raise
        raise TimeoutError(
            f"encoding did not finish within the request's deadline ({remaining:.3f} s)"
        ) from None
