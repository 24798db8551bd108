"""Output budgets: every option value the ranges allow runs on the decoders; the rest is a clear refusal.

`steps=1000`, once the documented maximum, made every tiny decoder raise IndexError mid-diffusion (their
schedulers index a 1000-entry schedule from timestep 1): the bounds below are checked against the real
schedulers, and the maxima are run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import diffusers
import pytest
import torch

from nextgpt.config import (
    MAX_AUDIO_SECONDS,
    MAX_FRAMES,
    MAX_PIXEL_STEPS,
    MAX_STEPS,
    DecodeDefaults,
    DecodeOptions,
    GenerationOptions,
    ProfileConfig,
)
from nextgpt.decoders.audio import AudioDecoder
from nextgpt.decoders.image import ImageDecoder
from nextgpt.decoders.video import VideoDecoder
from nextgpt.errors import ConfigError, InvalidInput
from services.decoders.limits import check_settings, decoder_max_steps, scheduler_max_steps


def _scheduler(pipeline_dir: Path) -> object:
    config = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    return cls.from_pretrained(pipeline_dir, subfolder="scheduler")


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_max_steps_fit_every_scheduler(tiny_profile: ProfileConfig, modality: str) -> None:
    scheduler = _scheduler(tiny_profile.decoders[modality].pipeline_dir)
    assert scheduler_max_steps(scheduler) == 999  # 1000 training timesteps, steps_offset 1
    assert MAX_STEPS <= 999
    scheduler.set_timesteps(1000)  # one more: a timestep past the schedule, the old IndexError
    assert int(scheduler.timesteps.max()) >= scheduler.config.num_train_timesteps


@pytest.fixture(scope="module")
def image_decoder(tiny_profile: ProfileConfig) -> ImageDecoder:
    return ImageDecoder.load(tiny_profile.decoders["image"])


def test_max_steps_run_through_the_image_pipeline(
    image_decoder: ImageDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole pipeline loop (scheduler, guidance, VAE) at MAX_STEPS; the UNet returns zeros, since
    500 real tiny-UNet steps take ~10 s (the real run is `test_max_steps_really_run`, marked slow)."""
    calls = []

    def unet(sample: torch.Tensor, timestep: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        calls.append(int(timestep))
        return (torch.zeros_like(sample),)

    monkeypatch.setattr(image_decoder.pipe.unet, "forward", unet)
    cond = torch.zeros(1, *image_decoder.cond_shape)
    options = dataclasses.replace(image_decoder.defaults, steps=MAX_STEPS, height=16, width=16)
    images = image_decoder.diffuse(cond, options, seed=0)
    assert images.shape == (1, 16, 16, 3) and len(calls) >= MAX_STEPS and max(calls) < 1000
    assert decoder_max_steps(image_decoder) == MAX_STEPS
    with pytest.raises(IndexError):  # what a request at 1000 steps did before the bound
        image_decoder.diffuse(cond, _unchecked(options, steps=1000), seed=0)


def _unchecked(options: DecodeDefaults, **changes: int) -> DecodeDefaults:
    """`options` with `changes` applied without `__post_init__`'s range checks."""
    out = dataclasses.replace(options)
    for name, value in changes.items():
        object.__setattr__(out, name, value)
    return out


@pytest.mark.slow
def test_max_steps_really_run(image_decoder: ImageDecoder) -> None:
    cond = torch.zeros(1, *image_decoder.cond_shape)
    options = dataclasses.replace(image_decoder.defaults, steps=MAX_STEPS, height=16, width=16)
    assert image_decoder.diffuse(cond, options, seed=0).shape == (1, 16, 16, 3)


def test_max_frames_run_on_the_video_decoder(tiny_profile: ProfileConfig) -> None:
    decoder = VideoDecoder.load(tiny_profile.decoders["video"])
    options = dataclasses.replace(decoder.defaults, steps=2, num_frames=MAX_FRAMES, height=16, width=16)
    frames = decoder.diffuse(torch.zeros(1, *decoder.cond_shape), options, seed=0)
    assert frames.shape[:2] == (1, MAX_FRAMES)


@pytest.mark.slow
def test_max_audio_seconds_run_on_the_audio_decoder(tiny_profile: ProfileConfig) -> None:
    decoder = AudioDecoder.load(tiny_profile.decoders["audio"])
    options = dataclasses.replace(decoder.defaults, steps=2, audio_seconds=MAX_AUDIO_SECONDS)
    waves = decoder.diffuse(torch.zeros(1, *decoder.cond_shape), options, seed=0)
    assert waves.shape[-1] == int(MAX_AUDIO_SECONDS * 16000)


# --- option checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"steps": 1000}, "steps=1000 must be in [1, 500]"),
        ({"height": 2048}, "height=2048 must be in [8, 1024]"),
        ({"num_frames": 256}, "num_frames=256 must be in [1, 64]"),
        ({"audio_seconds": 61.0}, "audio_seconds=61.0 must be in (0, 60.0]"),
    ],
)
def test_ranges(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        DecodeOptions(**changes).resolve(DecodeDefaults())
    assert fragment in str(info.value)


def test_normal_use_is_within_every_budget() -> None:
    video = DecodeOptions(steps=50, height=320, width=576, num_frames=24)
    image = DecodeOptions(steps=50, height=512, width=512)
    audio = DecodeOptions(steps=50, audio_seconds=10.0)
    GenerationOptions(modalities=("text", "image", "video", "audio"), image=image, video=video, audio=audio)
    GenerationOptions(modalities=("image",), max_media_per_modality=8)  # 8 SD images at 512x512


def test_per_decode_budget() -> None:
    settings = DecodeOptions(steps=500, height=576, width=1024, num_frames=24).resolve(DecodeDefaults())
    assert settings.pixel_steps("video") == 500 * 576 * 1024 * 24 > MAX_PIXEL_STEPS
    assert settings.pixel_steps("image") == 500 * 576 * 1024 and settings.pixel_steps("audio") == 0
    with pytest.raises(ConfigError) as info:
        settings.check_budget("video")
    message = str(info.value)
    assert "steps x height x width x num_frames = 500 x 576 x 1024 x 24 = 7077888000" in message
    assert "budget of 1000000000" in message and "(max_pixel_steps)" in message
    with pytest.raises(InvalidInput, match=r"^video options: .*max_pixel_steps"):
        check_settings("video", settings)
    check_settings("image", settings)  # 295 M: an image of that size and steps is within budget
    with pytest.raises(InvalidInput, match="steps=500 is over this decoder's limit of 100"):
        check_settings("image", settings, max_steps=100)


def test_per_request_budget() -> None:
    with pytest.raises(ConfigError) as info:
        GenerationOptions(modalities=("text", "video"), max_media_per_modality=8)
    message = str(info.value)
    assert "video 8 x 314572800" in message and "= 2516582400" in message
    assert "request budget of 1000000000 (max_pixel_steps)" in message and "max_media_per_modality" in message
    GenerationOptions(modalities=("text", "video"), max_media_per_modality=3)
    GenerationOptions(modalities=("text", "video"), max_media_per_modality=8, max_pixel_steps=3 * 10**9)
