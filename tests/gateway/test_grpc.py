"""Public gRPC API (unary and streaming) and the Python client, against fake backends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from nextgpt.config import GenerationOptions
from nextgpt.errors import InvalidInput
from nextgpt.events import Done, TextDelta
from nextgpt.types import MediaError, MediaItem, Message
from nextgpt_serve.client import AsyncNextGPTClient, NextGPTClient
from tests.gateway.fakes import REPLY_WORDS, sample_mp4, sample_png, sample_wav

TEXT = "".join(REPLY_WORDS)
IMAGE, VIDEO, AUDIO = common_pb2.MODALITY_IMAGE, common_pb2.MODALITY_VIDEO, common_pb2.MODALITY_AUDIO


@pytest.fixture
def stub(cluster):
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        yield nextgpt_pb2_grpc.NextGPTStub(channel)


def request(text="hi", media=(), modalities=(), seed=None, **options) -> nextgpt_pb2.GenerateRequest:
    return nextgpt_pb2.GenerateRequest(
        messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=text, media=list(media))],
        options=common_pb2.GenerationOptions(modalities=list(modalities), seed=seed, **options),
    )


def png(data: bytes | None = None, mime="image/png") -> common_pb2.Media:
    return common_pb2.Media(modality=IMAGE, data=data or sample_png(), mime_type=mime)


def test_unary_text_to_text_and_image_to_text(stub, cluster):
    response = stub.Generate(request("hello"), timeout=10)
    assert response.text == TEXT and not response.media and response.usage.completion_tokens == 4
    response = stub.Generate(request("what is it?", [png()]), timeout=10)
    assert response.text == TEXT and len(cluster.encoder.calls) == 1
    assert response.timings.total_s >= response.timings.llm_s > 0


def test_unary_all_outputs(stub):
    response = stub.Generate(request("go", [png()], modalities=[IMAGE, VIDEO, AUDIO], seed=2), timeout=10)
    assert [m.modality for m in response.media] == [IMAGE, VIDEO, AUDIO]  # span order
    assert [m.data for m in response.media] == [sample_png(52), sample_mp4(52), sample_wav(0.02)]
    assert [m.mime_type for m in response.media] == ["image/png", "video/mp4", "audio/wav"]
    assert not response.errors and response.finish_reason == "stop"


def test_stream_order_media_as_decoded_then_summary(stub, cluster):
    cluster.decoders["image"].delay_s = 0.3  # the audio finishes first and is streamed first
    events = list(stub.GenerateStream(request("go", modalities=[IMAGE, AUDIO], seed=0), timeout=10))
    kinds = [e.WhichOneof("event") for e in events]
    assert sorted(kinds[:-1]) == ["media", "media"] + ["text_delta"] * 4 and kinds[-1] == "summary"
    assert "".join(e.text_delta for e in events if e.WhichOneof("event") == "text_delta") == TEXT
    assert [e.media.modality for e in events if e.WhichOneof("event") == "media"] == [AUDIO, IMAGE]
    summary = events[-1].summary
    assert summary.text == TEXT and not summary.media and summary.usage.prompt_tokens == 7


def test_first_medium_arrives_before_the_reply_ends(stub, cluster):
    """Span pipelining: the LLM streams its spans after the first word and holds the rest of the reply
    until the client has a medium, so the stream can only finish if media go out mid-reply."""
    held = asyncio.Event()
    cluster.run(_set(cluster.llm, "hold_until_media", held))
    kinds = []
    for event in stub.GenerateStream(request("go", modalities=[IMAGE, VIDEO, AUDIO], seed=0), timeout=10):
        kinds.append(event.WhichOneof("event"))
        if kinds[-1] == "media":
            cluster.loop.call_soon_threadsafe(held.set)
    first_media = kinds.index("media")
    assert kinds[:first_media] == ["text_delta"]  # "Here ", then media while the LLM still streams
    assert kinds.count("text_delta") == 4 and kinds.count("media") == 3 and kinds[-1] == "summary"
    assert max(i for i, k in enumerate(kinds) if k == "text_delta") > first_media


async def _set(obj, name, value) -> None:
    setattr(obj, name, value)


def test_invalid_argument_with_message(stub):
    cases = [
        (request("x", [png(b"\x89PNG\r\n\x1a\nbroken")]), "could not decode the image"),
        (request("x", [png(mime="audio/wav")]), "MIME type 'audio/wav' is audio"),
        (request("x", top_p=2.0), "top_p=2.0"),
        (request("x", lora="nope"), "unknown LoRA adapter 'nope'"),
        (request("x", image=common_pb2.DecodeOptions(steps=0)), "steps=0"),
        (nextgpt_pb2.GenerateRequest(), "messages is empty"),
    ]
    for req, expected in cases:
        for call in (stub.Generate, lambda r, **kw: list(stub.GenerateStream(r, **kw))):
            with pytest.raises(grpc.RpcError) as info:
                call(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in info.value.details()


def test_request_id_and_deadline_reach_every_backend(stub, cluster):
    metadata = (("x-request-id", "grpc-rid-7"),)
    response = stub.Generate(request("go", [png()], modalities=[IMAGE, VIDEO]), timeout=5, metadata=metadata)
    assert response.request_id == "grpc-rid-7"
    calls = [
        cluster.encoder.calls[0],
        cluster.llm.calls[0],
        *(d.calls[0] for d in list(cluster.decoders.values())[:2]),
    ]
    assert {c.request_id for c in calls} == {"grpc-rid-7"}
    assert all(c.time_remaining is not None and 0 < c.time_remaining <= 5.1 for c in calls)  # gRPC rounds


def test_client_deadline_becomes_deadline_exceeded(stub, cluster):
    cluster.llm.mode = "hang"
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request("go"), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cluster.llm.calls[0].time_remaining < 0.6  # the remaining budget, not the 10 s default


def test_health_and_reflection(cluster):
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {"nextgpt.v1.NextGPT", "grpc.health.v1.Health"} <= names


def test_python_client(cluster):
    photo = MediaItem("image", sample_png(), "image/png")
    options = GenerationOptions(seed=4, modalities=("text", "image", "audio"))
    with NextGPTClient(cluster.grpc_target, timeout_s=10) as client:
        reply = client.generate([Message("user", "remix", [photo])], options, request_id="cli-1")
        assert reply.text == TEXT and reply.request_id == "cli-1"
        assert [m.modality for m in reply.media] == ["image", "audio"] and reply.media[0].data == sample_png(
            54
        )
        history = [Message("user", "remix", [photo]), reply.as_message(), Message("user", "again")]
        events = list(client.stream(history, GenerationOptions(modalities=("text", "video"))))
        assert isinstance(events[0], TextDelta) and isinstance(events[-1], Done)
        assert sorted(type(e).__name__ for e in events[1:-1]) == ["MediaReady"] + ["TextDelta"] * 3
        assert [m.modality for m in events[-1].result.media] == ["video"]  # the summary carries them too
        assert list(cluster.llm.calls[-1].request.turns[1].generated) == [IMAGE, AUDIO]
        cluster.decoders["video"].mode = "fail"
        reply = client.generate([Message("user", "x")], GenerationOptions(modalities=("text", "video")))
        assert reply.media == [] and reply.errors == [MediaError("video", reply.errors[0].message)]
        with pytest.raises(InvalidInput, match="unknown LoRA"):
            client.generate([Message("user", "x")], GenerationOptions(lora="nope"))


def test_async_client(cluster):
    async def main():
        async with AsyncNextGPTClient(cluster.grpc_target, timeout_s=10) as client:
            reply = await client.generate([Message("user", "hi")])
            events = [e async for e in client.stream([Message("user", "hi")])]
            return reply, events

    reply, events = asyncio.run(main())
    assert reply.text == TEXT and isinstance(events[-1], Done) and events[-1].result.text == TEXT


def test_status_codes_of_backend_failures(stub, cluster):
    cluster.encoder.mode = "unavailable"
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request("look", [png()]), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "encoder service" in info.value.details()
    assert stub.Generate(request("no media"), timeout=10).text == TEXT
    cluster.llm.mode = "break"
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(request("x"), timeout=10))
    assert info.value.code() == grpc.StatusCode.INTERNAL and "llm service failed" in info.value.details()
