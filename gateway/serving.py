"""The flow of one request across the services; gRPC and REST are thin adapters over `GatewayCore`.

The same steps as `nextgpt.pipeline.NextGPT.generate`, split across processes: check inputs, encode
every user-turn medium (one Encode call; the encoder's cache does the rest), stream the LLM and send
each complete signal span to its modality's decoder the moment the LLM streams it (while the reply goes
on), handing out text and media as they come.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.admission import Admission
from gateway.backends import Backends, CallInfo
from gateway.config import GatewaySettings
from nextgpt._proto import common_pb2, decoder_pb2, encoder_pb2, llm_pb2
from nextgpt.config import DecodeDefaults, GenerationOptions
from nextgpt.errors import CANCELLED, BackendError, ConfigError, DeadlineExceeded, InvalidInput, status_of
from nextgpt.events import Done, GenerationEvent, MediaFailed, MediaReady, TextDelta
from nextgpt.media.decode import check_media_item
from nextgpt.spans import SpanChooser
from nextgpt.types import MODALITIES, GenerateResult, MediaError, MediaItem, Message, Modality, check_messages
from services.common.convert import (
    MODALITY_TO_PROTO,
    PROTO_TO_MEDIA,
    ROLE_TO_PROTO,
    decode_options_to_proto,
    media_from_proto,
    sampling_options_to_proto,
)
from services.common.logs import new_request_id, request_id_var

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "nextgpt_gateway_requests_total", "Gateway requests, by API and outcome", ["api", "status"]
)
REQUEST_SECONDS = Histogram(
    "nextgpt_gateway_request_seconds",
    "Whole-request latency, by API",
    ["api"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STAGE_SECONDS = Histogram(
    "nextgpt_gateway_stage_seconds",
    "Seconds per stage of a request: encode, llm, decode",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MEDIA_ERRORS = Counter(
    "nextgpt_gateway_media_errors_total", "Requested media that could not be produced", ["modality"]
)
IN_FLIGHT = Gauge("nextgpt_gateway_in_flight", "Requests being served")
_counted: ContextVar[str | None] = ContextVar("counted_request", default=None)
"""Id of the last request counted in REQUESTS in this context: the edges count a request refused before
it reached `GatewayCore.generate` (a bad body, a missing key) exactly once."""


def count_request(api: str, status: str, request_id: str) -> None:
    REQUESTS.labels(api, status).inc()
    _counted.set(request_id)


def count_refusal(api: str, status: str, request_id: str) -> None:
    """Count a request that failed at an edge, unless `generate` already counted it."""
    if _counted.get() != request_id:
        count_request(api, status, request_id)


# --- events of one request, in the order they happen ----------------------------------------------


Event = GenerationEvent


def status_name(exc: BaseException) -> str:
    """Metric label of a failed request (the table in `nextgpt.errors`)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CANCELLED.label
    return status_of(exc).label


def check_media(messages: list[Message], max_bytes: int, names: list[list[str]] | None = None) -> None:
    """MIME type agrees with the modality and is one the encoder reads; size within the limit. Errors
    name each medium as `names[i][j]` (default `messages[i].media[j]`)."""
    for i, message in enumerate(messages):
        for j, item in enumerate(message.media):
            where = names[i][j] if names else f"messages[{i}].media[{j}]"
            check_media_item(item.modality, item.data, item.mime_type, max_bytes, where)


_ENCODER_INPUT = re.compile(r"^inputs\[(\d+)\](?:\.media)?")


def check_options(options: GenerationOptions) -> None:
    """Diffusion settings are checked here, before any work: a decoder rejecting them later could only
    give an error entry, while bad options are the client's error (400 / INVALID_ARGUMENT)."""
    for modality in MODALITIES:
        decode = options.decode_options(modality)
        try:
            decode.resolve(DecodeDefaults())
        except ConfigError as exc:
            raise InvalidInput(f"options.{modality}: {exc}") from None


