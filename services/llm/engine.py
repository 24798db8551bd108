"""The engine interface of the LLM service, its request/event types and the metrics every engine shares.

An engine turns a conversation (text turns + projected-to-be ImageBind embeddings) into a reply. It is
async and streaming so that one interface fits both the HF engine (a worker thread batching requests
itself) and the vLLM engine (continuous batching in its own process pair):

    async for event in engine.generate(request):   # TextDelta / SignalSpan ..., then one LLMOutput
        ...

A `SignalSpan` event is a complete span, sent as soon as its hidden states are final, so that the
gateway can start its decoder while the reply goes on; the final `LLMOutput` lists the same spans.

Cancellation is the consumer's business: when it stops iterating (client gone, deadline passed) it closes
the async generator (`aclose()`, or task cancellation), and the engine stops decoding promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from prometheus_client import Counter, Gauge, Histogram

from nextgpt.config import SamplingOptions
from nextgpt.errors import ModelNotReady
from nextgpt.events import TextDelta
from nextgpt.llm.prompt import build_prompt
from nextgpt.llm.signal_tokens import SignalLayout
from nextgpt.types import LLMOutput, MediaItem, Message, Modality, SignalSpan

REQUESTS_IN_FLIGHT = Gauge(
    "nextgpt_llm_requests_in_flight", "Generate calls being served (queued or running)"
)
QUEUE_DEPTH = Gauge("nextgpt_llm_queue_depth", "Requests waiting for the engine")
GENERATED_TOKENS = Counter(
    "nextgpt_llm_generated_tokens_total", "Tokens decoded, counted as they are produced (cancelled too)"
)
PROMPT_TOKENS = Counter("nextgpt_llm_prompt_tokens_total", "Prompt tokens (text + media) prefilled")
TIME_TO_FIRST_TOKEN = Histogram(
    "nextgpt_llm_time_to_first_token_seconds",
    "From the request's arrival to its first streamed event",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STAGE_SECONDS = Histogram(
    "nextgpt_llm_stage_seconds",
    "Seconds per engine stage: queue (waiting), prompt (projection + embedding), decode",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
BATCH_SIZE = Histogram(
    "nextgpt_llm_batch_size",
    "Sequences decoded together in one step (HF engine; vLLM schedules its own batches)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
FORCED_SPANS = Counter(
    "nextgpt_llm_forced_spans_total",
    "Requested signal spans the model did not emit and had to be forced",
    ["modality"],
)


@dataclass
class EngineRequest:
    """One generation request, already validated at the edge."""

    messages: list[Message]
    """The conversation, text only (`media` is ignored); the last turn is the user's."""
    media_embeds: list[list[torch.Tensor]]
    """Per message, the ImageBind embeddings (E,) float32 of its input media, in order (user turns)."""
    options: SamplingOptions
    outputs: tuple[Modality, ...] = ()
    """Media the reply must contain: a span the model does not emit is forced."""
    adapter: str | None = None
    """LoRA adapter name; None means the default (the delta checkpoint's LoRA)."""
    request_id: str = ""
    generated: list[list[Modality]] = field(default_factory=list)
    """Per message, the media an assistant turn generated (missing entries: none); see `prompt_messages`."""


EngineEvent = TextDelta | SignalSpan | LLMOutput


class QueueFull(ModelNotReady):
    """Too many requests are waiting; UNAVAILABLE, so that clients retry (or another replica takes it)."""


@runtime_checkable
class Engine(Protocol):
    """What the servicer needs from an engine."""

    @property
    def embed_dim(self) -> int:
        """E: width of the ImageBind embeddings the input projector takes."""
        ...

    def adapters(self) -> list[str]:
        """Adapter names accepted in `EngineRequest.adapter`; the first is the default."""
        ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        """Text deltas and complete spans while decoding, then the final `LLMOutput`. Raises
        `InvalidInput` (before the first event) for an unknown adapter or a prompt that does not fit,
        `QueueFull` when overloaded."""
        ...

    async def close(self) -> None:
        """Stop work and free the model; called once, after the server drained."""
        ...


