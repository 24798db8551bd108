"""The encoder service's core: validate -> cache -> preprocess misses -> micro-batch -> cache.

Knows nothing of gRPC. Every input is checked before any work is queued, and decoding/preprocessing
happens per input in a worker thread before batching, so a corrupt file fails its own request with
`InvalidInput` and never poisons a batch shared with other requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence
from typing import NamedTuple, cast

import torch
from prometheus_client import Counter, Gauge, Histogram

from nextgpt.config import EncoderConfig
from nextgpt.encoders import imagebind as ib
from nextgpt.encoders.preprocess import PREPROCESS_VERSION, load_and_preprocess
from nextgpt.errors import InvalidInput, ModelNotReady
from nextgpt.media.budgets import MediaBudgets
from nextgpt.media.decode import check_media_item
from nextgpt.types import MediaItem
from services.common.batching import MicroBatcher
from services.encoder.cache import EmbeddingCache, cache_key, sha256_hex
from services.encoder.config import EncoderServiceSettings

logger = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("nextgpt_encoder_queue_depth", "Inputs waiting to join an ImageBind batch")
BATCH_SIZE = Histogram(
    "nextgpt_encoder_batch_size", "Inputs per ImageBind batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
)
STAGE_SECONDS = Histogram(
    "nextgpt_encoder_stage_seconds",
    "Seconds per stage: preprocess (decode + ImageBind preprocessing, per input), encode (per batch)",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INPUTS = Counter(
    "nextgpt_encoder_inputs_total", "Inputs received (cache hits included), by modality", ["modality"]
)

EncodeInput = MediaItem | str
"""A medium (bytes + MIME type) or a text for ImageBind's text tower."""


class EncodeResult(NamedTuple):
    embedding: torch.Tensor
    """(E,) float32: `ImageBindEncoder.encode_batch` output for this input."""
    cache_hit: bool
    sha256: str
    """Hex sha256 of the file's bytes, or of the text's UTF-8."""


def _modality(item: EncodeInput) -> str:
    return "text" if isinstance(item, str) else item.modality


def _payload(item: EncodeInput) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else item.data


