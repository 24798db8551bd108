"""AudioDecoder on the tiny AudioLDM pipeline."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from nextgpt import tiny_profile as dims
from nextgpt.config import DecoderConfig, ProfileConfig
from nextgpt.decoders.audio import AudioDecoder
from nextgpt.errors import InvalidInput, ModelNotReady


@pytest.fixture(scope="module")
def cfg(tiny_profile: ProfileConfig) -> DecoderConfig:
    return tiny_profile.decoders["audio"]


@pytest.fixture(scope="module")
def decoder(cfg: DecoderConfig) -> AudioDecoder:
    return AudioDecoder.load(cfg)


def _cond(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, dims.AUDIO_COND_DIM, generator=torch.Generator().manual_seed(seed))


def _read(data: bytes) -> tuple[np.ndarray, int, str]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate, sf.info(io.BytesIO(data)).subtype


def test_shapes_and_normalisation(decoder: AudioDecoder) -> None:
    assert decoder.cond_shape == (dims.AUDIO_COND_DIM,)
    assert decoder.sample_rate == 16000
    assert decoder.negative_embeds.shape == (1, dims.AUDIO_COND_DIM)
    torch.testing.assert_close(decoder.negative_embeds.norm(dim=-1), torch.ones(1))


def test_encode_text_is_normalised(decoder: AudioDecoder) -> None:
    targets = decoder.encode_text(["a dog barks", "rain falls on a roof"])
    assert targets.shape == (2, dims.AUDIO_COND_DIM) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(targets[0], targets[1])
    torch.testing.assert_close(decoder.encode_text([""]), decoder.negative_embeds.float().cpu())


def test_decode_wav(decoder: AudioDecoder, cfg: DecoderConfig) -> None:
    [item] = decoder.decode(_cond(1), cfg.defaults, seed=0)
    assert item.modality == "audio" and item.mime_type == "audio/wav"
    samples, rate, subtype = _read(item.data)
    assert rate == 16000 and subtype == "PCM_16" and samples.ndim == 1
    assert len(samples) == int(dims.AUDIO_SECONDS * 16000)
    assert np.abs(samples).max() > 0  # not rounded to silence


def test_decode_is_deterministic(decoder: AudioDecoder, cfg: DecoderConfig) -> None:
    first = decoder.decode(_cond(1), cfg.defaults, seed=5)
    assert decoder.decode(_cond(1), cfg.defaults, seed=5)[0].data == first[0].data
    assert decoder.decode(_cond(1), cfg.defaults, seed=6)[0].data != first[0].data


def test_cond_is_normalised_before_use(decoder: AudioDecoder, cfg: DecoderConfig) -> None:
    """AudioLDM does not normalise passed embeds; the decoder does, so scale must not matter."""
    cond = _cond(1)
    scaled = 4 * cond  # a power of two keeps the normalised vector bit-identical
    assert (
        decoder.decode(cond, cfg.defaults, seed=0)[0].data
        == decoder.decode(scaled, cfg.defaults, seed=0)[0].data
    )


def test_decode_batch_and_projector_shape(decoder: AudioDecoder, cfg: DecoderConfig) -> None:
    options = dataclasses.replace(cfg.defaults, steps=2, audio_seconds=1.05)
    items = decoder.decode(_cond(2)[:, None, :], options, seed=None)  # (B, 1, D) from the projector
    assert len(items) == 2
    for item in items:
        samples, rate, _ = _read(item.data)
        assert rate == 16000 and len(samples) == int(1.05 * 16000)


@pytest.mark.parametrize("shape", [(1, 512), (1, 2, dims.AUDIO_COND_DIM), (dims.AUDIO_COND_DIM,)])
def test_wrong_cond_shape(decoder: AudioDecoder, cfg: DecoderConfig, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput, match=r"expects \(B, 24\)"):
        decoder.decode(torch.zeros(shape), cfg.defaults, seed=0)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="audio decoder"):
        AudioDecoder.load(DecoderConfig(pipeline_dir=tmp_path / "nowhere"))
