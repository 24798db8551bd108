"""One generator per batch item: an item's medium does not depend on the rest of its batch.

Measured on the tiny pipelines (CPU, fp32, 1 thread): the raw pipeline output of an item decoded alone
and the same item in a batch of 3 differ by ~1e-6 (batched kernels sum in another order). Over 8 seeds:
PNGs were bytes-identical 5 times, else off by one 8-bit level in a few pixels; WAVs always differed by
one 16-bit step in a few samples; MP4s were bytes-identical 6 times, but H.264 can turn a one-level
change into a different macroblock choice (max 15 levels seen in one pixel), so video is compared by
mean difference.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from nextgpt.config import ProfileConfig
from nextgpt.decoders._pipeline import item_seeds
from nextgpt.decoders.audio import AudioDecoder
from nextgpt.decoders.image import ImageDecoder
from nextgpt.decoders.video import VideoDecoder
from nextgpt.errors import InvalidInput
from nextgpt.types import MediaItem

CLASSES = {"image": ImageDecoder, "video": VideoDecoder, "audio": AudioDecoder}


@pytest.fixture(scope="module")
def decoders(tiny_profile: ProfileConfig) -> dict[str, ImageDecoder | VideoDecoder | AudioDecoder]:
    return {m: cls.load(tiny_profile.decoders[m]) for m, cls in CLASSES.items()}


def _cond(decoder: ImageDecoder | VideoDecoder | AudioDecoder, batch: int) -> torch.Tensor:
    return torch.randn(batch, *decoder.cond_shape, generator=torch.Generator().manual_seed(11))


def _pixels(item: MediaItem) -> np.ndarray:
    """The medium as an integer array: RGB pixels, decoded video frames or 16-bit samples."""
    if item.modality == "image":
        return np.asarray(Image.open(io.BytesIO(item.data))).astype(np.int32)
    if item.modality == "video":
        with av.open(io.BytesIO(item.data)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(
                np.int32
            )
    samples, _ = sf.read(io.BytesIO(item.data), dtype="int16")
    return samples.astype(np.int32)


# Largest integer difference allowed between "alone" and "in a batch" (see the module docstring); video
# is judged by its mean difference in 8-bit levels.
TOLERANCE = {"image": 1, "audio": 1}
VIDEO_MEAN_TOLERANCE = 0.5


@pytest.mark.parametrize("modality", list(CLASSES))
def test_item_alone_equals_item_in_a_batch(decoders, modality: str) -> None:
    decoder = decoders[modality]
    options = decoder.defaults
    cond = _cond(decoder, 3)
    batch = decoder.diffuse(cond, options, seeds=[100, 101, 102])
    alone = decoder.diffuse(cond[1:2], options, seeds=[101])
    np.testing.assert_allclose(alone[0], batch[1], rtol=0, atol=1e-4)
    batch_media = decoder.to_media(batch, options)
    [alone_media] = decoder.to_media(alone, options)
    diff = np.abs(_pixels(alone_media) - _pixels(batch_media[1]))
    if modality == "video":
        assert diff.mean() <= VIDEO_MEAN_TOLERANCE, f"video: mean difference {diff.mean()}"
    else:
        assert diff.max() <= TOLERANCE[modality], f"{modality}: max difference {diff.max()}"
    # The neighbours really are different media: the seeds matter per item.
    assert batch_media[0].data != batch_media[1].data


def test_single_seed_means_consecutive_seeds(decoders) -> None:
    decoder = decoders["image"]
    cond = _cond(decoder, 2)
    together = decoder.decode(cond, decoder.defaults, seed=7)
    second = decoder.decode(cond[1:], decoder.defaults, seed=8)
    assert np.abs(_pixels(together[1]) - _pixels(second[0])).max() <= TOLERANCE["image"]
    # A lone item with seed=s decodes exactly as with seeds=[s].
    assert (
        decoder.decode(cond[:1], decoder.defaults, seed=7)[0].data
        == decoder.decode(cond[:1], decoder.defaults, seeds=[7])[0].data
    )


def test_item_seeds() -> None:
    assert item_seeds(3, None, None) == [None, None, None]
    assert item_seeds(3, 5, None) == [5, 6, 7]
    assert item_seeds(2, 2**64 - 1, None) == [2**64 - 1, 0]
    assert item_seeds(2, None, [1, None]) == [1, None]
    with pytest.raises(InvalidInput, match="2 entries for a batch of 3"):
        item_seeds(3, None, [1, 2])
    with pytest.raises(InvalidInput, match="not both"):
        item_seeds(1, 1, [1])


def test_seeds_length_is_checked_by_decode(decoders) -> None:
    decoder = decoders["audio"]
    with pytest.raises(InvalidInput, match="one per item"):
        decoder.decode(_cond(decoder, 2), decoder.defaults, seeds=[1])
