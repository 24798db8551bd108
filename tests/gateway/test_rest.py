"""REST (OpenAI-compatible) API against fake backends over real loopback gRPC."""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import pytest

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from tests.gateway.fakes import REPLY_WORDS, sample_mp4, sample_png, sample_wav
from tests.gateway.helpers import audio_part, chat, image_part, media_of, user, video_part

TEXT = "".join(REPLY_WORDS)


def test_text_to_text(cluster):
    r = chat(cluster, user("Hello there"), headers={"x-request-id": "rest-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    message = body["choices"][0]["message"]
    assert message["content"] == TEXT and "audio" not in message
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert body["nextgpt"]["request_id"] == "rest-1" == r.headers["x-request-id"]
    assert body["nextgpt"]["errors"] == [] and set(body["nextgpt"]["timings"]) >= {"llm", "decode", "total"}
    assert cluster.encoder.calls == []  # no media: the encoder is not asked


def test_text_to_image_is_reproducible(cluster):
    bodies = [chat(cluster, user("a fox"), modalities=["text", "image"], seed=5).json() for _ in range(2)]
    content = bodies[0]["choices"][0]["message"]["content"]
    assert content[0] == {"type": "text", "text": TEXT}
    assert media_of(content) == [("image_url", sample_png(55))]  # the fake paints 50 + seed
    assert media_of(bodies[1]["choices"][0]["message"]["content"]) == media_of(content)
    assert [c.request.seed for c in cluster.decoders["image"].calls] == [5, 5]


def test_image_and_text_to_text(cluster):
    r = chat(cluster, user("What is this?", image_part()))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == TEXT
    (call,) = cluster.encoder.calls
    assert [i.media.mime_type for i in call.request.inputs] == ["image/png"]
    (turn,) = cluster.llm.calls[0].request.turns
    assert turn.text == "What is this?" and [m.modality for m in turn.media] == [common_pb2.MODALITY_IMAGE]
    assert list(turn.media[0].embedding.shape) == [16]


def test_all_inputs_to_all_outputs(cluster):
    r = chat(
        cluster,
        user("Remix these", image_part(), audio_part(), video_part()),
        modalities=["text", "image", "video", "audio"],
        seed=1,
        nextgpt={
            "image": {"steps": 3, "height": 64},
            "video": {"num_frames": 4, "fps": 4},
            "audio": {"audio_seconds": 1.5},
        },
    )
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert media_of(message["content"]) == [("image_url", sample_png(51)), ("video_url", sample_mp4(51))]
    assert base64.b64decode(message["audio"]["data"]) == sample_wav(0.01)
    assert message["audio"]["format"] == "wav" and message["audio"]["transcript"] == TEXT
    assert [i.media.mime_type for i in cluster.encoder.calls[0].request.inputs] == [
        "image/png",
        "audio/wav",
        "video/mp4",
    ]
    image_options = cluster.decoders["image"].calls[0].request.options
    assert image_options.steps == 3 and image_options.height == 64 and not image_options.HasField("width")
    assert cluster.decoders["video"].calls[0].request.options.num_frames == 4
    assert cluster.decoders["audio"].calls[0].request.options.audio_seconds == 1.5
    assert list(cluster.decoders["video"].calls[0].request.hidden.shape) == [24, 8]


def test_several_spans_get_consecutive_seeds_and_extra_spans_warn(cluster):
    cluster.llm.spans_per_modality = 3
    r = chat(cluster, user("foxes"), modalities=["image"], seed=10, nextgpt={"max_media_per_modality": 2})
    body = r.json()
    assert sorted(c.request.seed for c in cluster.decoders["image"].calls) == [10, 11]
    assert [kind for kind, _ in media_of(body["choices"][0]["message"]["content"])] == ["image_url"] * 2
    assert "3 image spans; decoding the first 2" in body["nextgpt"]["warnings"][0]


def test_assistant_media_in_history_become_generated_modalities(cluster):
    history = [
        user("draw a fox"),
        {"role": "assistant", "content": [{"type": "text", "text": "Here."}, image_part()]},
        user("now make it blue"),
    ]
    assert chat(cluster, *history).status_code == 200
    turns = cluster.llm.calls[0].request.turns
    assert [t.role for t in turns] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_USER]
    assert list(turns[1].generated) == [common_pb2.MODALITY_IMAGE] and not turns[1].media
    assert cluster.encoder.calls == []  # generated media are not re-encoded


def test_streaming_sse(cluster):
    body = {"messages": [user("a fox")], "modalities": ["text", "image", "audio"], "stream": True, "seed": 0}
    with httpx.stream("POST", f"{cluster.http_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d["content"] for d in deltas if isinstance(d.get("content"), str)) == TEXT
    parts = [p for d in deltas if isinstance(d.get("content"), list) for p in d["content"]]
    assert [p["type"] for p in parts] == ["image_url"]
    assert [base64.b64decode(d["audio"]["data"]) for d in deltas if "audio" in d] == [sample_wav(0.0)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] == 11
    assert chunks[-1]["nextgpt"]["errors"] == []


def test_model_may_name_an_adapter(cluster):
    assert chat(cluster, user("hi"), model="sketch").status_code == 200
    assert cluster.llm.calls[-1].request.adapter == "sketch"
    r = chat(cluster, user("hi"), model="gpt-4o")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "'gpt-4o' does not exist" in r.json()["error"]["message"]


def _too_big(cluster, monkeypatch):
    monkeypatch.setattr(cluster.settings, "max_media_bytes", 50)
    return user("x", image_part())


MALFORMED = {
    "bad base64": (
        lambda c, m: user("x", {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}),
        {},
        "not valid base64",
    ),
    "corrupt png": (
        lambda c, m: user("x", image_part(b"\x89PNG\r\n\x1a\nbroken")),
        {},
        "could not decode the image",
    ),
    "corrupt wav": (lambda c, m: user("x", audio_part(b"RIFF....WAVEjunk")), {}, "audio"),
    "corrupt mp4": (lambda c, m: user("x", video_part(b"\x00\x00\x00\x18ftypmp42junk")), {}, "video"),
    "wrong mime": (lambda c, m: user("x", image_part(mime="audio/wav")), {}, "its data URL is 'audio/wav'"),
    "unsupported mime": (
        lambda c, m: user("x", image_part(mime="image/gif")),
        {},
        "unsupported media type 'image/gif'",
    ),
    "bad audio format": (lambda c, m: user("x", audio_part(fmt="aiff")), {}, "format='aiff'"),
    "remote url": (
        lambda c, m: user("x", {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}),
        {},
        "does not fetch",
    ),
    "too big": (_too_big, {}, "over the gateway's limit of 50 bytes"),
    "unknown lora": (lambda c, m: user("x"), {"nextgpt": {"lora": "nope"}}, "unknown LoRA adapter 'nope'"),
    "bad temperature": (lambda c, m: user("x"), {"temperature": -1}, "temperature=-1"),
    "bad steps": (lambda c, m: user("x"), {"nextgpt": {"image": {"steps": 0}}}, "options.image: steps=0"),
    "bad size": (
        lambda c, m: user("x"),
        {"nextgpt": {"video": {"height": 12}}},
        "options.video: size 12x512",
    ),
    "bad fps": (
        lambda c, m: user("x"),
        {"nextgpt": {"video": {"fps": -2}}},
        "options.video: fps=-2 must be in [1, 60]",
    ),
    "unknown option": (lambda c, m: user("x"), {"nextgpt": {"image": {"stpes": 3}}}, "nextgpt.image.stpes"),
    "unknown modality": (lambda c, m: user("x"), {"modalities": ["smell"]}, "modalities ['smell'] unknown"),
    "system role": (
        lambda c, m: {"role": "system", "content": "be nice"},
        {},
        "role='system' is not supported",
    ),
    "last turn assistant": (
        lambda c, m: {"role": "assistant", "content": "hi"},
        {},
        "last message must be a user turn",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_inputs_are_400_naming_the_problem(cluster, monkeypatch, case):
    build, extra, expected = MALFORMED[case]
    r = chat(cluster, build(cluster, monkeypatch), **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(f"{cluster.http_url}/healthz").status_code == 200


def test_missing_messages_is_400(cluster):
    r = httpx.post(f"{cluster.http_url}/v1/chat/completions", json={"model": "nextgpt-tiny"})
    assert r.status_code == 400 and "messages: Field required" in r.json()["error"]["message"]


def test_request_body_limit(cluster, monkeypatch):
    monkeypatch.setattr(cluster.settings, "max_request_bytes", 100)
    r = chat(cluster, user("x" * 200))
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]["message"]


def test_request_body_limit_without_content_length(cluster, monkeypatch):
    """A chunked body (no Content-Length) is counted as it arrives and refused past the limit."""
    monkeypatch.setattr(cluster.settings, "max_request_bytes", 100)
    body = json.dumps({"model": "nextgpt-tiny", "messages": [user("x" * 200)]}).encode()
    chunks = (body[i : i + 32] for i in range(0, len(body), 32))
    url = f"{cluster.http_url}/v1/chat/completions"
    r = httpx.post(url, content=chunks, headers={"content-type": "application/json"}, timeout=30)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert "max_request_bytes" in error["message"] and error["code"] == "request_too_large"
    small = json.dumps({"model": "nextgpt-tiny", "messages": [user("hi")]}).encode()
    monkeypatch.setattr(cluster.settings, "max_request_bytes", len(small))
    r = httpx.post(url, content=iter([small[:10], small[10:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_encoder_down_fails_only_requests_with_media(cluster):
    cluster.encoder.mode = "unavailable"
    r = chat(cluster, user("look", image_part()))
    assert r.status_code == 503 and "encoder" in r.json()["error"]["message"]
    assert "weights are not loaded" in r.json()["error"]["message"]  # the service's own words
    assert r.headers["retry-after"] == "1"
    assert chat(cluster, user("just text")).status_code == 200


def test_api_keys(make_cluster):
    c = make_cluster(api_keys=["k1", "k2"])
    assert chat(c, user("hi")).status_code == 401
    assert (
        chat(c, user("hi"), headers={"authorization": "Bearer nope"}).json()["error"]["code"]
        == "invalid_api_key"
    )
    assert chat(c, user("hi"), headers={"authorization": "Bearer k2"}).status_code == 200
    assert httpx.get(f"{c.http_url}/healthz").status_code == 200
    anonymous = httpx.get(f"{c.http_url}/readyz").json()  # the verdict, no addresses or Redis URL
    assert anonymous == {"ready": True, "draining": False, "missing": []}
    keyed = httpx.get(f"{c.http_url}/readyz", headers={"authorization": "Bearer k1"}).json()
    assert keyed["dependencies"]["llm"]["target"].startswith("127.0.0.1:")
    assert httpx.get(f"{c.http_url}/metrics").status_code == 401
    scraped = httpx.get(f"{c.http_url}/metrics", headers={"authorization": "Bearer k2"})
    assert scraped.status_code == 200 and "nextgpt_gateway_requests_total" in scraped.text
    with grpc.insecure_channel(c.grpc_target) as channel:
        stub = nextgpt_pb2_grpc.NextGPTStub(channel)
        hello = nextgpt_pb2.GenerateRequest(
            messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text="hi")]
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(hello, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Generate(hello, timeout=10, metadata=[("authorization", "Bearer k1")]).text


def test_models_health_metrics_docs(cluster):
    models = httpx.get(f"{cluster.http_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["nextgpt-tiny", "default", "sketch"]
    assert httpx.get(f"{cluster.http_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{cluster.http_url}/readyz")
    assert ready.status_code == 200 and ready.json()["missing"] == []
    assert ready.json()["dependencies"]["decoder.video"]["status"] == "SERVING"
    assert ready.json()["dependencies"]["encoder"]["cache"] == {
        "backend": "lru",
        "redis_connected": False,
        "redis_url": "",
        "lru_entries": 3,
    }
    chat(cluster, user("a fox"), modalities=["image"])
    text = httpx.get(f"{cluster.http_url}/metrics").text
    for name in (
        "nextgpt_gateway_requests_total",
        "nextgpt_gateway_request_seconds",
        "nextgpt_gateway_stage_seconds",
        "nextgpt_gateway_media_errors_total",
        "nextgpt_gateway_in_flight",
    ):
        assert name in text
    assert 'nextgpt_gateway_requests_total{api="rest",status="ok"}' in text
    assert httpx.get(f"{cluster.http_url}/docs").status_code == 200
    assert "/v1/chat/completions" in httpx.get(f"{cluster.http_url}/openapi.json").json()["paths"]
