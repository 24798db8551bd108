"""Partial results, concurrency, deadlines and readiness when backends are slow, fail or go away."""

from __future__ import annotations

import httpx

from tests.gateway.fakes import REPLY_WORDS, sample_png
from tests.gateway.helpers import chat, image_part, media_of, user

TEXT = "".join(REPLY_WORDS)
ALL = ["text", "image", "video", "audio"]


def test_decoders_run_concurrently(cluster):
    for fake in cluster.decoders.values():
        fake.delay_s = 0.3
    assert chat(cluster, user("all of it"), modalities=ALL).status_code == 200
    calls = [fake.calls[0] for fake in cluster.decoders.values()]
    # every decoder started before any finished: the three 0.3 s calls overlapped
    assert max(c.started for c in calls) < min(c.ended for c in calls)
    assert min(c.started for c in calls) >= cluster.llm.calls[0].ended


def test_failing_decoder_gives_text_other_media_and_an_error_entry(cluster):
    cluster.decoders["video"].mode = "fail"
    cluster.decoders["audio"].mode = "invalid"
    r = chat(cluster, user("all of it"), modalities=ALL, seed=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert media_of(body["choices"][0]["message"]["content"]) == [("image_url", sample_png(50))]
    assert "audio" not in body["choices"][0]["message"]
    errors = {e["modality"]: e["message"] for e in body["nextgpt"]["errors"]}
    assert set(errors) == {"video", "audio"} and "rejects this request" in errors["audio"]
    assert errors["video"].startswith("the video decoder service failed (INTERNAL)")
    assert "RuntimeError" not in errors["video"]  # internal details stay in the logs
    metrics = httpx.get(f"{cluster.http_url}/metrics").text
    assert 'nextgpt_gateway_media_errors_total{modality="video"}' in metrics


def test_hanging_decoder_times_out_into_an_error_entry(cluster, monkeypatch):
    monkeypatch.setattr(cluster.settings, "request_timeout_s", 0.5)
    cluster.decoders["image"].mode = "hang"
    body = chat(cluster, user("a fox"), modalities=["image", "audio"]).json()
    assert body["choices"][0]["message"]["content"] == TEXT and "audio" in body["choices"][0]["message"]
    (error,) = body["nextgpt"]["errors"]
    assert error == {
        "modality": "image",
        "message": "the image decoder did not finish within the request deadline",
    }


def test_hanging_llm_is_504_and_the_llm_saw_the_deadline(cluster, monkeypatch):
    monkeypatch.setattr(cluster.settings, "request_timeout_s", 0.5)
    cluster.llm.mode = "hang"
    r = chat(cluster, user("a fox"))
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert "llm service did not answer" in r.json()["error"]["message"]
    assert 0 < cluster.llm.calls[0].time_remaining < 0.6


def test_hanging_encoder_is_504(cluster, monkeypatch):
    monkeypatch.setattr(cluster.settings, "request_timeout_s", 0.5)
    cluster.encoder.mode = "hang"
    assert chat(cluster, user("look", image_part())).status_code == 504
    assert cluster.encoder.calls[0].time_remaining < 0.6


def test_request_id_reaches_every_backend(cluster):
    r = chat(cluster, user("look", image_part()), modalities=ALL, headers={"x-request-id": "trace-42"})
    assert r.json()["nextgpt"]["request_id"] == "trace-42"
    fakes = cluster.fakes()
    assert [f.calls[0].request_id for f in fakes] == ["trace-42"] * len(fakes)


def test_killed_decoder_partial_result_and_readyz(make_cluster):
    c = make_cluster()
    c.kill("decoder.video")
    body = chat(c, user("fox video"), modalities=["image", "video"]).json()
    assert body["choices"][0]["message"]["content"][0]["text"] == TEXT
    assert [kind for kind, _ in media_of(body["choices"][0]["message"]["content"])] == ["image_url"]
    (error,) = body["nextgpt"]["errors"]
    assert (
        error["modality"] == "video"
        and "video decoder" in error["message"]
        and "unavailable" in error["message"]
    )
    ready = httpx.get(f"{c.http_url}/readyz")
    assert ready.status_code == 503 and ready.json()["missing"] == ["decoder.video"]
    assert ready.json()["dependencies"]["decoder.video"]["status"] == "UNREACHABLE"
    assert ready.json()["dependencies"]["decoder.image"]["status"] == "SERVING"


def test_unconfigured_decoder(make_cluster):
    c = make_cluster(audio_decoder_target="")
    body = chat(c, user("a sound"), modalities=["audio"]).json()
    assert body["nextgpt"]["errors"][0]["message"].startswith("no audio decoder is configured")
    ready = httpx.get(f"{c.http_url}/readyz").json()
    assert (
        ready["missing"] == ["decoder.audio"]
        and ready["dependencies"]["decoder.audio"]["status"] == "NOT_CONFIGURED"
    )


def test_backend_not_serving_makes_readyz_fail(cluster):
    cluster.run(cluster.servers["llm"].set_serving(False))
    try:
        ready = httpx.get(f"{cluster.http_url}/readyz")
        assert ready.status_code == 503 and ready.json()["missing"] == ["llm"]
        assert ready.json()["dependencies"]["llm"]["status"] == "NOT_SERVING"
    finally:
        cluster.run(cluster.servers["llm"].set_serving(True))


def test_stream_error_after_start_is_reported_in_band(cluster):
    cluster.llm.mode = "fail"
    body = {"messages": [user("x")], "stream": True}
    r = httpx.post(f"{cluster.http_url}/v1/chat/completions", json=body, timeout=10)
    # the LLM fails before the first event: a real HTTP error, not a 200 stream
    assert r.status_code == 502 and "llm service failed" in r.json()["error"]["message"]


def test_stream_failing_midway_reports_the_error_in_band(cluster):
    cluster.llm.mode = "break"
    body = {"messages": [user("x")], "stream": True}
    with httpx.stream("POST", f"{cluster.http_url}/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert (
        lines[-1] == "data: [DONE]"
        and '"error"' in lines[-2]
        and "llm service failed" in lines[-2]
        and "RuntimeError" not in lines[-2]
    )
