"""What the three diffusion-pipeline trainers (`image.py`, `video.py`, `audio.py`) share: the KL VAE, one
part's run of the shared loop and its summary, the latent bank, the UNet's epsilon-prediction training
under a scheduler's noise schedule (with classifier-free-guidance dropout and min-SNR weighting), saving
the real diffusers pipeline, and the report's timings. Each trainer keeps what differs: its data, its
conditioning and its evaluation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from torch import nn
from torch.nn import functional as F

from nextgpt.training.foundation.loop import LoopConfig, LoopResult, train
from nextgpt.training.losses import denoise_target

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t, t, cond) -> the noise or velocity its scheduler asks for: how a trainer calls its UNet."""
LossFn = Callable[[int, torch.Generator], torch.Tensor]
"""The loop's `loss_fn(step, generator)`."""
UNet = TypeVar("UNet", bound=nn.Module)


class RunSettings(Protocol):
    """What every part's run reads from its trainer's config."""

    seed: int
    progress: bool


class DenoiserSettings(RunSettings, Protocol):
    """The UNet fields every trainer's config has (`ImageTrainConfig`, `VideoTrainConfig`,
    `AudioTrainConfig`)."""

    unet_steps: int
    unet_lr: float
    unet_batch: int
    uncond_prob: float
    snr_gamma: float | None


Settings = TypeVar("Settings", bound=DenoiserSettings)


@dataclass
class PartResult:
    """One trained part's loss at the start and at the end of its run (`LoopResult.first`, `.last`)."""

    first: float
    last: float
    steps: int
    seconds: float

    @classmethod
    def of(cls, result: LoopResult) -> PartResult:
        return cls(result.first, result.last, len(result.losses), result.seconds)


def fit_part(
    module: nn.Module, loss_fn: LossFn, cfg: RunSettings, *, steps: int, lr: float, name: str, state_dir: Path
) -> PartResult:
    """`steps` steps of the shared loop (20 warm-up steps, resumable from `state_dir`), then the module
    frozen: every part but the UNet is trained once and then only read (by the next part, or saved)."""
    loop = LoopConfig(steps=steps, lr=lr, warmup_steps=min(20, steps), seed=cfg.seed)
    result = train(module, loss_fn, loop, name=name, state_dir=state_dir, progress=cfg.progress)
    module.requires_grad_(False)
    return PartResult.of(result)


# ---------------------------------------------------------------------------------------------------------
# The VAE and the latent bank


def kl_vae(
    channels: tuple[int, ...], latent_channels: int, sample_size: int, in_channels: int = 3
) -> AutoencoderKL:
    """The small `AutoencoderKL` every pipeline uses: one ResNet layer per block, len(channels) - 1
    downsamplings, `in_channels` in and out (3 for pictures, 1 for a log-mel)."""
    n = len(channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=sample_size,
    )


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float,
    foreground: torch.Tensor | None = None,
    foreground_weight: float = 0.0,
) -> torch.Tensor:
    """Reconstruction (MSE + L1) of `x` from the posterior's mean, plus `kl_weight` x the KL. The mean, not
    a sample: at init the posterior's std is ~1, and a decoder that must see through that noise stays
    blurred for the few hundred steps we can afford. The UNet trains on means too.

    With a `foreground` mask (B, 1, H, W) its pixels weigh 1 + `foreground_weight` in the reconstruction
    (normalised by the mean weight): a shape that covers a small share of the picture is otherwise
    reconstructed in the background's colours or as a blob (the image and video VAEs)."""
    posterior = vae.encode(x).latent_dist  # (B, C, h, w)
    recon = vae.decode(posterior.mean).sample
    if foreground is None:
        reconstruction = F.mse_loss(recon, x) + F.l1_loss(recon, x)
    else:
        weight = 1 + foreground_weight * foreground.float()
        error = (recon - x).pow(2) + (recon - x).abs()  # MSE + L1, per pixel
        reconstruction = (weight * error).mean() / weight.mean()
    return reconstruction + kl_weight * posterior.kl().mean()


