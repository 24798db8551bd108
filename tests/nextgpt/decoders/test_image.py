"""ImageDecoder on the tiny Stable Diffusion pipeline."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from nextgpt import tiny_profile as dims
from nextgpt.config import DecoderConfig, ProfileConfig
from nextgpt.decoders.image import ImageDecoder
from nextgpt.errors import InvalidInput, ModelNotReady


@pytest.fixture(scope="module")
def cfg(tiny_profile: ProfileConfig) -> DecoderConfig:
    return tiny_profile.decoders["image"]


@pytest.fixture(scope="module")
def decoder(cfg: DecoderConfig) -> ImageDecoder:
    return ImageDecoder.load(cfg)


def _cond(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 77, dims.IMAGE_COND_DIM, generator=torch.Generator().manual_seed(seed))


def test_shapes(decoder: ImageDecoder) -> None:
    assert decoder.cond_shape == (77, dims.IMAGE_COND_DIM)
    assert decoder.negative_embeds.shape == (1, 77, dims.IMAGE_COND_DIM)


def test_negative_embeds_are_the_empty_prompt(decoder: ImageDecoder) -> None:
    torch.testing.assert_close(decoder.negative_embeds.float().cpu(), decoder.encode_text([""]))


def test_encode_text(decoder: ImageDecoder) -> None:
    targets = decoder.encode_text(["a red bicycle", "a cat on a sofa", "a red bicycle"])
    assert targets.shape == (3, 77, dims.IMAGE_COND_DIM) and targets.dtype == torch.float32
    torch.testing.assert_close(targets[0], targets[2])
    assert not torch.allclose(targets[0], targets[1])
    with pytest.raises(InvalidInput):
        decoder.encode_text([])


def test_decode_png(decoder: ImageDecoder, cfg: DecoderConfig) -> None:
    [item] = decoder.decode(_cond(1), cfg.defaults, seed=0)
    assert item.modality == "image" and item.mime_type == "image/png"
    image = Image.open(io.BytesIO(item.data))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (dims.IMAGE_SIZE, dims.IMAGE_SIZE)


def test_decode_is_deterministic(decoder: ImageDecoder, cfg: DecoderConfig) -> None:
    first = decoder.decode(_cond(1), cfg.defaults, seed=7)
    second = decoder.decode(_cond(1), cfg.defaults, seed=7)
    assert first[0].data == second[0].data
    other = decoder.decode(_cond(1), cfg.defaults, seed=8)
    assert other[0].data != first[0].data


def test_decode_batch_and_options(decoder: ImageDecoder, cfg: DecoderConfig) -> None:
    options = dataclasses.replace(cfg.defaults, height=32, width=48, steps=2)
    items = decoder.decode(_cond(2), options, seed=None)
    assert len(items) == 2
    assert all(Image.open(io.BytesIO(i.data)).size == (48, 32) for i in items)


@pytest.mark.parametrize(
    "shape",
    [(1, 77, dims.VIDEO_COND_DIM), (77, dims.IMAGE_COND_DIM), (1, 4, dims.IMAGE_COND_DIM), (0, 77, 32)],
)
def test_wrong_cond_shape(decoder: ImageDecoder, cfg: DecoderConfig, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput, match=r"expects \(B, 77, 32\)"):
        decoder.decode(torch.zeros(shape), cfg.defaults, seed=0)


def test_non_finite_cond(decoder: ImageDecoder, cfg: DecoderConfig) -> None:
    cond = _cond(1)
    cond[0, 0, 0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        decoder.decode(cond, cfg.defaults, seed=0)


def test_progress_flag(decoder: ImageDecoder, cfg: DecoderConfig, capsys: pytest.CaptureFixture[str]) -> None:
    options = dataclasses.replace(cfg.defaults, steps=2)
    decoder.decode(_cond(1), options, seed=0, progress=True)
    assert "2/2" in capsys.readouterr().err
    decoder.decode(_cond(1), options, seed=0)
    assert "2/2" not in capsys.readouterr().err


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match=str(tmp_path / "nowhere")):
        ImageDecoder.load(DecoderConfig(pipeline_dir=tmp_path / "nowhere"))
