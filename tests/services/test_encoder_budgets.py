"""The encoder service's input budgets: settings (flags / env) -> `MediaBudgets` -> INVALID_ARGUMENT text."""

from __future__ import annotations

import asyncio

import pytest

from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.types import MediaItem
from services.common.settings import load_settings
from services.encoder.cache import make_cache
from services.encoder.config import ENV_PREFIX, EncoderServiceSettings
from services.encoder.core import EncoderCore
from tests.nextgpt.encoders.media_factory import sine, wav_bytes
from tests.nextgpt.media.test_budgets import gop_video, png_bomb


def test_budgets_are_settings() -> None:
    settings = load_settings(
        EncoderServiceSettings, ENV_PREFIX, ["--max-image-pixels", "1000", "--max-video-seconds", "2.5"]
    )
    budgets = settings.media_budgets()
    assert budgets.max_image_pixels == 1000 and budgets.max_video_seconds == 2.5
    defaults = EncoderServiceSettings().media_budgets()
    assert defaults.max_image_pixels == 4096 * 4096 and defaults.max_audio_seconds == 300.0
    with pytest.raises(ConfigError, match="max_audio_seconds=0"):
        EncoderServiceSettings(max_audio_seconds=0)


def _refusal(settings: EncoderServiceSettings, *items: MediaItem) -> str:
    core = EncoderCore(settings, make_cache("", ttl_s=60, max_entries=4))
    with pytest.raises(InvalidInput) as info:
        asyncio.run(core._preprocess(list(items), list(range(len(items)))))
    return str(info.value)


def test_over_budget_inputs_are_refused_naming_input_limit_and_setting() -> None:
    ok = MediaItem("audio", wav_bytes(sine(0.5)), "audio/wav")
    bomb = MediaItem("image", png_bomb(), "image/png")
    message = _refusal(EncoderServiceSettings(), ok, bomb)
    assert message.startswith("inputs[1]: image is 8192x8192") and "(max_image_pixels)" in message
    long_audio = MediaItem("audio", wav_bytes(sine(3.0)), "audio/wav")
    message = _refusal(EncoderServiceSettings(max_audio_seconds=2.0), long_audio)
    assert message.startswith("inputs[0]: audio is")
    assert "over the limit of 2 s (max_audio_seconds)" in message
    video = MediaItem("video", gop_video(30, fps=10), "video/mp4")
    message = _refusal(EncoderServiceSettings(max_video_frame_pixels=1000), video)
    assert "64x48 = 3072 pixels" in message and "(max_video_frame_pixels)" in message