@torch.no_grad()
def latent_bank(
    encode: Callable[[list[int]], torch.Tensor], kinds: int, size: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`size` examples, every kind (combination, sound) in turn, encoded `chunk` at a time by
    `encode(kind indices) -> latent means`: the unscaled latents, their kinds (size,), and the scaling
    factor that gives the latents unit variance (SD's 0.18215). The UNet's steps draw from it."""
    which = torch.arange(size) % kinds
    bank = torch.cat([encode(part.tolist()) for part in which.split(chunk)])
    return bank, which, float(1.0 / bank.std())


# ---------------------------------------------------------------------------------------------------------
# The UNet


def alphas_cumprod(scheduler: Any) -> torch.Tensor:
    """(T,) float32: the scheduler's cumulative signal share per timestep."""
    values: torch.Tensor = scheduler.alphas_cumprod  # set in the schedulers' __init__
    return values.float()


def denoising_loss(
    denoise: Denoise,
    latents: torch.Tensor,
    cond_of: torch.Tensor,
    cond_bank: torch.Tensor,
    empty: torch.Tensor,
    scheduler: Any,
    gen: torch.Generator,
    *,
    batch: int,
    uncond_prob: float,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Mean MSE of the prediction that `scheduler`'s `prediction_type` asks for (`losses.denoise_target`)
    over `batch` latents drawn from `latents` (N, C, ...), each noised to a random timestep and
    conditioned on a random phrasing of its caption: `cond_bank[cond_of[i], k]` (`cond_bank` is
    (captions, phrasings, ...)), replaced by `empty` for a share `uncond_prob` (guidance dropout).
    `denoise(x_t, t, cond)` returns the predicted noise (epsilon) or velocity (v_prediction). With
    `snr_gamma`, min-SNR weighting (Hang et al. 2023): each example's loss times min(SNR, gamma) / SNR
    (epsilon), min(SNR + 1, gamma) / (SNR + 1) (v)."""
    alphas = alphas_cumprod(scheduler)
    pick = torch.randint(len(latents), (batch,), generator=gen)
    x0 = latents[pick]
    t = torch.randint(len(alphas), (batch,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ab = alphas[t].view(-1, *[1] * (x0.dim() - 1))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    phrasing = torch.randint(cond_bank.shape[1], (batch,), generator=gen)
    cond = cond_bank[cond_of[pick], phrasing]
    drop = torch.rand(batch, generator=gen) < uncond_prob
    cond = torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), empty, cond)
    target = denoise_target(scheduler, x0, noise, t)
    mse = (denoise(xt, t, cond) - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if snr_gamma is not None:
        snr = (ab / (1 - ab)).flatten()
        # Both losses weight the x0 error by an SNR: epsilon's by snr, v's by snr + 1; min-SNR caps that
        # weight at gamma. For v it caps snr + 1, so that pure noise (snr = 0) keeps its full weight.
        if scheduler.config.prediction_type == "v_prediction":
            weight = (snr_gamma / (snr + 1)).clamp(max=1)
        else:
            weight = snr.clamp(max=snr_gamma) / snr
        mse = mse * weight
    return mse.mean()


ZERO_TERMINAL_SNR = {
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "prediction_type": "v_prediction",
}
"""Scheduler settings of Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"),
all fields of diffusers' saved scheduler config: the betas rescaled so that the last timestep is pure
noise, sampling that starts there, and v-prediction (epsilon is undefined at zero SNR). Under SD's own
schedule the last timestep keeps 7% of the clean latents, so in training the UNet reads a clip's layout
from that leak instead of from its caption, and at sampling, from pure noise, the layout is the seed's."""


def cross_attention(unet: nn.Module) -> Denoise:
    """A UNet that cross-attends to its conditioning (the image and video UNets' CLIP states)."""
    return lambda xt, t, cond: unet(xt, t, cond).sample


def train_unet(
    build: Callable[[Settings], UNet],
    cfg: Settings,
    latents: torch.Tensor,
    cond_of: torch.Tensor,
    cond_bank: torch.Tensor,
    empty: torch.Tensor,
    scheduler: Any,
    *,
    name: str,
    state_dir: Path,
    denoise: Callable[[UNet], Denoise] = cross_attention,
) -> tuple[UNet, PartResult]:
    """`build(cfg)` under seed + 2 (the VAE is built under `seed`, the text encoder under seed + 1), then
    `cfg.unet_steps` steps of `denoising_loss` under `scheduler`'s noise schedule on the shared loop (50
    warm-up steps, resumable), the UNet called as `denoise(unet)` says. `latents` are scaled; `cond_bank`
    is (kinds, phrasings, ...) and `empty` the empty caption's conditioning."""
    torch.manual_seed(cfg.seed + 2)
    unet = build(cfg)
    call = denoise(unet)

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        return denoising_loss(
            call,
            latents,
            cond_of,
            cond_bank,
            empty,
            scheduler,
            gen,
            batch=cfg.unet_batch,
            uncond_prob=cfg.uncond_prob,
            snr_gamma=cfg.snr_gamma,
        )

    loop = LoopConfig(
        steps=cfg.unet_steps,
        lr=cfg.unet_lr,
        warmup_steps=min(50, cfg.unet_steps),
        seed=cfg.seed,
        ema_decay=getattr(cfg, "ema_decay", None),  # settings without the field train without EMA
    )
    result = train(unet, loss_fn, loop, name=name, state_dir=state_dir, progress=cfg.progress)
    return unet, PartResult.of(result)


# ---------------------------------------------------------------------------------------------------------
# The pipeline


def save_pipeline(
    pipeline: Callable[..., DiffusionPipeline],
    out: Path,
    vae: AutoencoderKL,
    text_encoder: nn.Module,
    tokenizer: Any,
    unet: nn.Module,
    scheduler: Any,
    **extra: Any,
) -> Path:
    """The trained components wired into the real diffusers `pipeline` class (with `extra`, its other
    arguments) and saved in diffusers' layout (safetensors), so that the served decoder loads it as it
    loads the real weights."""
    pipe = pipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, **extra
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


TEXT_PIPELINE = "text-pipeline"
"""Under a part's output folder: its text encoder and tokenizer alone, saved as soon as they are trained."""


def save_text_pipeline(
    pipeline: Callable[..., DiffusionPipeline],
    out: Path,
    text_encoder: nn.Module,
    tokenizer: Any,
    **extra: Any,
) -> Path:
    """The text encoder and tokenizer alone in `pipeline`'s diffusers layout (every other component
    saved as null; `extra` gives the pipeline's other arguments). `make train-world` trains the LLM's
    stages against it while the VAE and the UNet still train: stage 2's targets need only the text
    encoder, and the served decoders read such a folder with `load(text_only=True)`."""
    with diffusers_quiet():  # "self.unet=None ... cannot be saved", once per missing component
        pipe = pipeline(
            vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=None, scheduler=None, **extra
        )
        pipe.save_pretrained(out, safe_serialization=True)
    return out


@contextmanager
def diffusers_quiet() -> Iterator[None]:
    """diffusers' logging at error level for the duration (its warnings about components left out)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def run_times(t0: float, cpu0: float, train_seconds: float, train_cpu: float) -> dict[str, Any]:
    """The report's timings of a run that started at `time.perf_counter()` `t0` and `time.process_time()`
    `cpu0`: wall and CPU seconds of the training and of the whole run, and the load average. The CPU time
    of this process is the wall time on an idle machine at one thread, whatever the load."""
    return {
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
        "train_cpu_seconds": train_cpu,
        "total_cpu_seconds": time.process_time() - cpu0,
        "load_average": os.getloadavg(),
    }
