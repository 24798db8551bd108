"""OpenAI chat completions over `GatewayCore`: request -> core types, events -> response or SSE chunks."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from gateway.protocol import (
    AudioPart,
    AudioURLPart,
    ChatCompletionAudio,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ImagePart,
    MediaErrorInfo,
    NextGPTInfo,
    NextGPTOptions,
    ResponseMessage,
    UsageInfo,
    VideoPart,
)
from gateway.serving import Done, Event, GatewayCore, MediaFailed, MediaReady, TextDelta
from nextgpt.config import DecodeOptions, GenerationOptions
from nextgpt.errors import (
    BackendError,
    ConfigError,
    InvalidInput,
    ModelNotFound,
    client_message,
    status_of,
)
from nextgpt.media.decode import accepted_mime_types, sniff_modality
from nextgpt.modalities import OUTPUTS
from nextgpt.types import GenerateResult, MediaItem, Message, Modality, Role

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg"}
PART_MODALITY: dict[str, Modality] = {out.openai_part: m for m, out in OUTPUTS.items()} | {
    "input_audio": "audio"
}
AUDIO_TTL_S = 3600


def error_body(exc: BaseException) -> tuple[int, ErrorResponse]:
    """A domain error -> (HTTP status, OpenAI-style error object), from the table in `nextgpt.errors`."""
    status = status_of(exc)
    info = ErrorInfo(message=client_message(exc), type=status.http_type, code=status.label)
    return status.http_status, ErrorResponse(error=info)


def retry_after_header(exc: BaseException) -> dict[str, str]:
    """`Retry-After` (whole seconds, at least 1) for an error the client may retry, else no header."""
    retry_after_s = getattr(exc, "retry_after_s", None)
    return {} if retry_after_s is None else {"retry-after": str(max(1, math.ceil(retry_after_s)))}


def decode_base64(text: str, where: str, max_bytes: int, start: int = 0) -> bytes:
    """The base64 `text[start:]` -> bytes. A medium is megabytes of text, so nothing is sliced: the text
    is copied once, to the ASCII bytes binascii reads, and decoded from `start` in place."""
    size = (len(text) - start) * 3 // 4
    if size > max_bytes + 3:
        raise InvalidInput(
            f"{where}: the medium is about {size} bytes, over the gateway's limit of "
            f"{max_bytes} bytes (max_media_bytes); send a smaller file"
        )
    if not text.isascii():  # O(1): str knows whether it is ASCII
        raise InvalidInput(f"{where}: the data is not valid base64 (it holds non-ASCII characters)")
    try:
        return binascii.a2b_base64(memoryview(text.encode("ascii"))[start:], strict_mode=True)
    except binascii.Error as exc:
        raise InvalidInput(f"{where}: the data is not valid base64 ({exc})") from None


def parse_data_url(url: str, where: str, max_bytes: int) -> tuple[str, bytes]:
    """`data:<mime>;base64,<data>` -> (mime, bytes); remote URLs are refused, never fetched."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else url[:16]
        raise InvalidInput(
            f"{where}: {scheme!r} URLs are not supported: the gateway does not fetch remote media; "
            "send the file inline as a data URL (data:image/png;base64,...)"
        )
    comma = url.find(",")
    params = url[len("data:") : max(comma, 0)].split(";")
    if comma < 0 or "base64" not in params[1:]:
        raise InvalidInput(f"{where}: a data URL must be base64-encoded: data:<mime type>;base64,<data>")
    return params[0].strip().lower(), decode_base64(url, where, max_bytes, start=comma + 1)


def _medium(part: ImagePart | VideoPart | AudioURLPart | AudioPart, where: str, max_bytes: int) -> MediaItem:
    modality = PART_MODALITY[part.type]
    if part.type == "input_audio":
        mime = AUDIO_FORMATS.get(part.input_audio.format.lower())
        if mime is None:
            raise InvalidInput(
                f"{where}.format={part.input_audio.format!r}: use one of {sorted(AUDIO_FORMATS)}"
            )
        data = decode_base64(part.input_audio.data, f"{where}.data", max_bytes)
    else:
        mime, data = parse_data_url(getattr(part, part.type).url, f"{where}.{part.type}.url", max_bytes)
        try:
            sniffed = sniff_modality(mime)
        except InvalidInput:
            raise InvalidInput(
                f"{where}: unsupported media type {mime!r}; accepted: {', '.join(accepted_mime_types())}"
            ) from None
        if sniffed != modality:
            raise InvalidInput(f"{where}: a {part.type} part holds {modality}, but its data URL is {mime!r}")
    if not data:
        raise InvalidInput(f"{where}: the {modality} is empty")
    return MediaItem(modality=modality, data=data, mime_type=mime)


