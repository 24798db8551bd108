"""The few lines every diffusion decoder shares: load a pipeline onto its placement, make it batch well,
seed a generator, check a conditioning tensor. Everything model-specific stays in `image.py`,
`video.py`, `audio.py`."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np
import torch

# From its module, not `diffusers`: the package's TYPE_CHECKING branch types the lazy names as dummies.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from torch import nn

from nextgpt.config import DecodeDefaults, DecoderConfig, Placement
from nextgpt.decoders.invariance import make_batch_invariant, share_guidance_halves
from nextgpt.errors import InvalidInput, ModelNotReady
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=DiffusionPipeline)

TEXT_COMPONENTS = ("text_encoder", "tokenizer")
"""What a text-only decoder loads (`PipelineDecoder.load(text_only=True)`): all that the stage-2 targets
need."""

StopCheck = Callable[[], bool]
"""Polled between denoising steps; True once nobody wants the result (every request cancelled)."""


class Stopped(Exception):
    """A diffusion ended between two steps because its `should_stop()` turned true."""


def stop_on_step_end(should_stop: StopCheck | None) -> dict[str, Any]:
    """`callback_on_step_end` for pipelines that take it (Stable Diffusion): raises `Stopped`.

    Raising, not the pipeline's `_interrupt`: an interrupted SD call skips the remaining steps but still
    runs the VAE and returns a half-denoised image that nobody wants. The callback returns no tensors, so
    the latents (and so the result) are untouched while the call runs on."""
    if should_stop is None:
        return {}

    def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            raise Stopped(f"stopped after denoising step {step + 1}")
        return {}

    return {"callback_on_step_end": check}


def stop_on_step(should_stop: StopCheck | None) -> dict[str, Any]:
    """`callback` (every step) for the older pipelines without `callback_on_step_end` (TextToVideoSD,
    AudioLDM in diffusers 0.42): raises `Stopped`, as `stop_on_step_end` does."""
    if should_stop is None:
        return {}

    def check(step: int, timestep: Any, latents: torch.Tensor) -> None:
        if should_stop():
            raise Stopped(f"stopped after denoising step {step + 1}")

    return {"callback": check, "callback_steps": 1}


def load_pipeline(
    pipeline_cls: type[P], cfg: DecoderConfig, what: str, *, text_only: bool = False
) -> tuple[P, Placement]:
    """`from_pretrained` from a local directory onto `cfg.placement` (CPU/fp32 when CUDA is absent).

    With `text_only`, only the text encoder and its tokenizer are read (every other component is None):
    a training stage that only encodes captions does not hold a UNet and a VAE in memory (SD 1.5's
    take ~3.8 GB in fp32 beside its 0.5 GB text encoder), and a directory holding only those two (what
    `nextgpt.training.foundation` saves first, `save_text_pipeline`) loads too.

    With `cfg.offload` on CUDA, diffusers' model CPU offload keeps the weights in host memory and moves
    each sub-model to the GPU only while it runs; on CPU offloading means nothing and is skipped.

    Loading leaves the caller's CPU random stream as it was: some modules draw from it while they are
    built, before their weights are read (diffusers' `AttentionPooling`, in a UNet whose time embedding
    takes the caption), and a training stage that loads decoders for its targets after seeding would
    otherwise train differently whenever a decoder's architecture changes.
    """
    path = cfg.pipeline_dir
    if not (path / "model_index.json").is_file():
        raise ModelNotReady(
            f"{what} decoder: no diffusers pipeline at {path} (model_index.json missing); build the tiny "
            "ones with `nextgpt init-tiny` or put the real pipeline directory there"
        )
    placement = cfg.placement.resolve()
    if placement != cfg.placement:
        logger.warning("%s decoder: %s unavailable, running on cpu/float32", what, cfg.placement.device)
    skipped = {name: None for name in pipeline_components(path) if name not in TEXT_COMPONENTS}
    with torch.random.fork_rng(devices=[]):
        pipe = pipeline_cls.from_pretrained(
            path, dtype=placement.torch_dtype, **(skipped if text_only else {})
        )
    if cfg.offload and placement.device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("%s decoder: loaded %s from %s on %s", what, pipeline_cls.__name__, path, placement)
    return pipe, placement


def pipeline_components(path: Path) -> list[str]:
    """The component names of the diffusers directory `path` (its model_index.json's `[library, class]`
    entries, also those saved as `[null, null]`)."""
    index = cast(dict[str, Any], DiffusionPipeline.load_config(str(path)))  # a dict without return_ flags
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


def prepare_for_batching(pipe: DiffusionPipeline, shared: Sequence[str], what: str) -> None:
    """Make one pipeline call over B items cost less than B calls, and give each item the same bits
    whatever batch it is in (see `nextgpt.decoders.invariance`).

    - On the CPU, the denoiser, the VAE and the vocoder get batch-invariant linear / conv / norm layers.
    - The UNet modules named in `shared` (those before the first cross-attention or class embedding)
      run once for both classifier-free-guidance halves when the halves are equal.
    """
    if execution_device(pipe).type == "cpu":
        switched = 0
        for name in ("unet", "vae", "vocoder"):
            component = getattr(pipe, name, None)
            if isinstance(component, nn.Module):
                switched += make_batch_invariant(component)
        logger.debug("%s decoder: %d layers switched to batch-invariant kernels", what, switched)
    for name in shared:
        share_guidance_halves(pipe.unet.get_submodule(name))


def execution_device(pipe: DiffusionPipeline) -> torch.device:
    """Where the pipeline computes: the GPU even while offloaded weights rest on the CPU."""
    device: torch.device = getattr(pipe, "_execution_device")  # noqa: B009 (private, but stable)
    return device


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """Seeded generator on the compute device; `seed=None` draws a fresh random seed."""
    generator = torch.Generator(device)
    if seed is None:
        seed = generator.seed()
        logger.debug("drew random diffusion seed %d", seed)
    else:
        generator.manual_seed(seed)
    return generator


def item_seeds(batch: int, seed: int | None, seeds: Sequence[int | None] | None) -> list[int | None]:
    """One seed per batch item: `seeds` as given (one per row), else `seed`, `seed + 1`, ... (all None
    when `seed` is None). Row 0 of `seed=s` uses s itself, so a lone item decodes as it always did."""
    if seeds is not None:
        if seed is not None:
            raise InvalidInput("pass either seed= (one for the batch) or seeds= (one per item), not both")
        seeds = list(seeds)
        if len(seeds) != batch:
            raise InvalidInput(f"seeds has {len(seeds)} entries for a batch of {batch}; give one per item")
        return seeds
    if seed is None:
        return [None] * batch
    per_item: list[int | None] = [seed]
    return per_item + [(seed + i) % 2**64 for i in range(1, batch)]


def make_generators(device: torch.device, seeds: Sequence[int | None]) -> list[torch.Generator]:
    """One generator per batch item: diffusers' `randn_tensor` draws item i's noise from generator i alone,
    so an item's noise (and so its output) does not depend on the rest of the batch."""
    return [make_generator(device, s) for s in seeds]


