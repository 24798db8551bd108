"""Fake backends for gateway tests: the real proto services on loopback gRPC (the shared server
plumbing, so errors map as in the real services), backed by small fakes that return deterministic data
of the right shapes and can be told to fail, hang or go away. `FakeCluster` runs them plus a real
`Gateway` on free ports in an event loop of its own thread, so tests use ordinary sync clients."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch

from gateway.config import GatewaySettings
from gateway.server import Gateway
from nextgpt._proto import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
)
from nextgpt.errors import InvalidInput, ModelNotReady
from nextgpt.media.decode import read_audio, read_image, read_video
from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.types import MODALITIES
from services.common import tensors
from services.common.convert import MODALITY_TO_PROTO, media_from_proto, sampling_options_from_proto
from services.common.logs import REQUEST_ID_HEADER
from services.common.server import ServiceServer, start_server

HIDDEN = 8
SPAN_TOKENS = {"image": 4, "video": 24, "audio": 8}
EMBED_DIM = 16
REPLY_WORDS = ["Here ", "is ", "a ", "fox."]


@cache
def sample_png(value: int = 120) -> bytes:
    return encode_png(np.full((8, 8, 3), value % 256, np.uint8))


@cache
def sample_wav(value: float = 0.1) -> bytes:
    return encode_wav(np.full(1600, value, np.float32))


@cache
def sample_mp4(value: int = 100) -> bytes:
    return encode_mp4(np.full((2, 16, 16, 3), value % 256, np.uint8), fps=8)


MEDIA = {
    "image": (sample_png, "image/png"),
    "video": (sample_mp4, "video/mp4"),
    "audio": (sample_wav, "audio/wav"),
}


@dataclass
class Call:
    """What a fake saw of one call."""

    request_id: str | None
    time_remaining: float | None
    request: Any
    started: float
    ended: float | None = None


@dataclass
class _Fake:
    mode: str = "ok"
    """ok | fail (INTERNAL) | invalid (INVALID_ARGUMENT) | unavailable | hang (until the deadline) |
    break (LLM only: fails after the text)."""
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, every call waits for it after being recorded (calls held in flight, deterministically)."""
    cancelled: int = 0
    """Calls cancelled while held at the gate."""

    async def _begin(self, request: Any, context) -> Call:
        metadata = dict(context.invocation_metadata() or ())
        call = Call(metadata.get(REQUEST_ID_HEADER), context.time_remaining(), request, time.monotonic())
        self.calls.append(call)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:  # the caller went away (cancel, deadline, disconnect)
                self.cancelled += 1
                raise
        if self.mode == "hang":
            await asyncio.sleep(3600)  # cancelled by the caller's deadline
        if self.mode == "fail":
            raise RuntimeError(f"{type(self).__name__} exploded")
        if self.mode == "invalid":
            raise InvalidInput(f"{type(self).__name__} rejects this request")
        if self.mode == "unavailable":
            raise ModelNotReady(f"{type(self).__name__} weights are not loaded")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # simulated work, not synchronisation
        return call

    def reset(self) -> None:
        self.mode, self.delay_s, self.calls, self.gate, self.cancelled = "ok", 0.0, [], None, 0


@dataclass
class FakeEncoder(_Fake, encoder_pb2_grpc.EncoderServiceServicer):
    """Validates media as the real encoder does (core readers); embeds by content hash."""

    async def Encode(self, request, context):  # noqa: N802
        call = await self._begin(request, context)
        embeddings = []
        for i, entry in enumerate(request.inputs):
            item = media_from_proto(entry.media, f"inputs[{i}]")
            {"image": read_image, "audio": read_audio, "video": read_video}[item.modality](item.data)
            digest = hashlib.sha256(item.data).digest()
            vector = torch.tensor(np.frombuffer(digest[:EMBED_DIM], np.uint8) / 255.0, dtype=torch.float32)
            embeddings.append(encoder_pb2.Embedding(embedding=tensors.to_proto(vector), sha256=digest.hex()))
        call.ended = time.monotonic()
        return encoder_pb2.EncodeResponse(
            embeddings=embeddings, model_id="fake-imagebind", preprocess_version="1"
        )

    async def GetCacheStatus(self, request, context):  # noqa: N802
        return encoder_pb2.CacheStatus(backend="lru", lru_entries=3)