def message_from_openai(message: ChatMessage, i: int, max_bytes: int) -> Message:
    if message.role in ("system", "developer"):
        raise InvalidInput(
            f"messages[{i}].role={message.role!r} is not supported: NExT-GPT uses its fixed system prompt; "
            "send user and assistant turns"
        )
    texts: list[str] = []
    media: list[MediaItem] = []
    if isinstance(message.content, str):
        texts.append(message.content)
    for j, part in enumerate(message.content if isinstance(message.content, list) else []):
        if part.type == "text":
            texts.append(part.text)
        else:
            media.append(_medium(part, f"messages[{i}].content[{j}]", max_bytes))
    if message.audio is not None and message.role == "assistant":
        if not message.audio.data:
            raise InvalidInput(
                f"messages[{i}].audio: the gateway keeps no state, so an audio id cannot be looked up; "
                "send back message.audio with its data"
            )
        data = decode_base64(message.audio.data, f"messages[{i}].audio.data", max_bytes)
        media.append(MediaItem("audio", data, AUDIO_FORMATS.get(message.audio.format or "wav", "audio/wav")))
    # Any other role is refused by the core's `check_messages`, with a message that names it.
    return Message(role=cast(Role, message.role), text="\n".join(texts), media=media)


def media_names(message: ChatMessage, i: int) -> list[str]:
    """How this API names each medium `message_from_openai` takes from the message, in its order."""
    parts = message.content if isinstance(message.content, list) else []
    names = [f"messages[{i}].content[{j}]" for j, part in enumerate(parts) if part.type != "text"]
    if message.audio is not None and message.role == "assistant":
        names.append(f"messages[{i}].audio")
    return names


def options_from_openai(request: ChatCompletionRequest) -> GenerationOptions:
    extra = request.nextgpt or NextGPTOptions()
    if request.n not in (None, 1):
        raise InvalidInput(f"n={request.n}: only n=1 is supported")
    kwargs: dict = {
        "image": DecodeOptions(**extra.image.model_dump()),
        "video": DecodeOptions(**extra.video.model_dump()),
        "audio": DecodeOptions(**extra.audio.model_dump()),
    }
    max_tokens = request.max_completion_tokens or request.max_tokens
    for name, value in (
        ("max_new_tokens", max_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("seed", request.seed),
        ("max_media_per_modality", extra.max_media_per_modality),
    ):
        if value is not None:
            kwargs[name] = value
    if request.modalities is not None:
        kwargs["modalities"] = tuple(request.modalities)
    try:
        return GenerationOptions(**kwargs)
    except ConfigError as exc:
        raise InvalidInput(f"options: {exc}") from None


def _data_url(item: MediaItem) -> str:
    return f"data:{item.mime_type};base64,{base64.b64encode(item.data).decode()}"


def _part(item: MediaItem) -> dict:
    kind = OUTPUTS[item.modality].openai_part
    return {"type": kind, kind: {"url": _data_url(item)}}


def _audio(item: MediaItem, audio_id: str, created: int, transcript: str = "") -> dict:
    return {
        "id": audio_id,
        "data": base64.b64encode(item.data).decode(),
        "format": "wav",
        "expires_at": created + AUDIO_TTL_S,
        "transcript": transcript,
    }


def _info(done: Done, *, errors: bool = True) -> NextGPTInfo:
    r = done.result
    return NextGPTInfo(
        errors=[MediaErrorInfo(modality=e.modality, message=e.message) for e in r.errors] if errors else [],
        warnings=r.warnings,
        timings=r.timings,
        forced_modalities=list(r.forced_modalities),
        request_id=done.result.request_id,
    )


def _usage(r: GenerateResult) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        total_tokens=r.prompt_tokens + r.completion_tokens,
    )


