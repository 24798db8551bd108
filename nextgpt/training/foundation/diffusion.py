"""What the foundation trainers' denoisers share: the epsilon-prediction loss of one batch under a
scheduler's noise schedule, with classifier-free-guidance dropout and min-SNR weighting. The image
(UNet2D, cross-attention on CLIP states) and audio (UNet2D, class labels from CLAP) trainers call it with
their own `denoise`; so will the video trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nextgpt.training.foundation.loop import LoopConfig, LoopResult, train

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t, t, cond) -> predicted noise: how a trainer calls its UNet."""


class DenoiserSettings(Protocol):
    """The UNet fields every trainer's config has (`ImageTrainConfig`, `AudioTrainConfig`)."""

    unet_steps: int
    unet_lr: float
    unet_batch: int
    uncond_prob: float
    snr_gamma: float | None
    seed: int
    progress: bool


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
    alphas_cumprod: torch.Tensor,
    gen: torch.Generator,
    *,
    batch: int,
    uncond_prob: float,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Mean epsilon MSE over `batch` latents drawn from `latents` (N, C, ...), each noised to a random
    timestep and conditioned on a random phrasing of its caption: `cond_bank[cond_of[i], k]` (`cond_bank`
    is (captions, phrasings, ...)), replaced by `empty` for a share `uncond_prob` (guidance dropout).
    `denoise(x_t, t, cond)` returns the predicted noise. With `snr_gamma`, min-SNR weighting (Hang et al.
    2023): each example's loss times min(SNR, gamma) / SNR."""
    pick = torch.randint(len(latents), (batch,), generator=gen)
    x0 = latents[pick]
    t = torch.randint(len(alphas_cumprod), (batch,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ab = alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    phrasing = torch.randint(cond_bank.shape[1], (batch,), generator=gen)
    cond = cond_bank[cond_of[pick], phrasing]
    drop = torch.rand(batch, generator=gen) < uncond_prob
    cond = torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), empty, cond)
    mse = (denoise(xt, t, cond) - noise).pow(2).flatten(1).mean(dim=1)  # (B,)
    if snr_gamma is not None:
        snr = (ab / (1 - ab)).flatten()
        mse = mse * snr.clamp(max=snr_gamma) / snr
    return mse.mean()


def train_denoiser(
    unet: nn.Module,
    denoise: Denoise,
    latents: torch.Tensor,
    cond_of: torch.Tensor,
    cond_bank: torch.Tensor,
    empty: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    cfg: DenoiserSettings,
    *,
    name: str,
    state_dir: Path,
) -> LoopResult:
    """`cfg.unet_steps` steps of `denoising_loss` on the shared loop (50 warm-up steps, resumable)."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        return denoising_loss(
            denoise,
            latents,
            cond_of,
            cond_bank,
            empty,
            alphas_cumprod,
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
    return train(unet, loss_fn, loop, name=name, state_dir=state_dir, progress=cfg.progress)
