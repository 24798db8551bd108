"""VideoDecoder on the tiny Zeroscope (TextToVideoSD) pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nextgpt import tiny_profile as dims
from nextgpt.config import DecoderConfig, ProfileConfig
from nextgpt.decoders.video import VideoDecoder
from nextgpt.errors import InvalidInput, ModelNotReady
from tests.nextgpt.decoders.helpers import read_mp4


@pytest.fixture(scope="module")
def cfg(tiny_profile: ProfileConfig) -> DecoderConfig:
    return tiny_profile.decoders["video"]


@pytest.fixture(scope="module")
def decoder(cfg: DecoderConfig) -> VideoDecoder:
    return VideoDecoder.load(cfg)


def _cond(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 77, dims.VIDEO_COND_DIM, generator=torch.Generator().manual_seed(seed))


def test_shapes(decoder: VideoDecoder) -> None:
    assert decoder.cond_shape == (77, dims.VIDEO_COND_DIM)
    assert decoder.negative_embeds.shape == (1, 77, dims.VIDEO_COND_DIM)
    torch.testing.assert_close(decoder.negative_embeds.float().cpu(), decoder.encode_text([""]))


def test_encode_text(decoder: VideoDecoder) -> None:
    targets = decoder.encode_text(["waves crash on a beach", "a man rides a horse"])
    assert targets.shape == (2, 77, dims.VIDEO_COND_DIM) and targets.dtype == torch.float32
    assert not torch.allclose(targets[0], targets[1])


def test_decode_mp4(decoder: VideoDecoder, cfg: DecoderConfig) -> None:
    [item] = decoder.decode(_cond(1), cfg.defaults, seed=0)
    assert item.modality == "video" and item.mime_type == "video/mp4"
    info = read_mp4(item.data)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.fps == 8 == cfg.defaults.fps
    assert info.frames == dims.VIDEO_FRAMES
    assert (info.width, info.height) == (dims.VIDEO_SIZE, dims.VIDEO_SIZE)


def test_decode_is_deterministic(decoder: VideoDecoder, cfg: DecoderConfig) -> None:
    first = decoder.decode(_cond(1), cfg.defaults, seed=3)
    assert decoder.decode(_cond(1), cfg.defaults, seed=3)[0].data == first[0].data
    assert decoder.decode(_cond(1), cfg.defaults, seed=4)[0].data != first[0].data


def test_decode_batch_and_options(decoder: VideoDecoder, cfg: DecoderConfig) -> None:
    options = dataclasses.replace(cfg.defaults, steps=2, num_frames=4, fps=4, height=32, width=48)
    items = decoder.decode(_cond(2), options, seed=None)
    assert len(items) == 2
    for item in items:
        info = read_mp4(item.data)
        assert (info.frames, info.fps, info.width, info.height) == (4, 4, 48, 32)


@pytest.mark.parametrize("shape", [(1, 77, dims.IMAGE_COND_DIM), (1, 24, dims.VIDEO_COND_DIM), (77, 48)])
def test_wrong_cond_shape(decoder: VideoDecoder, cfg: DecoderConfig, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput, match=r"expects \(B, 77, 48\)"):
        decoder.decode(torch.zeros(shape), cfg.defaults, seed=0)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="video decoder"):
        VideoDecoder.load(DecoderConfig(pipeline_dir=tmp_path / "nowhere"))
