"""A small Python client of the gateway's gRPC API (`nextgpt.v1.NextGPT`), sync and async.

    from nextgpt_serve.client import NextGPTClient
    from nextgpt.config import GenerationOptions
    from nextgpt.types import MediaItem, Message

    with NextGPTClient("127.0.0.1:50051") as client:
        reply = client.generate(
            [Message("user", "Show me a red fox.")], GenerationOptions(seed=0, modalities=("text", "image"))
        )
        open("fox.png", "wb").write(reply.media[0].data)
        for event in client.stream([Message("user", "Describe a fox.")]):
            print(event)  # TextDelta ..., MediaReady / MediaFailed as decoded, then Done

Backend status codes come back as the core's exceptions: `InvalidInput` (INVALID_ARGUMENT),
`ModelNotReady` (UNAVAILABLE), `TimeoutError` (DEADLINE_EXCEEDED), else `NextGPTError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from nextgpt.config import GenerationOptions
from nextgpt.errors import from_grpc_code, pushback_seconds
from nextgpt.events import Done, GenerationEvent, MediaFailed, MediaReady, TextDelta
from nextgpt.types import GenerateResult, MediaError, MediaItem, Message
from services.common.convert import (
    PROTO_TO_MEDIA,
    ROLE_TO_PROTO,
    generation_options_to_proto,
    media_from_proto,
    media_to_proto,
)
from services.common.logs import REQUEST_ID_HEADER
from services.common.server import CHANNEL_OPTIONS

StreamEvent = GenerationEvent
"""What `stream` yields: `TextDelta`..., `MediaReady` / `MediaFailed` as each medium is decoded, then `Done`
(the events of `nextgpt.events`, as the gateway and the pipeline use them)."""


def build_request(messages: list[Message], options: GenerationOptions | None) -> nextgpt_pb2.GenerateRequest:
    return nextgpt_pb2.GenerateRequest(
        messages=[
            nextgpt_pb2.Message(
                role=ROLE_TO_PROTO.get(m.role, common_pb2.ROLE_UNSPECIFIED),
                text=m.text,
                media=[media_to_proto(x) for x in m.media],
            )
            for m in messages
        ],
        options=generation_options_to_proto(options or GenerationOptions()),
    )


def result_from_proto(
    r: nextgpt_pb2.GenerateResponse, media: list[MediaItem] | None = None
) -> GenerateResult:
    """The gateway's summary as the core's result (the API carries the visible text only: `raw_text` is
    that text; the gateway restores signal tokens from an assistant turn's media)."""
    return GenerateResult(
        text=r.text,
        raw_text=r.text,
        media=media if media is not None else [media_from_proto(m) for m in r.media],
        errors=[_error(e) for e in r.errors],
        warnings=list(r.warnings),
        finish_reason=r.finish_reason,
        prompt_tokens=r.usage.prompt_tokens,
        completion_tokens=r.usage.completion_tokens,
        timings={
            "encode": r.timings.encode_s,
            "llm": r.timings.llm_s,
            "decode": r.timings.decode_s,
            "total": r.timings.total_s,
        },
        forced_modalities=[PROTO_TO_MEDIA[m] for m in r.forced_modalities],
        request_id=r.request_id,
    )


def _error(e: nextgpt_pb2.MediaError) -> MediaError:
    return MediaError(PROTO_TO_MEDIA.get(e.modality, "image"), e.message)


def _domain_error(exc: grpc.RpcError) -> Exception:
    """The gateway's status -> the same domain error the gateway raised (`nextgpt.errors`' table)."""
    code, details = exc.code(), exc.details()
    # typeshed's _Metadatum is a plain class; at runtime it is a (key, value) namedtuple.
    retry_after_s = pushback_seconds(exc.trailing_metadata())  # type: ignore[arg-type]
    return from_grpc_code(code.name, details or "", retry_after_s)


class _Events:
    """Stream messages -> client events; the final reply gets the media streamed before it."""

    def __init__(self) -> None:
        self.media: list[MediaItem] = []

    def convert(self, message: nextgpt_pb2.GenerateStreamResponse) -> StreamEvent:
        kind = message.WhichOneof("event")
        if kind == "text_delta":
            return TextDelta(message.text_delta)
        if kind == "media":
            self.media.append(media_from_proto(message.media))
            return MediaReady(self.media[-1])
        if kind == "error":
            return MediaFailed(_error(message.error))
        return Done(result_from_proto(message.summary, media=list(self.media)))


class NextGPTClient:
    """Blocking client. `timeout_s` is the default deadline of each call (None: the gateway's)."""

    def __init__(
        self, target: str = "127.0.0.1:50051", *, timeout_s: float | None = None, api_key: str | None = None
    ):
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = nextgpt_pb2_grpc.NextGPTStub(self._channel)
        self.timeout_s = timeout_s
        self.api_key = api_key

    def _metadata(self, request_id: str | None) -> list[tuple[str, str]]:
        return _metadata(self.api_key, request_id)

    def generate(
        self,
        messages: list[Message],
        options: GenerationOptions | None = None,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerateResult:
        request = build_request(messages, options)
        try:
            response = self._stub.Generate(
                request, timeout=timeout_s or self.timeout_s, metadata=self._metadata(request_id)
            )
        except grpc.RpcError as exc:
            raise _domain_error(exc) from exc
        return result_from_proto(response)

    def stream(
        self,
        messages: list[Message],
        options: GenerationOptions | None = None,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[StreamEvent]:
        """TextDelta..., then MediaReady / MediaFailed as each medium is decoded, then Done."""
        request = build_request(messages, options)
        events = _Events()
        call = self._stub.GenerateStream(
            request, timeout=timeout_s or self.timeout_s, metadata=self._metadata(request_id)
        )
        try:
            for message in call:
                yield events.convert(message)
        except grpc.RpcError as exc:
            raise _domain_error(exc) from exc
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NextGPTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncNextGPTClient:
    """The same API for asyncio code (`await client.generate(...)`, `async for e in client.stream(...)`)."""

    def __init__(
        self, target: str = "127.0.0.1:50051", *, timeout_s: float | None = None, api_key: str | None = None
    ):
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = nextgpt_pb2_grpc.NextGPTStub(self._channel)
        self.timeout_s = timeout_s
        self.api_key = api_key

    async def generate(
        self,
        messages: list[Message],
        options: GenerationOptions | None = None,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerateResult:
        request = build_request(messages, options)
        try:
            response = await self._stub.Generate(
                request, timeout=timeout_s or self.timeout_s, metadata=_metadata(self.api_key, request_id)
            )
        except grpc.RpcError as exc:
            raise _domain_error(exc) from exc
        return result_from_proto(response)

    async def stream(
        self,
        messages: list[Message],
        options: GenerationOptions | None = None,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        request = build_request(messages, options)
        events = _Events()
        call = self._stub.GenerateStream(
            request, timeout=timeout_s or self.timeout_s, metadata=_metadata(self.api_key, request_id)
        )
        try:
            async for message in call:
                yield events.convert(message)
        except grpc.RpcError as exc:
            raise _domain_error(exc) from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncNextGPTClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _metadata(api_key: str | None, request_id: str | None) -> list[tuple[str, str]]:
    metadata = []
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id))
    return metadata