def signal_text(layout: SignalLayout, modality: Modality) -> str:
    """A modality's span as raw text, e.g. "[IMG0][IMG1][IMG2][IMG3]" (legacy layout)."""
    return "".join(layout.tokens[modality])


def prompt_messages(request: EngineRequest, layout: SignalLayout) -> list[Message]:
    """The messages `build_prompt` takes, from a request of text turns and embeddings.

    - User turns get one placeholder `MediaItem` per embedding (the prompt builder counts them; the bytes
      were never sent: the encoder service already turned them into the embedding).
    - Assistant turns that generated media but whose text lacks the signal tokens (a client that kept
      only the visible text) get each missing span appended as raw text, e.g. " [IMG0][IMG1][IMG2][IMG3]",
      so the model sees what it produced in earlier turns, as the in-process pipeline's `raw_text` does.
    """
    out = []
    for i, message in enumerate(request.messages):
        if message.role == "user":
            embeds = request.media_embeds[i] if i < len(request.media_embeds) else []
            media = [MediaItem("image", b"", "") for _ in embeds]  # modality does not change the prompt
            out.append(Message("user", message.text, media))
            continue
        text = message.text
        generated = request.generated[i] if i < len(request.generated) else []
        for modality in dict.fromkeys(generated):
            span = signal_text(layout, modality)
            missing = generated.count(modality) - text.count(span)
            if missing > 0:
                text = " ".join([text.rstrip(), *[span] * missing]).strip()
        out.append(Message("assistant", text))
    return out


@torch.inference_mode()
def prompt_segments(
    request: EngineRequest, input_projector: torch.nn.Module, layout: SignalLayout, prompt_format: str
) -> list[str | torch.Tensor]:
    """`build_prompt` segments of a request: the input projector on each media embedding (as
    `NextGPT.embed_media` does after the encoder), spliced into the conversation's text."""
    param = next(input_projector.parameters())
    blocks = [
        [input_projector(e.to(param.device, param.dtype)[None])[0] for e in embeds]  # (n_tok, H)
        for embeds in request.media_embeds
    ]
    blocks += [[] for _ in range(len(request.messages) - len(blocks))]
    return build_prompt(prompt_messages(request, layout), blocks, prompt_format)


async def paced(events: AsyncIterator[EngineEvent], interval_s: float) -> AsyncIterator[EngineEvent]:
    """Text deltas at most once per `interval_s` (the ones in between joined into one); spans and the
    result pass at once, after the text held before them.

    Each delta is a gRPC message, an SSE chunk and a client parse: at ~2 ms a token, one message per token
    was most of the service's cost per request. The first delta is never held (time to first token is
    unchanged) and neither is the end of the reply. `interval_s` 0 sends every delta as it comes.
    """
    if interval_s <= 0:
        async for event in events:
            yield event
        return
    loop = asyncio.get_running_loop()
    source = aiter(events)
    held: list[str] = []
    last_sent = -interval_s
    pending: asyncio.Future[EngineEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            if held:
                await asyncio.wait((pending,), timeout=max(0.0, last_sent + interval_s - loop.time()))
                if not pending.done():  # the interval is over: send what was held
                    yield TextDelta("".join(held))
                    held, last_sent = [], loop.time()
                    continue
            try:
                event = await pending
            except StopAsyncIteration:
                break
            pending = None
            if isinstance(event, TextDelta):
                held.append(event.text)
                if len(held) == 1 and loop.time() - last_sent >= interval_s:
                    yield TextDelta(event.text)
                    held, last_sent = [], loop.time()
                continue
            if held:
                yield TextDelta("".join(held))
                held, last_sent = [], loop.time()
            yield event
        if held:
            yield TextDelta("".join(held))
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