class _Nothing:
    """No LLM message this turn (only decoders finished)."""


_NOTHING = _Nothing()


async def _next_or_none(
    stream: AsyncIterator[llm_pb2.LLMGenerateResponse],
) -> llm_pb2.LLMGenerateResponse | None:
    """The stream's next message; None at its end."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


class GatewayCore:
    """Runs requests through the backends; knows nothing of HTTP or the public proto."""

    def __init__(self, settings: GatewaySettings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self.draining = False
        self.admission = Admission(settings.max_in_flight, settings.max_waiting, settings.max_wait_s)

    async def generate(
        self,
        messages: list[Message],
        options: GenerationOptions,
        request_id: str | None = None,
        *,
        timeout_s: float | None = None,
        api: str = "python",
        media_names: list[list[str]] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Events of one request: text deltas, each medium or media error as it happens, then `Done`.

        `timeout_s` (e.g. the caller's gRPC deadline) shortens the configured request budget.
        `media_names[i][j]` is how the caller's API names message i's medium j in errors (default: the
        gRPC API's `messages[i].media[j]`; REST passes `messages[i].content[k]`)."""
        request_id = request_id or new_request_id()
        request_id_var.set(request_id)
        budget = (
            self.settings.request_timeout_s
            if timeout_s is None
            else min(timeout_s, self.settings.request_timeout_s)
        )
        started = time.perf_counter()
        status: str | None = None
        deadline = time.monotonic() + budget
        try:
            async with self.admission.slot():
                IN_FLIGHT.inc()
                try:
                    names = media_names or [
                        [f"messages[{i}].media[{j}]" for j in range(len(m.media))]
                        for i, m in enumerate(messages)
                    ]
                    async for event in self._run(messages, options, request_id, deadline, names):
                        if isinstance(event, Done):
                            status = "ok"  # the caller may close the iterator once it has the summary
                        yield event
                finally:
                    IN_FLIGHT.dec()
        except BaseException as exc:
            status = status or status_name(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            count_request(api, status or "cancelled", request_id)
            REQUEST_SECONDS.labels(api).observe(elapsed)
            logger.info("%s request %s in %.3fs", api, status or "cancelled", elapsed)

    async def _run(
        self,
        messages: list[Message],
        options: GenerationOptions,
        request_id: str,
        deadline: float,
        names: list[list[str]],
    ) -> AsyncGenerator[Event, None]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        # 1. check inputs
        check_messages(messages)
        check_media(messages, self.settings.max_media_bytes, names)
        check_options(options)
        # 2. encode every user-turn medium in one call
        t0 = time.perf_counter()
        embeddings = await self._encode(messages, self._call(request_id, deadline, "encode"), names)
        timings["encode"] = time.perf_counter() - t0
        # 3. stream the LLM; 4. decode each chosen span as soon as it arrives, concurrently
        t0 = time.perf_counter()
        request = llm_pb2.LLMGenerateRequest(
            turns=_turns(messages, embeddings),
            sampling=sampling_options_to_proto(options),
            outputs=[MODALITY_TO_PROTO[m] for m in options.requested_media],
            adapter=options.lora or "",
        )
        chooser = SpanChooser(options.max_media_per_modality)
        decoding: set[asyncio.Task[tuple[tuple[int, int], MediaItem | MediaError]]] = set()
        media: dict[tuple[int, int], MediaItem] = {}
        errors: list[MediaError] = []
        result: llm_pb2.LLMResult | None = None
        first_decode: float | None = None
        llm = self.backends.generate(request, self._call(request_id, deadline, "llm"))
        llm_open = True  # read to its end, so the call ends OK rather than cancelled after the result
        next_response: asyncio.Future[llm_pb2.LLMGenerateResponse | None] | None = None
        try:
            while llm_open or decoding:
                response: llm_pb2.LLMGenerateResponse | None | _Nothing = _NOTHING
                finished: set[asyncio.Future] = set()
                if llm_open and not decoding and next_response is None:  # only the LLM to wait for
                    response = await _next_or_none(llm)
                else:
                    if llm_open and next_response is None:
                        next_response = asyncio.ensure_future(_next_or_none(llm))
                    waiting: set[asyncio.Future[Any]] = {
                        *decoding,
                        *([next_response] if next_response else []),
                    }
                    finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if next_response in finished:
                        response, next_response = next_response.result(), None
                if response is None:  # the end of the LLM stream
                    llm_open = False
                    if result is None:
                        raise BackendError("the llm service ended its stream without a result")
                elif isinstance(response, _Nothing):
                    pass
                elif response.HasField("result"):
                    result = response.result
                    timings["llm"] = time.perf_counter() - t0
                    STAGE_SECONDS.labels("llm").observe(timings["llm"])
                elif response.HasField("span"):
                    modality = PROTO_TO_MEDIA.get(response.span.modality)
                    k = chooser.take(modality) if modality else None
                    if modality and k is not None:
                        first_decode = first_decode or time.perf_counter()
                        decoding.add(
                            asyncio.create_task(
                                self._decode(modality, k, response.span, options, request_id, deadline)
                            )
                        )
                elif response.text_delta:
                    yield TextDelta(response.text_delta)
                for task in decoding & finished:
                    decoding.discard(task)
                    key, outcome = task.result()
                    if isinstance(outcome, MediaError):
                        errors.append(outcome)
                        yield MediaFailed(outcome)
                    else:
                        media[key] = outcome
                        yield MediaReady(outcome)
        finally:  # the client left, or the LLM failed: stop every backend call of this request
            for task in decoding:
                task.cancel()
            if next_response is not None:
                next_response.cancel()
                await asyncio.gather(next_response, return_exceptions=True)
            await llm.aclose()
        assert result is not None
        # decode: from the first span sent to a decoder to the last medium back (it overlaps the llm stage)
        timings["decode"] = 0.0 if first_decode is None else time.perf_counter() - first_decode
        if first_decode is not None:
            STAGE_SECONDS.labels("decode").observe(timings["decode"])
        timings["total"] = time.perf_counter() - started
        # 5. the summary
        yield Done(
            GenerateResult(
                text=result.text,
                raw_text=result.raw_text,
                media=[media[key] for key in sorted(media)],
                errors=errors,
                warnings=list(result.warnings) + chooser.warnings(),
                finish_reason=result.finish_reason or "stop",
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                forced_modalities=[PROTO_TO_MEDIA[m] for m in result.forced_modalities],
                timings=timings,
                request_id=request_id,
            )
        )

    def _call(self, request_id: str, deadline: float, stage: str) -> CallInfo:
        """The remaining request budget (capped per stage) becomes the backend call's deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"the request deadline passed before the {stage} stage")
        cap = getattr(self.settings, f"{stage}_timeout_s")
        return CallInfo(request_id, remaining if cap is None else min(cap, remaining))

    async def _encode(
        self, messages: list[Message], call: CallInfo, names: list[list[str]]
    ) -> list[list[llm_pb2.MediaEmbedding]]:
        """Per message, the embeddings of its inputs (assistant turns' media are not re-encoded). The
        encoder's complaints about `inputs[k]` are told in the caller's names."""
        inputs = [
            (i, item)
            for i, message in enumerate(messages)
            if message.role == "user"
            for item in message.media
        ]
        where = [names[i][j] for i, m in enumerate(messages) if m.role == "user" for j in range(len(m.media))]
        out: list[list[llm_pb2.MediaEmbedding]] = [[] for _ in messages]
        if not inputs:
            return out
        t0 = time.perf_counter()
        try:
            response = await self._encode_call(inputs, call)
        except InvalidInput as exc:
            k_of = lambda m: int(m.group(1))  # noqa: E731
            message = _ENCODER_INPUT.sub(lambda m: where[k_of(m)] if k_of(m) < len(where) else m[0], str(exc))
            raise InvalidInput(message) from None
        STAGE_SECONDS.labels("encode").observe(time.perf_counter() - t0)
        if len(response.embeddings) != len(inputs):
            raise BackendError(
                f"the encoder returned {len(response.embeddings)} embeddings for {len(inputs)} inputs"
            )
        for (i, item), embedding in zip(inputs, response.embeddings, strict=True):
            out[i].append(
                llm_pb2.MediaEmbedding(
                    modality=MODALITY_TO_PROTO[item.modality], embedding=embedding.embedding
                )
            )
        return out

    async def _encode_call(
        self, inputs: list[tuple[int, MediaItem]], call: CallInfo
    ) -> encoder_pb2.EncodeResponse:
        return await self.backends.encode(
            encoder_pb2.EncodeRequest(
                inputs=[
                    encoder_pb2.EncodeInput(
                        media=common_pb2.Media(
                            modality=MODALITY_TO_PROTO[item.modality],
                            data=item.data,
                            mime_type=item.mime_type,
                        )
                    )
                    for _, item in inputs
                ]
            ),
            call,
        )

    async def _decode(
        self,
        modality: Modality,
        k: int,
        span: llm_pb2.SignalSpan,
        options: GenerationOptions,
        request_id: str,
        deadline: float,
    ) -> tuple[tuple[int, int], MediaItem | MediaError]:
        """One span -> one medium, keyed by its place in the summary (modality, index within it); any
        failure becomes an error entry, never a failed request."""
        key = (MODALITIES.index(modality), k)
        request = decoder_pb2.DecodeRequest(
            modality=MODALITY_TO_PROTO[modality],
            hidden=span.hidden,
            token_embeds=span.token_embeds,
            options=decode_options_to_proto(options.decode_options(modality)),
        )
        if options.seed is not None:
            request.seed = options.seed + k  # reproducible, yet distinct per span of one modality
        try:
            response = await self.backends.decode(
                modality, request, self._call(request_id, deadline, "decode")
            )
            item = media_from_proto(response.media, f"{modality} decoder response")
            if item.modality != modality:
                raise BackendError(f"the {modality} decoder returned {item.modality}")
            return key, item
        except Exception as exc:  # noqa: BLE001 - a failed medium degrades the answer, never fails it
            message = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                message = f"the {modality} decoder did not finish within the request deadline"
            logger.warning("%s decoding failed: %s", modality, message)
            MEDIA_ERRORS.labels(modality).inc()
            return key, MediaError(modality, message)

    async def adapters(self, request_id: str | None = None) -> list[str]:
        """LoRA adapter names the LLM service accepts; the first is its default."""
        call = CallInfo(request_id or new_request_id(), self.settings.health_timeout_s * 5)
        return await self.backends.list_adapters(call)

    async def readiness(self) -> tuple[bool, dict]:
        """Ready when every backend reports SERVING and the gateway is not draining."""
        dependencies = await self.backends.health()
        missing = [name for name, info in dependencies.items() if info["status"] != "SERVING"]
        ready = not missing and not self.draining
        return ready, {
            "ready": ready,
            "draining": self.draining,
            "missing": missing,
            "dependencies": dependencies,
        }


def _turns(messages: list[Message], embeddings: list[list[llm_pb2.MediaEmbedding]]) -> list[llm_pb2.Turn]:
    turns = []
    for message, embedded in zip(messages, embeddings, strict=True):
        turn = llm_pb2.Turn(role=ROLE_TO_PROTO[message.role], text=message.text)
        if message.role == "user":
            turn.media.extend(embedded)
        else:  # the media bytes are not re-encoded: the LLM restores their signal tokens
            turn.generated.extend(MODALITY_TO_PROTO[item.modality] for item in message.media)
        turns.append(turn)
    return turns
