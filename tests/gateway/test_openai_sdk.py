"""The official `openai` SDK reads the gateway's responses, plain and streamed.

How to get generated media out of the SDK's objects (also in the README):
- text: `resp.choices[0].message.content` is a str without media; with media it is a list of dicts
  `{"type": "text" | "image_url" | "video_url", ...}` (the SDK keeps unknown shapes as they came);
- image: `base64.b64decode(part["image_url"]["url"].split(",", 1)[1])` for the image_url part;
- audio: `base64.b64decode(resp.choices[0].message.audio.data)` (WAV);
- NExT-GPT extras: `resp.model_extra["nextgpt"]` (errors, warnings, timings, request_id).
"""

from __future__ import annotations

import base64

import openai
import pytest

from tests.gateway.fakes import REPLY_WORDS, sample_mp4, sample_png, sample_wav
from tests.gateway.helpers import b64

TEXT = "".join(REPLY_WORDS)


@pytest.fixture
def client(cluster):
    with openai.OpenAI(base_url=f"{cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def _parts(content) -> dict[str, bytes]:
    return {
        p["type"]: base64.b64decode(p[p["type"]]["url"].split(",", 1)[1])
        for p in content
        if p["type"] != "text"
    }


def test_text_to_text(client):
    resp = client.chat.completions.create(model="nextgpt-tiny", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == TEXT and resp.usage.total_tokens == 11
    assert resp.model_extra["nextgpt"]["errors"] == []


def test_image_in_all_media_out(client):
    resp = client.chat.completions.create(
        model="nextgpt-tiny",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Remix this"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(sample_png())}"}},
                    {"type": "input_audio", "input_audio": {"data": b64(sample_wav()), "format": "wav"}},
                ],
            }
        ],
        modalities=["text", "image", "video", "audio"],
        seed=3,
        extra_body={"nextgpt": {"image": {"steps": 2}}},
    )
    message = resp.choices[0].message
    assert message.content[0] == {"type": "text", "text": TEXT}
    assert _parts(message.content) == {"image_url": sample_png(53), "video_url": sample_mp4(53)}
    assert base64.b64decode(message.audio.data) == sample_wav(0.03) and message.audio.transcript == TEXT
    assert resp.model_extra["nextgpt"]["request_id"] == resp.id.removeprefix("chatcmpl-")


def test_stream(client):
    stream = client.chat.completions.create(
        model="nextgpt-tiny",
        messages=[{"role": "user", "content": "a fox"}],
        modalities=["text", "image", "audio"],
        seed=0,
        stream=True,
    )
    text, media, audio, finish = "", {}, [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        if isinstance(delta.content, str):
            text += delta.content
        elif isinstance(delta.content, list):  # a generated image / video, as content parts
            media |= _parts(delta.content)
        if delta.audio is not None:
            audio.append(base64.b64decode(delta.audio.data))
        finish = chunk.choices[0].finish_reason or finish
    assert text == TEXT and media == {"image_url": sample_png(50)} and audio == [sample_wav(0.0)]
    assert (
        finish == "stop" and chunk.usage.total_tokens == 11 and chunk.model_extra["nextgpt"]["errors"] == []
    )


def test_errors_raise_the_sdk_exceptions(client, cluster):
    with pytest.raises(openai.BadRequestError, match="not valid base64"):
        client.chat.completions.create(
            model="nextgpt-tiny",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}],
                }
            ],
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    cluster.llm.mode = "break"
    with pytest.raises(openai.APIError, match="llm service failed"):
        for _ in client.chat.completions.create(
            model="nextgpt-tiny", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass


def test_models_and_adapter_as_model(client, cluster):
    assert [m.id for m in client.models.list()] == ["nextgpt-tiny", "default", "sketch"]
    client.chat.completions.create(model="sketch", messages=[{"role": "user", "content": "hi"}])
    assert cluster.llm.calls[-1].request.adapter == "sketch"