class EncoderCore:
    """ImageBind behind an embedding cache and a micro-batcher keyed by modality."""

    def __init__(
        self,
        settings: EncoderServiceSettings,
        cache: EmbeddingCache,
        encoder: ib.ImageBindEncoder | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.encoder = encoder
        self.budgets = settings.media_budgets()
        self.batcher: MicroBatcher[torch.Tensor | str, torch.Tensor] = MicroBatcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_gauge=QUEUE_DEPTH,
            batch_histogram=BATCH_SIZE,
            max_queue=settings.max_queue,
            name="the encoder",
        )

    async def load(self, cfg: EncoderConfig) -> None:
        """Load the weights in a worker thread, so health keeps answering (NOT_SERVING) meanwhile."""
        self.encoder = await asyncio.to_thread(ib.ImageBindEncoder.load, cfg)

    async def close(self) -> None:
        await self.batcher.stop()
        await self.cache.close()

    @property
    def model_id(self) -> str:
        return self._require().cfg.model_id

    @property
    def preprocess_version(self) -> str:
        return PREPROCESS_VERSION

    def _require(self) -> ib.ImageBindEncoder:
        if self.encoder is None:
            raise ModelNotReady("the ImageBind weights are still loading; retry once health says SERVING")
        return self.encoder

    def check_inputs(self, inputs: Sequence[EncodeInput]) -> None:
        """Cheap checks of every input (count, emptiness, size, MIME type) before any work starts."""
        limit = self.settings.max_inputs
        if not inputs:
            raise InvalidInput("no inputs: send at least one image, audio, video or text")
        if len(inputs) > limit:
            raise InvalidInput(
                f"{len(inputs)} inputs in one request, over the limit of {limit} (max_inputs); "
                "split them over several requests"
            )
        for i, item in enumerate(inputs):
            if isinstance(item, MediaItem):
                limit_bytes = self.settings.max_media_bytes
                check_media_item(item.modality, item.data, item.mime_type, limit_bytes, f"inputs[{i}]")
                continue
            size = len(_payload(item))
            if size == 0:
                raise InvalidInput(f"inputs[{i}]: empty text (0 bytes); send a non-empty text")
            if size > self.settings.max_media_bytes:
                raise InvalidInput(
                    f"inputs[{i}]: the text is {size} bytes, over the limit of "
                    f"{self.settings.max_media_bytes} bytes (max_media_bytes); send a smaller text"
                )

    async def encode(self, inputs: Sequence[EncodeInput]) -> list[EncodeResult]:
        """One embedding per input, in order. Raises InvalidInput naming the first bad input."""
        encoder = self._require()
        # 1. validate cheaply, then hash the contents (a 32 MiB hash is worth a thread)
        self.check_inputs(inputs)
        shas = await asyncio.to_thread(lambda: [sha256_hex(_payload(x)) for x in inputs])
        keys = [
            cache_key(encoder.cfg.model_id, PREPROCESS_VERSION, _modality(x), sha)
            for x, sha in zip(inputs, shas, strict=True)
        ]
        for item in inputs:
            INPUTS.labels(_modality(item)).inc()
        # 2. cache first: a hit means these exact bytes already decoded and preprocessed fine
        found = await self.cache.get_many(keys)
        misses = [i for i, v in enumerate(found) if v is None]
        # 3. decode + preprocess each miss in a worker thread; a corrupt input fails here, alone
        prepared = await self._preprocess(inputs, misses)
        # 4. concurrent requests share one `encode_batch` per modality
        fresh = await asyncio.gather(
            *(self.batcher.submit(_modality(inputs[i]), x) for i, x in zip(misses, prepared, strict=True))
        )
        await self.cache.set_many({keys[i]: e for i, e in zip(misses, fresh, strict=True)})
        for i, embedding in zip(misses, fresh, strict=True):
            found[i] = embedding
        missed = set(misses)
        return [EncodeResult(cast(torch.Tensor, e), i not in missed, shas[i]) for i, e in enumerate(found)]

    async def _preprocess(
        self, inputs: Sequence[EncodeInput], indices: list[int]
    ) -> list[torch.Tensor | str]:
        results = await asyncio.gather(
            *(asyncio.to_thread(_preprocess_one, inputs[i], self.budgets) for i in indices),
            return_exceptions=True,
        )
        prepared: list[torch.Tensor | str] = []
        for i, result in zip(indices, results, strict=True):  # report the first bad input, by index
            if isinstance(result, InvalidInput):
                raise InvalidInput(f"inputs[{i}]: {result}") from result
            if isinstance(result, BaseException):
                raise result
            prepared.append(result)
        return prepared

    def _run_batch(self, modality: Hashable, items: list[torch.Tensor | str]) -> list[torch.Tensor]:
        """Runs in the batcher's worker thread: one ImageBind forward for the whole batch."""
        started = time.perf_counter()
        # The batcher groups by `_modality(...)`; `encode_batch` checks the name against its modalities.
        out = self._require().encode_batch(cast(ib.EncoderModality, modality), items)  # (B, E)
        STAGE_SECONDS.labels("encode").observe(time.perf_counter() - started)
        logger.debug("encoded a batch of %d %s inputs", len(items), modality)
        return list(out)


def _preprocess_one(item: EncodeInput, budgets: MediaBudgets) -> torch.Tensor | str:
    """Decode within `budgets` (a video decodes only its sampled frames) and preprocess."""
    if isinstance(item, str):
        return item  # tokenised inside encode_batch
    started = time.perf_counter()
    tensor = load_and_preprocess(item, budgets)
    STAGE_SECONDS.labels("preprocess").observe(time.perf_counter() - started)
    return tensor