def check_cond(cond: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """Raise `InvalidInput` unless `cond` is (B, *expected) with B >= 1 and finite values."""
    if not isinstance(cond, torch.Tensor):
        raise InvalidInput(f"{what} decoder: conditioning must be a torch.Tensor, got {type(cond).__name__}")
    if cond.ndim != len(expected) + 1 or tuple(cond.shape[1:]) != expected or cond.shape[0] < 1:
        raise InvalidInput(
            f"{what} decoder: conditioning shape {tuple(cond.shape)} does not fit this pipeline, which "
            f"expects (B, {', '.join(map(str, expected))}); check that the output projector's out_dim and "
            "num_queries match the decoder's text encoder (e.g. SD 1.5 is 77x768, Zeroscope 77x1024)"
        )
    if not torch.isfinite(cond).all():
        raise InvalidInput(f"{what} decoder: conditioning contains NaN or Inf values")


class PipelineDecoder(ABC, Generic[P]):
    """What the three decoders share: their pipeline on its placement, prepared for batching, one call at a
    time, the empty caption's conditioning (the negative of classifier-free guidance) and the stage-2
    targets. A decoder names its pipeline class, medium and guidance-shared modules, and supplies
    `_encode` (captions -> its text conditioning), `diffuse` and `to_media`."""

    PIPELINE: ClassVar[type[DiffusionPipeline]]
    MODALITY: ClassVar[str]
    GUIDANCE_SHARED: ClassVar[tuple[str, ...]]
    """UNet modules whose two guidance halves carry equal values, computed once per batch instead of twice
    (`invariance.share_guidance_halves`)."""

    def __init__(self, pipe: P, cfg: DecoderConfig, placement: Placement) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.placement = placement
        # Pipelines are not reentrant (the scheduler keeps per-call timesteps): one decode at a time.
        self._lock = threading.Lock()
        self.text_only = getattr(pipe, "unet", None) is None
        """Loaded with `load(text_only=True)`: `encode_text` works, `decode` does not."""
        if not self.text_only:
            prepare_for_batching(pipe, self.GUIDANCE_SHARED, self.MODALITY)
        self.negative_embeds = self._encode([""])  # (1, ...) on the compute device

    @classmethod
    def load(cls, cfg: DecoderConfig, *, text_only: bool = False) -> Self:
        """The decoder of `cfg.pipeline_dir`; with `text_only`, its text encoder alone (`load_pipeline`),
        for computing stage-2 targets."""
        pipe, placement = load_pipeline(cls.PIPELINE, cfg, cls.MODALITY, text_only=text_only)
        return cls(pipe, cfg, placement)  # type: ignore[arg-type]

    @property
    def defaults(self) -> DecodeDefaults:
        return self.cfg.defaults

    @abstractmethod
    def _encode(self, captions: list[str]) -> torch.Tensor:
        """Captions -> this decoder's text conditioning on the compute device, as its pipeline makes it."""

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """The text conditioning of `captions` as the pipeline computes it from a prompt: the stage-2
        targets of this medium's output projector, float32 on the CPU, ready to cache."""
        if not captions:
            raise InvalidInput("encode_text needs at least one caption")
        with self._lock:
            return self._encode(list(captions)).float().cpu()

    def decode(
        self,
        cond: torch.Tensor,
        options: DecodeDefaults,
        seed: int | None = None,
        progress: bool = False,
        *,
        seeds: Sequence[int | None] | None = None,
    ) -> list[MediaItem]:
        """One medium per row of `cond`, in a single pipeline call.

        Each row gets its own generator (`seeds[i]`, or `seed + i` from a single `seed`), so a row's
        medium depends only on its conditioning, its seed and the options, not on the rest of the batch:
        on the CPU the kernels are batch-invariant (`nextgpt.decoders.invariance`), so the file is the same
        bytes in any batch (`tests/nextgpt/decoders/test_batch_invariance.py`).
        """
        if self.text_only:
            raise ModelNotReady(
                f"{self.MODALITY} decoder: loaded text-only from {self.cfg.pipeline_dir}; load it without "
                "text_only to decode"
            )
        return self.to_media(self.diffuse(cond, options, seed, progress, seeds=seeds), options)

    @abstractmethod
    def diffuse(
        self,
        cond: torch.Tensor,
        options: DecodeDefaults,
        seed: int | None = None,
        progress: bool = False,
        *,
        seeds: Sequence[int | None] | None = None,
        should_stop: StopCheck | None = None,
    ) -> np.ndarray:
        """The pipeline call of `decode`: float outputs, one per row of `cond`, not yet encoded."""

    @abstractmethod
    def to_media(self, outputs: np.ndarray, options: DecodeDefaults) -> list[MediaItem]:
        """`diffuse`'s outputs -> one encoded file per row."""
