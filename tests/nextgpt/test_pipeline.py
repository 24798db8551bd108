"""End-to-end tests of the in-process pipeline on the tiny profile."""

from __future__ import annotations

import io

import av
import pytest
import soundfile as sf
from PIL import Image

from nextgpt.config import GenerationOptions
from nextgpt.errors import InvalidInput, NextGPTError
from nextgpt.types import MediaItem, Message
from tests.nextgpt.samples import sample_audio, sample_image, sample_video


def _assert_valid(item: MediaItem) -> None:
    if item.modality == "image":
        assert item.mime_type == "image/png"
        Image.open(io.BytesIO(item.data)).verify()
    elif item.modality == "audio":
        assert item.mime_type == "audio/wav"
        waveform, rate = sf.read(io.BytesIO(item.data))
        assert rate == 16000 and len(waveform) > 0
    else:
        assert item.mime_type == "video/mp4"
        with av.open(io.BytesIO(item.data)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert sum(1 for _ in container.decode(video=0)) > 0


def test_text_to_image_is_deterministic_with_a_seed(tiny_model):
    options = GenerationOptions(seed=7, max_new_tokens=16, modalities=("text", "image"))
    first = tiny_model.generate([Message("user", "Show me a picture of a cat.")], options)
    second = tiny_model.generate([Message("user", "Show me a picture of a cat.")], options)
    assert first.text == second.text
    assert [m.modality for m in first.media] == ["image"]
    assert first.media[0].data == second.media[0].data  # bytes-identical PNG
    _assert_valid(first.media[0])


def test_mixed_inputs_and_all_three_outputs_in_one_call(tiny_model):
    media = [sample_image(), sample_audio(), sample_video()]
    message = Message("user", "Describe these and answer with all media.", media)
    options = GenerationOptions(seed=1, max_new_tokens=48, modalities=("text", "image", "video", "audio"))
    result = tiny_model.generate([message], options)
    assert sorted(m.modality for m in result.media) == ["audio", "image", "video"]
    assert not result.errors
    for item in result.media:
        _assert_valid(item)
    assert sorted(result.forced_modalities) == sorted(set(result.forced_modalities))
    assert result.prompt_tokens > 0 and set(result.timings) == {"encode", "llm", "decode"}


def test_generated_media_feed_back_as_next_turn_input(tiny_model):
    options = GenerationOptions(seed=3, max_new_tokens=12, modalities=("text", "image"))
    first = tiny_model.generate([Message("user", "Draw a red square.")], options)
    history = [Message("user", "Draw a red square."), first.as_message()]
    follow_up = Message("user", "What is in this picture?", [first.media[0]])
    second = tiny_model.generate(history + [follow_up], GenerationOptions(seed=3, max_new_tokens=12))
    assert second.finish_reason in ("stop", "length")
    assert second.media == []  # text only was asked for and the tiny model emits no span unforced here


def test_failing_decoder_degrades_to_text_plus_error(tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise NextGPTError("video decoder exploded")

    monkeypatch.setattr(tiny_model.decoders["video"], "decode", broken)
    options = GenerationOptions(seed=2, max_new_tokens=40, modalities=("text", "image", "video"))
    result = tiny_model.generate([Message("user", "A picture and a video, please.")], options)
    assert [m.modality for m in result.media] == ["image"]
    assert [(e.modality, e.message) for e in result.errors] == [("video", "video decoder exploded")]


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "messages is empty"),
        ([Message("assistant", "hi")], "last message must be a user turn"),
        ([Message("user", "  ")], "neither text nor media"),
        ([Message("user", "x", [MediaItem("image", b"", "image/png")])], "empty image"),
        ([Message("user", "x", [MediaItem("image", b"not a png", "image/png")])], "image"),
    ],
)
def test_bad_requests_raise_invalid_input(tiny_model, messages, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        tiny_model.generate(messages, GenerationOptions(max_new_tokens=4))
