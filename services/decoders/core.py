"""One modality's decoding core: output projector + diffusion decoder behind a micro-batcher.

Concurrent requests whose *resolved* settings are equal share one projector call and one pipeline call;
every item keeps its own seed (one generator per batch row), so a request's medium does not depend on
which other requests share its batch. Knows nothing of gRPC.

A batch whose requests have all been cancelled stops at its next denoising step (the batcher's
`should_stop`, see `services/common/batching.py`); one with any request still waiting runs on unchanged.
The queue is bounded by `max_queue`: past it, requests are refused with `Overloaded` and a retry hint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from prometheus_client import Counter, Gauge, Histogram

from nextgpt.checkpoint import load_delta
from nextgpt.config import MAX_STEPS, DecodeDefaults, DecodeOptions, ProfileConfig
from nextgpt.decoders._pipeline import Stopped
from nextgpt.decoders.invariance import project_spans
from nextgpt.errors import CheckpointError, ConfigError, InvalidInput, ModelNotReady
from nextgpt.modalities import OUTPUTS
from nextgpt.projectors.loading import load_output_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.types import MODALITIES, MediaItem, Modality
from services.common.batching import MicroBatcher
from services.decoders.config import DEFAULT_MAX_QUEUE, FALLBACK_BATCHING, default_batching
from services.decoders.limits import check_settings, decoder_max_steps

if TYPE_CHECKING:
    from nextgpt.modalities import Decoder

logger = logging.getLogger(__name__)


QUEUE_DEPTH = Gauge("nextgpt_decoder_queue_depth", "Decode requests waiting for a batch", ["modality"])
BATCH_SIZE = Histogram(
    "nextgpt_decoder_batch_size",
    "Requests decoded together in one projector + pipeline call",
    ["modality"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
STAGE_SECONDS = Histogram(
    "nextgpt_decoder_stage_seconds",
    "Seconds per batch and stage: project (output projector), diffuse (pipeline), encode (PNG/MP4/WAV)",
    ["modality", "stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MEDIA_TOTAL = Counter("nextgpt_decoder_media", "Media items produced", ["modality"])
STAGES = ("project", "diffuse", "encode")


@dataclass
class _Item:
    hidden: torch.Tensor  # (N, H)
    token_embeds: torch.Tensor  # (N, H)
    seed: int | None
    settings: DecodeDefaults


class DecoderCore:
    """`await core.decode(hidden, token_embeds, options, seed)` -> (medium, batch size) for one modality."""

    def __init__(
        self,
        modality: str,
        *,
        max_batch: int | None = None,
        max_wait_s: float | None = None,
        max_queue: int | None = DEFAULT_MAX_QUEUE,
    ) -> None:
        """`max_batch` / `max_wait_s` left None follow the loaded profile (`config.BATCHING`); before a
        profile loads (or with components attached by hand) they are `config.FALLBACK_BATCHING`.
        `max_queue`: most requests waiting for a batch (None: unbounded)."""
        if modality not in MODALITIES:
            raise ConfigError(f"modality={modality!r}: use one of {MODALITIES}")
        self.modality: Modality = modality
        self.projector: OutputProjector | None = None
        self.decoder: Decoder | None = None
        self.max_steps = MAX_STEPS
        """Most steps this decoder's scheduler runs (set on `attach`; `MAX_STEPS` at most)."""
        self._limits = (max_batch, max_wait_s)
        fallback_batch, fallback_wait_ms = FALLBACK_BATCHING
        self.batcher: MicroBatcher[_Item, tuple[MediaItem, int]] = MicroBatcher(
            self._run_batch,
            max_batch=max_batch if max_batch is not None else fallback_batch,
            max_wait_s=max_wait_s if max_wait_s is not None else fallback_wait_ms / 1000.0,
            queue_gauge=QUEUE_DEPTH,
            batch_histogram=BATCH_SIZE,
            labels=(modality,),
            max_queue=max_queue,
            stoppable=True,
            name=f"the {modality} decoder",
        )
        # Touch every series so /metrics lists them from the start.
        for stage in STAGES:
            STAGE_SECONDS.labels(modality, stage)
        MEDIA_TOTAL.labels(modality)

    # -- loading -------------------------------------------------------------------------------------

    def load(self, profile: ProfileConfig) -> None:
        """Blocking: the projector from the profile's delta checkpoint, then the diffusion pipeline."""
        started = time.perf_counter()
        delta = load_delta(profile.delta_checkpoint) if profile.delta_checkpoint is not None else None
        projector = load_output_projector(profile, delta, self.modality)
        decoder = OUTPUTS[self.modality].decoder_class().load(profile.decoders[self.modality])
        self.attach(projector, decoder)
        max_batch, max_wait_ms = default_batching(profile.name, self.modality)
        if self._limits[0] is None:
            self.batcher.max_batch = max_batch
        if self._limits[1] is None:
            self.batcher.max_wait_s = max_wait_ms / 1000.0
        logger.info(
            "%s decoder batches up to %d requests, waiting up to %.0f ms",
            self.modality,
            self.batcher.max_batch,
            self.batcher.max_wait_s * 1000.0,
        )
        logger.info("%s decoder loaded in %.2fs", self.modality, time.perf_counter() - started)

    def attach(self, projector: OutputProjector, decoder: Decoder) -> None:
        """Use these components, after checking that the projector's output fits the decoder."""
        cfg = projector.cfg
        produced = (cfg.out_dim,) if cfg.normalize else (cfg.num_queries, cfg.out_dim)  # per span
        expected = tuple(decoder.cond_shape)
        if produced != expected and not (len(expected) == 1 and produced == (1, *expected)):
            raise CheckpointError(
                f"the {self.modality} output projector produces {' x '.join(map(str, produced))} but the "
                f"{self.modality} decoder conditions on {' x '.join(map(str, expected))} (SD 1.5 is "
                "77 x 768, Zeroscope 77 x 1024, AudioLDM 512); point the profile's decoder at the pipeline "
                f"the projector was trained for, or fix output_projectors.{self.modality}.out_dim"
            )
        self.projector, self.decoder = projector, decoder
        self.max_steps = decoder_max_steps(decoder)

    @property
    def ready(self) -> bool:
        return self.projector is not None and self.decoder is not None

    async def close(self) -> None:
        await self.batcher.stop()

    # -- requests ------------------------------------------------------------------------------------

    async def decode(
        self, hidden: torch.Tensor, token_embeds: torch.Tensor, options: DecodeOptions, seed: int | None
    ) -> tuple[MediaItem, int]:
        """Validate one span (N, H) twice, then join the batch of requests with the same settings."""
        if self.projector is None or self.decoder is None:
            raise ModelNotReady(f"the {self.modality} decoder is still loading; retry shortly")
        self.check_span(hidden, token_embeds)
        settings = self.resolve(options)
        key: Hashable = dataclasses.astuple(settings)
        return await self.batcher.submit(key, _Item(hidden.float(), token_embeds.float(), seed, settings))

    def check_span(self, hidden: torch.Tensor, token_embeds: torch.Tensor) -> None:
        """Raise InvalidInput naming the expected and the received shapes."""
        assert self.projector is not None
        n, width = self.projector.cfg.num_signal_tokens, self.projector.cfg.in_dim
        for name, t in (("hidden", hidden), ("token_embeds", token_embeds)):
            if tuple(t.shape) != (n, width):
                raise InvalidInput(
                    f"{name} must have shape [{n}, {width}] ({n} {self.modality} signal tokens x LLM width "
                    f"{width}), got {list(t.shape)}; send one complete {self.modality} span per request"
                )
            # A NaN would fail every request of the batch it joined: refuse it here, alone.
            if not torch.isfinite(t).all():
                raise InvalidInput(f"{name} contains NaN or Inf values")

    def resolve(self, options: DecodeOptions) -> DecodeDefaults:
        """Request options over the decoder's defaults, checked before the request joins a batch."""
        assert self.decoder is not None
        try:
            settings = options.resolve(self.decoder.defaults)
        except ConfigError as exc:
            raise InvalidInput(f"{self.modality} options: {exc}") from exc
        check_settings(self.modality, settings, self.max_steps)
        kind = OUTPUTS[self.modality]
        if kind.frames and (settings.num_frames < 1 or settings.fps < 1):
            raise InvalidInput(
                f"{self.modality} options: num_frames={settings.num_frames} and fps={settings.fps} "
                "must be >= 1"
            )
        if kind.seconds and settings.audio_seconds <= 0:
            raise InvalidInput(
                f"{self.modality} options: audio_seconds={settings.audio_seconds} must be positive"
            )
        return settings

    @torch.inference_mode()
    def _run_batch(
        self, key: Hashable, items: list[_Item], should_stop: Callable[[], bool]
    ) -> list[tuple[MediaItem, int]]:
        """Worker thread: one projector call and one pipeline call for every item (equal settings).

        Raises `Stopped` as soon as `should_stop()` (nobody waits any more) between stages and between
        denoising steps; while it is False nothing differs from a run without it."""
        assert self.projector is not None and self.decoder is not None
        settings, batch = items[0].settings, len(items)
        try:
            return self._decode_batch(items, settings, should_stop)
        except Stopped as exc:
            logger.info("%s batch of %d: every request was cancelled, %s", self.modality, batch, exc)
            raise

    def _decode_batch(
        self, items: list[_Item], settings: DecodeDefaults, should_stop: Callable[[], bool]
    ) -> list[tuple[MediaItem, int]]:
        assert self.projector is not None and self.decoder is not None
        batch = len(items)
        # 1. Project the spans, as `NextGPT.project_spans` does.
        _check_stop(should_stop, "before projecting")
        started = time.perf_counter()
        param = next(self.projector.parameters())
        hidden = torch.stack([i.hidden for i in items]).to(param.device, param.dtype)  # (B, N, H)
        embeds = torch.stack([i.token_embeds for i in items]).to(param.device, param.dtype)  # (B, N, H)
        cond = project_spans(self.projector, hidden, embeds)  # (B, Q, D) or (B, D), batch-invariant
        # 2. Diffuse, one generator per item.
        projected = time.perf_counter()
        _check_stop(should_stop, "before diffusing")
        outputs = self.decoder.diffuse(cond, settings, seeds=[i.seed for i in items], should_stop=should_stop)
        # 3. Encode PNG / MP4 / WAV.
        _check_stop(should_stop, "before encoding")
        diffused = time.perf_counter()
        media = self.decoder.to_media(outputs, settings)
        done = time.perf_counter()
        for stage, seconds in zip(
            STAGES, (projected - started, diffused - projected, done - diffused), strict=True
        ):
            STAGE_SECONDS.labels(self.modality, stage).observe(seconds)
        MEDIA_TOTAL.labels(self.modality).inc(batch)
        logger.info("%s batch of %d decoded in %.3fs", self.modality, batch, done - started)
        return [(item, batch) for item in media]


def _check_stop(should_stop: Callable[[], bool], where: str) -> None:
    if should_stop():
        raise Stopped(f"stopped {where}")