@dataclass
class FakeLLM(_Fake, llm_pb2_grpc.LLMServiceServicer):
    """Streams a fixed reply with one span (of shape [N, 8]) per requested medium after its first word."""

    adapters: list[str] = field(default_factory=lambda: ["default", "sketch"])
    spans_per_modality: int = 1
    hold_until_media: asyncio.Event | None = None
    """When set: the spans go out after the first word, the rest of the reply only once this is set."""

    async def Generate(self, request, context):  # noqa: N802
        call = await self._begin(request, context)
        sampling_options_from_proto(request.sampling)  # what the real service checks
        if request.adapter and request.adapter not in self.adapters:
            raise InvalidInput(f"unknown LoRA adapter {request.adapter!r}; available: {self.adapters}")
        yield llm_pb2.LLMGenerateResponse(text_delta=REPLY_WORDS[0])
        if self.mode == "break":
            raise RuntimeError("the fake LLM lost its GPU mid-reply")
        n_spans = 0
        for modality in [m for m in MODALITIES if MODALITY_TO_PROTO[m] in request.outputs]:
            for k in range(self.spans_per_modality):
                n = SPAN_TOKENS[modality]
                hidden = torch.arange(n * HIDDEN, dtype=torch.float32).reshape(n, HIDDEN) + k
                span = llm_pb2.SignalSpan(
                    modality=MODALITY_TO_PROTO[modality],
                    start=n_spans * n,
                    hidden=tensors.to_proto(hidden),
                    token_embeds=tensors.to_proto(hidden * 0.5),
                )
                n_spans += 1
                yield llm_pb2.LLMGenerateResponse(span=span)
        if self.hold_until_media is not None:  # the rest of the reply waits until a medium was sent out
            await asyncio.wait_for(self.hold_until_media.wait(), 10)
        for word in REPLY_WORDS[1:]:
            yield llm_pb2.LLMGenerateResponse(text_delta=word)
        call.ended = time.monotonic()
        usage = common_pb2.Usage(prompt_tokens=7, completion_tokens=len(REPLY_WORDS))
        text = "".join(REPLY_WORDS)
        result = llm_pb2.LLMResult(
            text=text, raw_text=text, num_spans=n_spans, finish_reason="stop", usage=usage
        )
        yield llm_pb2.LLMGenerateResponse(result=result)

    async def ListAdapters(self, request, context):  # noqa: N802
        await self._begin(request, context)
        return llm_pb2.ListAdaptersResponse(adapters=self.adapters)


@dataclass
class FakeDecoder(_Fake, decoder_pb2_grpc.DecoderServiceServicer):
    """Returns a real PNG / MP4 / WAV whose content depends on the seed."""

    modality: str = "image"

    async def Decode(self, request, context):  # noqa: N802
        call = await self._begin(request, context)
        tensors.from_proto(request.hidden, "hidden")
        make, mime = MEDIA[self.modality]
        seed = request.seed if request.HasField("seed") else 0
        data = make(50 + seed) if self.modality != "audio" else make(0.01 * (seed % 50))
        call.ended = time.monotonic()
        media = common_pb2.Media(modality=MODALITY_TO_PROTO[self.modality], data=data, mime_type=mime)
        return decoder_pb2.DecodeResponse(media=media, batch_size=1)


class FakeCluster:
    """Five fake backends and a real gateway, all on free loopback ports, served by one event loop
    in a background thread."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides = {"grace_s": 1.0, "request_timeout_s": 10.0, **overrides}
        self.encoder = FakeEncoder()
        self.llm = FakeLLM()
        self.decoders = {m: FakeDecoder(modality=m) for m in ("image", "video", "audio")}
        self.servers: dict[str, ServiceServer] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateway: Gateway | None = None

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> FakeCluster:
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        adders = {
            "encoder": lambda s: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(self.encoder, s),
            "llm": lambda s: llm_pb2_grpc.add_LLMServiceServicer_to_server(self.llm, s),
        }
        for m, fake in self.decoders.items():
            adders[f"decoder.{m}"] = lambda s, f=fake: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(
                f, s
            )
        for name, add in adders.items():
            server = await start_server(0, lambda s, add=add: add(s) or [], host="127.0.0.1")
            await server.set_serving()
            self.servers[name] = server
        target = {name: f"127.0.0.1:{server.port}" for name, server in self.servers.items()}
        fields = {
            "host": "127.0.0.1",
            "http_port": 0,
            "grpc_port": 0,
            "encoder_target": target["encoder"],
            "llm_target": target["llm"],
            **{f"{m}_decoder_target": target[f"decoder.{m}"] for m in self.decoders},
        }
        settings = GatewaySettings(**{**fields, **self.overrides})
        self.gateway = Gateway(settings)
        await self.gateway.start()

    @property
    def settings(self) -> GatewaySettings:
        return self.gateway.settings

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    def fakes(self) -> list[_Fake]:
        return [self.encoder, self.llm, *self.decoders.values()]

    def reset(self) -> None:
        for fake in self.fakes():
            fake.reset()
        self.llm.spans_per_modality = 1
        self.llm.hold_until_media = None

    def kill(self, name: str) -> None:
        """The backend goes away: its server stops, its port refuses connections."""
        self.run(self.servers.pop(name).server.stop(0))

    def close(self) -> None:
        if self.gateway is not None:
            self.run(self.gateway.drain())
        for server in self.servers.values():
            self.run(server.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