class OpenAIServingChat:
    """`POST /v1/chat/completions` logic; routes stay short."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def resolve_lora(self, request: ChatCompletionRequest, request_id: str) -> str | None:
        """`model` may be the served name or an adapter name (vLLM's LoRA convention)."""
        lora = request.nextgpt.lora if request.nextgpt else None
        served = self.core.settings.model_name
        if not request.model or request.model == served:
            return lora
        adapters = await self.core.adapters(request_id)
        if request.model not in adapters:
            raise ModelNotFound(
                f"the model {request.model!r} does not exist; use {served!r} or an adapter: {adapters}"
            )
        if lora and lora != request.model:
            raise InvalidInput(f"model={request.model!r} and nextgpt.lora={lora!r} name different adapters")
        return request.model

    async def create(
        self, request: ChatCompletionRequest, request_id: str, *, timeout_s: float | None = None
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        """The whole response, or (stream) an SSE iterator whose first event is already computed, so
        that errors before any output still become proper HTTP errors."""
        max_bytes = self.core.settings.max_media_bytes
        messages = [message_from_openai(m, i, max_bytes) for i, m in enumerate(request.messages)]
        options = dataclasses.replace(
            options_from_openai(request), lora=await self.resolve_lora(request, request_id)
        )
        model = request.model or self.core.settings.model_name
        created = int(time.time())
        api = "rest_stream" if request.stream else "rest"
        names = [media_names(m, i) for i, m in enumerate(request.messages)]
        events = self.core.generate(
            messages, options, request_id, timeout_s=timeout_s, api=api, media_names=names
        )
        if request.stream:
            try:
                first = await events.__anext__()
            except BaseException:
                await events.aclose()
                raise
            return self._sse(first, events, model, created, request_id)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Done):
                    return self._response(event, model, created)
        raise BackendError("the request ended without a summary")

    def _response(self, done: Done, model: str, created: int) -> ChatCompletionResponse:
        r = done.result
        parts = [_part(m) for m in r.media if m.modality != "audio"]
        audios = [m for m in r.media if m.modality == "audio"]
        audio = None
        if audios:  # OpenAI has one message.audio; further audio come as audio_url parts
            audio = ChatCompletionAudio(**_audio(audios[0], f"audio-{r.request_id}-0", created, r.text))
            parts += [_part(m) for m in audios[1:]]
        content: str | list[dict] = (
            ([{"type": "text", "text": r.text}] if r.text else []) + parts if parts else r.text
        )
        return ChatCompletionResponse(
            id=f"chatcmpl-{done.result.request_id}",
            created=created,
            model=model,
            choices=[
                Choice(message=ResponseMessage(content=content, audio=audio), finish_reason=r.finish_reason)
            ],
            usage=_usage(r),
            nextgpt=_info(done),
        )

    async def _sse(
        self, first: Event, events: AsyncGenerator[Event, None], model: str, created: int, request_id: str
    ) -> AsyncGenerator[str, None]:
        def chunk(delta: DeltaMessage, finish: str | None = None, **extra: Any) -> str:
            body = ChatCompletionChunk(
                id=f"chatcmpl-{request_id}",
                created=created,
                model=model,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                **extra,
            )
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        async def all_events() -> AsyncIterator[Event]:
            yield first
            async for event in events:
                yield event

        yield chunk(DeltaMessage(role="assistant", content=""))
        n_audio = 0
        try:
            async for event in all_events():
                if isinstance(event, TextDelta):
                    yield chunk(DeltaMessage(content=event.text))
                elif isinstance(event, MediaReady) and event.item.modality == "audio":
                    yield chunk(
                        DeltaMessage(audio=_audio(event.item, f"audio-{request_id}-{n_audio}", created))
                    )
                    n_audio += 1
                elif isinstance(event, MediaReady):
                    yield chunk(DeltaMessage(content=[_part(event.item)]))
                elif isinstance(event, MediaFailed):
                    error = {"modality": event.error.modality, "message": event.error.message}
                    yield chunk(DeltaMessage(), nextgpt={"error": error})
                elif isinstance(event, Done):
                    info = _info(event, errors=True).model_dump()
                    yield chunk(
                        DeltaMessage(), event.result.finish_reason, usage=_usage(event.result), nextgpt=info
                    )
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band, as vLLM does
            _, body = error_body(exc)
            logger.warning("stream failed: %s", exc)
            yield f"data: {json.dumps(body.model_dump())}\n\n"
        finally:
            await events.aclose()
        yield "data: [DONE]\n\n"
