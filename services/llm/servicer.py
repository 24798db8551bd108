"""gRPC adapter of the LLM service: proto -> `EngineRequest` -> engine -> proto. No tensors math here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import torch

from nextgpt._proto import common_pb2, llm_pb2, llm_pb2_grpc
from nextgpt.errors import InvalidInput, ModelNotReady
from nextgpt.events import TextDelta
from nextgpt.types import MODALITIES, LLMOutput, Message, Modality, SignalSpan
from services.common import tensors
from services.common.convert import (
    MODALITY_TO_PROTO,
    media_modality_from_proto,
    role_from_proto,
    sampling_options_from_proto,
)
from services.common.logs import request_id_var
from services.llm.engine import (
    FORCED_SPANS,
    REQUESTS_IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    Engine,
    EngineEvent,
    EngineRequest,
    paced,
)


class LLMServicer(llm_pb2_grpc.LLMServiceServicer):
    """`engine` is None while the model loads (calls get UNAVAILABLE); the server sets it once loaded.
    `stream_interval_s`: text deltas go out at most this often (see `paced`)."""

    def __init__(self, engine: Engine | None = None, stream_interval_s: float = 0.0) -> None:
        self.engine = engine
        self.stream_interval_s = stream_interval_s

    def _ready(self) -> Engine:
        if self.engine is None:
            raise ModelNotReady("the LLM is still loading; retry when the health check says SERVING")
        return self.engine

    async def Generate(
        self, request: llm_pb2.LLMGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.LLMGenerateResponse]:
        engine = self._ready()
        started = time.perf_counter()
        engine_request = request_from_proto(request, engine.embed_dim, request_id_var.get())
        with REQUESTS_IN_FLIGHT.track_inprogress():
            events = paced(engine.generate(engine_request), self.stream_interval_s)
            async for event in _observed(events, started):
                yield event_to_proto(event)

    async def ListAdapters(
        self, request: llm_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb2.ListAdaptersResponse:
        return llm_pb2.ListAdaptersResponse(adapters=self._ready().adapters())


async def _observed(events: AsyncIterator[EngineEvent], started: float) -> AsyncIterator[EngineEvent]:
    """Pass events through, recording time to the first one and the forced spans of the result."""
    first = True
    async for event in events:
        if first:
            TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - started)
            first = False
        if isinstance(event, LLMOutput):
            for modality in event.forced_modalities:
                FORCED_SPANS.labels(modality).inc()
        yield event


# ---------------------------------------------------------------------- conversion
def request_from_proto(
    request: llm_pb2.LLMGenerateRequest, embed_dim: int, request_id: str = ""
) -> EngineRequest:
    """Validate and convert; every problem is InvalidInput naming the field and the fix."""
    if not request.turns:
        raise InvalidInput("turns is empty: send at least one user turn")
    turns = [turn_from_proto(turn, embed_dim, f"turns[{i}]") for i, turn in enumerate(request.turns)]
    if turns[-1][0].role != "user":
        raise InvalidInput(
            f"the last turn must be the user's (the request to answer), got {turns[-1][0].role}; "
            "drop the trailing assistant turn"
        )
    return EngineRequest(
        messages=[message for message, _, _ in turns],
        media_embeds=[embeds for _, embeds, _ in turns],
        options=sampling_options_from_proto(request.sampling),
        outputs=tuple(m for m in MODALITIES if MODALITY_TO_PROTO[m] in request.outputs),
        adapter=request.adapter or None,
        request_id=request_id,
        generated=[generated for _, _, generated in turns],
    )


def turn_from_proto(
    turn: llm_pb2.Turn, embed_dim: int, what: str
) -> tuple[Message, list[torch.Tensor], list[Modality]]:
    """(text-only message, input embeddings (E,) of a user turn, media an assistant turn generated)."""
    role = role_from_proto(turn.role, f"{what}.role")
    if role == "assistant":  # its `media` are ignored, as the proto says
        generated = [media_modality_from_proto(g, f"{what}.generated") for g in turn.generated]
        return Message("assistant", turn.text), [], generated
    embeds = [embedding_from_proto(m, embed_dim, f"{what}.media[{j}]") for j, m in enumerate(turn.media)]
    if not turn.text.strip() and not embeds:
        raise InvalidInput(f"{what} (user) has neither text nor media")
    return Message("user", turn.text), embeds, []


def embedding_from_proto(message: llm_pb2.MediaEmbedding, embed_dim: int, what: str) -> torch.Tensor:
    media_modality_from_proto(message.modality, f"{what}.modality")
    embedding = tensors.from_proto(message.embedding, f"{what}.embedding")
    if tuple(embedding.shape) != (embed_dim,):
        raise InvalidInput(
            f"{what}.embedding has shape {list(embedding.shape)} but the input projector expects "
            f"[{embed_dim}]: send the encoder service's embedding of the same model profile"
        )
    return embedding.float()


def event_to_proto(event: EngineEvent) -> llm_pb2.LLMGenerateResponse:
    if isinstance(event, TextDelta):
        return llm_pb2.LLMGenerateResponse(text_delta=event.text)
    if isinstance(event, SignalSpan):
        return llm_pb2.LLMGenerateResponse(span=span_to_proto(event))
    return llm_pb2.LLMGenerateResponse(result=result_to_proto(event))


def span_to_proto(span: SignalSpan) -> llm_pb2.SignalSpan:
    return llm_pb2.SignalSpan(
        modality=MODALITY_TO_PROTO[span.modality],
        start=span.start,
        # (N, H) each, in the LLM's own dtype: an fp16 LLM sends half the bytes of an upcast
        hidden=tensors.to_proto(span.hidden),
        token_embeds=tensors.to_proto(span.token_embeds),
    )


def result_to_proto(out: LLMOutput) -> llm_pb2.LLMResult:
    """The summary; its spans already went out as `span` events."""
    return llm_pb2.LLMResult(
        text=out.text,
        raw_text=out.raw_text,
        num_spans=len(out.spans),
        finish_reason=out.finish_reason,
        usage=common_pb2.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=len(out.token_ids)),
        forced_modalities=[MODALITY_TO_PROTO[m] for m in out.forced_modalities],
        warnings=out.warnings,
    )
