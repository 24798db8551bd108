"""One generator per batch item plus batch-invariant kernels (`nextgpt.decoders.invariance`): an item's
medium is the same bits alone or in a batch of any size, at any position.

Before the kernels were made batch-invariant, an item alone and the same item in a batch of 3 differed by
~1e-6 in the raw pipeline output (small-row gemms, oneDNN at batch 1, 1x1 / temporal convs switching
algorithm at batch 16, the VAE's channels-last group norms), which showed up as one 8-bit level in PNGs,
one 16-bit step in WAVs and whole macroblocks in MP4s. Now everything is compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextgpt.config import ProfileConfig
from nextgpt.decoders._pipeline import item_seeds
from nextgpt.decoders.audio import AudioDecoder
from nextgpt.decoders.image import ImageDecoder
from nextgpt.decoders.video import VideoDecoder
from nextgpt.errors import InvalidInput

CLASSES = {"image": ImageDecoder, "video": VideoDecoder, "audio": AudioDecoder}


@pytest.fixture(scope="module")
def decoders(tiny_profile: ProfileConfig) -> dict[str, ImageDecoder | VideoDecoder | AudioDecoder]:
    return {m: cls.load(tiny_profile.decoders[m]) for m, cls in CLASSES.items()}


def _cond(decoder: ImageDecoder | VideoDecoder | AudioDecoder, batch: int) -> torch.Tensor:
    return torch.randn(batch, *decoder.cond_shape, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("modality", list(CLASSES))
def test_item_alone_equals_item_in_a_batch(decoders, modality: str) -> None:
    decoder = decoders[modality]
    options = decoder.defaults
    cond = _cond(decoder, 3)
    batch = decoder.diffuse(cond, options, seeds=[100, 101, 102])
    alone = decoder.diffuse(cond[1:2], options, seeds=[101])
    assert np.array_equal(alone[0], batch[1])  # the raw floats, bit for bit
    batch_media = decoder.to_media(batch, options)
    [alone_media] = decoder.to_media(alone, options)
    assert alone_media.data == batch_media[1].data
    # The neighbours really are different media: the seeds matter per item.
    assert batch_media[0].data != batch_media[1].data


@pytest.mark.parametrize("modality", ["image", "video"])
def test_large_batches_too(decoders, modality: str) -> None:
    """Batch 9 crosses the sizes where kernels used to switch algorithm (2 x 9 guidance rows >= 16)."""
    decoder = decoders[modality]
    options = decoder.defaults
    cond = torch.randn(9, *decoder.cond_shape, generator=torch.Generator().manual_seed(3))
    batch = decoder.diffuse(cond, options, seeds=list(range(200, 209)))
    for i in (0, 8):
        assert np.array_equal(decoder.diffuse(cond[i : i + 1], options, seeds=[200 + i])[0], batch[i])


def test_single_seed_means_consecutive_seeds(decoders) -> None:
    decoder = decoders["image"]
    cond = _cond(decoder, 2)
    together = decoder.decode(cond, decoder.defaults, seed=7)
    second = decoder.decode(cond[1:], decoder.defaults, seed=8)
    assert together[1].data == second[0].data
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
