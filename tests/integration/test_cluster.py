"""The whole cluster as real processes on loopback: Redis, encoder, LLM, three decoders, gateway.

One cluster serves the module (starting it costs ~15 s on 2 cores). Tests that break something
(stopping Redis, killing a decoder) come last and say so in their names.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re

import av
import grpc
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from nextgpt.config import GenerationOptions
from nextgpt.errors import InvalidInput
from nextgpt.events import Done, MediaFailed, MediaReady, TextDelta
from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.types import MediaItem, Message
from nextgpt_serve.client import NextGPTClient
from tests.integration.clusters import local_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tiny_models_dir, tmp_path_factory):
    with local_cluster(
        tiny_models_dir,
        tmp_path_factory,
        engine="hf",  # the HF engine's cluster tests; test_cluster_vllm.py runs them on vLLM
    ) as running:
        yield running


@pytest.fixture(scope="module")
def rest(cluster):
    with httpx.Client(base_url=cluster.rest_url, timeout=120) as client:
        yield client


# ---------------------------------------------------------------------------------------- media
def png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels))


def wav(freq: float = 440.0) -> bytes:
    t = np.arange(16000) / 16000
    return encode_wav(np.sin(2 * np.pi * freq * t).astype("float32"), 16000)


def mp4() -> bytes:
    return encode_mp4(np.stack([np.full((32, 32, 3), 25 * i, dtype=np.uint8) for i in range(8)]), fps=8)


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url("image/png", data)}}


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def video_part(data: bytes) -> dict:
    return {"type": "video_url", "video_url": {"url": data_url("video/mp4", data)}}


def check_png(data: bytes) -> None:
    Image.open(io.BytesIO(data)).verify()


def check_mp4(data: bytes) -> None:
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) > 0


def check_wav(data: bytes) -> None:
    waveform, rate = sf.read(io.BytesIO(data))
    assert rate == 16000 and len(waveform) > 0


CHECKS = {"image": check_png, "video": check_mp4, "audio": check_wav}


def rest_media(message: dict) -> dict[str, list[bytes]]:
    """Generated media of an OpenAI-style assistant message, by modality."""
    found: dict[str, list[bytes]] = {}
    parts = message["content"] if isinstance(message["content"], list) else []
    for part in parts:
        kind = {"image_url": "image", "video_url": "video", "audio_url": "audio"}.get(part["type"])
        if kind:
            url = part[part["type"]]["url"]
            found.setdefault(kind, []).append(base64.b64decode(url.split(",", 1)[1]))
    if message.get("audio"):
        found.setdefault("audio", []).insert(0, base64.b64decode(message["audio"]["data"]))
    return found


def chat(rest: httpx.Client, content, modalities=("text",), seed=0, **extra) -> httpx.Response:
    body = {
        "model": "nextgpt-tiny",
        "messages": [{"role": "user", "content": content}],
        "modalities": list(modalities),
        "seed": seed,
        "max_tokens": 40,
        **extra,
    }
    return rest.post("/v1/chat/completions", json=body)


ANY_TO_ANY = {
    "image+text->text": (lambda: [{"type": "text", "text": "What is this?"}, image_part(png())], ()),
    "text->image": (lambda: "Show me a picture of a cat.", ("image",)),
    "text->video": (lambda: "Make a video of waves.", ("video",)),
    "text->audio": (lambda: "Play the sound of rain.", ("audio",)),
    "audio->video": (lambda: [{"type": "text", "text": "A video for this."}, audio_part(wav())], ("video",)),
    "image+audio+video->all": (
        lambda: [
            {"type": "text", "text": "All of it."},
            image_part(png(1)),
            audio_part(wav()),
            video_part(mp4()),
        ],
        ("image", "video", "audio"),
    ),
}


# ------------------------------------------------------------------------------------ any-to-any
@pytest.mark.parametrize("case", list(ANY_TO_ANY))
def test_any_to_any_over_rest(rest, case):
    content, wanted = ANY_TO_ANY[case]
    response = chat(rest, content(), ("text", *wanted))
    assert response.status_code == 200, response.text
    body = response.json()
    media = rest_media(body["choices"][0]["message"])
    assert sorted(media) == sorted(wanted), body["nextgpt"]
    for modality, items in media.items():
        for data in items:
            CHECKS[modality](data)
    assert body["nextgpt"]["errors"] == [] and body["usage"]["completion_tokens"] > 0


def _grpc_messages(case: str) -> tuple[list[Message], tuple[str, ...]]:
    content, wanted = ANY_TO_ANY[case]
    parts = content()
    if isinstance(parts, str):
        return [Message("user", parts)], wanted
    text = " ".join(p["text"] for p in parts if p["type"] == "text")
    media = []
    for p in parts:
        if p["type"] == "image_url":
            media.append(
                MediaItem("image", base64.b64decode(p["image_url"]["url"].split(",")[1]), "image/png")
            )
        elif p["type"] == "video_url":
            media.append(
                MediaItem("video", base64.b64decode(p["video_url"]["url"].split(",")[1]), "video/mp4")
            )
        elif p["type"] == "input_audio":
            media.append(MediaItem("audio", base64.b64decode(p["input_audio"]["data"]), "audio/wav"))
    return [Message("user", text, media)], wanted


@pytest.mark.parametrize("case", list(ANY_TO_ANY))
def test_any_to_any_over_grpc_unary_and_stream(cluster, case):
    messages, wanted = _grpc_messages(case)
    options = GenerationOptions(seed=0, max_new_tokens=40, modalities=("text", *wanted))
    with NextGPTClient(cluster.grpc_target, timeout_s=120) as client:
        reply = client.generate(messages, options)
        events = list(client.stream(messages, options))
    assert sorted(m.modality for m in reply.media) == sorted(wanted) and not reply.errors
    for item in reply.media:
        CHECKS[item.modality](item.data)
    assert isinstance(events[-1], Done)
    streamed_text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed_text.strip() == reply.text.strip()
    streamed_media = [e.item for e in events if isinstance(e, MediaReady)]
    assert sorted(m.modality for m in streamed_media) == sorted(wanted)
    assert not [e for e in events if isinstance(e, MediaFailed)]
    # The same seed gives the same answer whichever API carried it.
    assert {m.modality: m.data for m in streamed_media} == {m.modality: m.data for m in reply.media}


def test_openai_sdk_plain_and_stream(cluster):
    client = openai.OpenAI(base_url=f"{cluster.rest_url}/v1", api_key="unused", timeout=120)
    content = [{"type": "text", "text": "Draw this."}, image_part(png(3))]
    resp = client.chat.completions.create(
        model="nextgpt-tiny",
        messages=[{"role": "user", "content": content}],
        modalities=["text", "image", "audio"],
        seed=0,
        max_tokens=40,
    )
    message = resp.choices[0].message
    images = [p for p in message.content if p["type"] == "image_url"]
    assert len(images) == 1 and message.audio is not None
    check_png(base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1]))
    check_wav(base64.b64decode(message.audio.data))
    assert resp.model_extra["nextgpt"]["errors"] == []

    text, parts, audio = "", [], []
    stream = client.chat.completions.create(
        model="nextgpt-tiny",
        messages=[{"role": "user", "content": "A fox, please."}],
        modalities=["text", "image", "audio"],
        seed=0,
        max_tokens=40,
        stream=True,
    )
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if isinstance(delta.content, str):
            text += delta.content
        elif isinstance(delta.content, list):
            parts += delta.content
        if getattr(delta, "audio", None):
            audio.append(delta.audio)
    assert [p["type"] for p in parts] == ["image_url"] and len(audio) == 1
    assert text.strip()


# ------------------------------------------------------------------------------------- caching
def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url, timeout=10).text
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def _encoder_metrics(cluster) -> str:
    return f"http://127.0.0.1:{cluster.ports.encoder_metrics}/metrics"


def test_same_request_twice_hits_the_redis_cache_with_identical_output(cluster, rest):
    content = [{"type": "text", "text": "Paint this again."}, image_part(png(42))]
    hits = _metric(_encoder_metrics(cluster), "nextgpt_encoder_cache_hits_total", backend="redis")
    first = chat(rest, content, ("text", "image"), seed=5)
    second = chat(rest, content, ("text", "image"), seed=5)
    assert first.status_code == second.status_code == 200
    after = _metric(_encoder_metrics(cluster), "nextgpt_encoder_cache_hits_total", backend="redis")
    assert after == hits + 1
    one, two = first.json()["choices"][0]["message"], second.json()["choices"][0]["message"]
    assert one["content"] == two["content"]  # same text and bytes-identical PNG
    ready = rest.get("/readyz").json()
    assert "redis" in str(ready).lower()


# ------------------------------------------------------------------------------------ bad input
BAD_REQUESTS = {
    "bad base64": ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], {}, "base64"),
    "corrupt png": ([image_part(b"\x89PNG not really")], {}, "image"),
    "corrupt mp4": ([video_part(b"\x00\x00\x00\x18ftypmp42 broken")], {}, "video"),
    "corrupt wav": ([audio_part(b"RIFF....WAVE broken")], {}, "audio"),
    "wrong mime": ([{"type": "image_url", "image_url": {"url": data_url("image/bmp", png())}}], {}, "bmp"),
    "too large": ([image_part(b"\x89PNG" + b"0" * (33 * 1024 * 1024))], {}, "limit"),
    "unknown lora": ("hi", {"nextgpt": {"lora": "no-such-adapter"}}, "no-such-adapter"),
    "bad options": ("hi", {"nextgpt": {"image": {"steps": 0}}}, "steps"),
}


def test_malformed_inputs_get_400_naming_the_problem_and_services_stay_up(cluster, rest):
    for name, (content, extra, fragment) in BAD_REQUESTS.items():
        response = chat(rest, content, **extra)
        assert response.status_code == 400, (name, response.text)
        assert fragment.lower() in response.json()["error"]["message"].lower(), (name, response.text)
    with NextGPTClient(cluster.grpc_target, timeout_s=60) as client:
        with pytest.raises(InvalidInput, match="image"):
            client.generate([Message("user", "x", [MediaItem("image", b"not a png", "image/png")])])
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        request = nextgpt_pb2.GenerateRequest(
            messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text="x")],
            options=common_pb2.GenerationOptions(top_p=5.0),
        )
        with pytest.raises(grpc.RpcError) as info:
            nextgpt_pb2_grpc.NextGPTStub(channel).Generate(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in info.value.details()
    assert rest.get("/readyz").status_code == 200
    assert chat(rest, "still there?").status_code == 200


# ----------------------------------------------------------------------------------- concurrency
def _batched(url: str, name: str, **labels: str) -> float:
    """Observations of batch size > 1 in a batch-size histogram."""
    count = _metric(url, f"{name}_count", **labels)
    ones = _metric(url, f"{name}_bucket", **labels, le="1.0")
    return count - ones


def test_sixteen_concurrent_requests_succeed_and_form_batches(cluster, rest):
    enc_before = _batched(_encoder_metrics(cluster), "nextgpt_encoder_batch_size")
    dec_url = f"http://127.0.0.1:{cluster.ports.decoder_metrics['image']}/metrics"
    dec_before = _batched(dec_url, "nextgpt_decoder_batch_size", modality="image")

    def one(i: int) -> httpx.Response:
        content = [{"type": "text", "text": f"Picture {i}"}, image_part(png(100 + i))]
        if i == 0:  # inputs of one request are encoded together, whatever the timing of the others
            content += [image_part(png(200)), image_part(png(201))]
        with httpx.Client(base_url=cluster.rest_url, timeout=300) as client:
            return chat(client, content, ("text", "image"), seed=i, max_tokens=8)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert all("image" in rest_media(r.json()["choices"][0]["message"]) for r in responses)
    assert _batched(_encoder_metrics(cluster), "nextgpt_encoder_batch_size") > enc_before
    assert _batched(dec_url, "nextgpt_decoder_batch_size", modality="image") > dec_before


# ------------------------------------------------------------------------------ health, metrics
SERVICES = {
    "encoder": "nextgpt.v1.EncoderService",
    "llm": "nextgpt.v1.LLMService",
    "decoder-image": "nextgpt.v1.DecoderService",
    "decoder-video": "nextgpt.v1.DecoderService",
    "decoder-audio": "nextgpt.v1.DecoderService",
    "gateway": "nextgpt.v1.NextGPT",
}


def test_health_reflection_and_metrics_on_every_service(cluster, rest):
    for name, service in SERVICES.items():
        target = cluster.children[name].health_target
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, name
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for s in answer.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= names, name
    p = cluster.ports
    expected = {
        p.encoder_metrics: [
            "nextgpt_encoder_cache_hits_total",
            "nextgpt_encoder_batch_size",
            "nextgpt_grpc_",
        ],
        p.llm_metrics: ["nextgpt_llm_generated_tokens_total", "nextgpt_llm_queue_depth"],
        p.decoder_metrics["video"]: ["nextgpt_decoder_batch_size", "nextgpt_decoder_queue_depth"],
    }
    for port, names in expected.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert all(n in text for n in names), (port, names)
    gateway_metrics = rest.get("/metrics").text
    assert "nextgpt_gateway_requests_total" in gateway_metrics
    assert "nextgpt_gateway_stage_seconds" in gateway_metrics
    assert rest.get("/healthz").status_code == 200 and rest.get("/v1/models").status_code == 200


# -------------------------------------------------------------- faults (these break the cluster)
def test_zz_requests_succeed_with_redis_stopped_mid_run(cluster, rest):
    cluster.stop_redis()
    response = chat(rest, [{"type": "text", "text": "Still?"}, image_part(png(77))], ("text", "image"))
    assert response.status_code == 200 and "image" in rest_media(response.json()["choices"][0]["message"])
    again = chat(rest, [{"type": "text", "text": "Still?"}, image_part(png(77))], ("text", "image"))
    assert (
        again.json()["choices"][0]["message"]["content"]
        == response.json()["choices"][0]["message"]["content"]
    )


def test_zz_killed_video_decoder_gives_text_image_and_an_error_entry(cluster, rest):
    cluster.kill("decoder-video")
    response = chat(rest, "A picture and a video.", ("text", "image", "video"), max_tokens=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(rest_media(body["choices"][0]["message"])) == ["image"]
    assert [e["modality"] for e in body["nextgpt"]["errors"]] == ["video"]
    ready = rest.get("/readyz")
    assert ready.status_code == 503 and "decoder.video" in ready.json()["missing"]
