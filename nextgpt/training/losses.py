"""The three training losses of design 2.

- `caption_ce`: next-token cross-entropy over the positions whose label is not -100 (the assistant's
  reply: prompt, media and padding positions never count).
- `alignment_distance`: per-token Euclidean distance (L2, *not* squared) between the output projector's
  output and the decoder's own text-encoder embedding of the caption, averaged over tokens.
- `Denoiser.loss`: the optional denoising loss through the frozen UNet, with the regression target the
  scheduler's `prediction_type` asks for (epsilon -> the noise, v_prediction -> the velocity,
  sample -> the clean latents); getting this wrong silently trains towards the wrong target.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor

from nextgpt.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def caption_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """(B, T, V) logits, (B, T) labels -> mean CE of predicting token t+1 from position t.

    Zero (with a graph) when the batch has no labelled token, so a text-free batch never gives NaN."""
    shifted = labels[:, 1:]  # (B, T-1)
    if not bool((shifted != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX)


def alignment_distance(pred: Tensor, target: Tensor, *, reduce: bool = True) -> Tensor:
    """L2 distance per output token: (S, Q, D) or (S, D) twice -> mean (or the (S, Q) / (S,) distances)."""
    if pred.shape != target.shape:
        raise ConfigError(
            f"alignment target shape {list(target.shape)} != projector output {list(pred.shape)}: the "
            "caption targets were made by another decoder's text encoder (e.g. 768 vs 1024 wide); "
            "recompute them with `nextgpt precompute-targets` for this profile"
        )
    distances = torch.linalg.vector_norm(pred.float() - target.float(), dim=-1)
    return distances.mean() if reduce else distances


def denoise_target(scheduler: Any, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the UNet must predict for this scheduler's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ConfigError(
        f"scheduler prediction_type={kind!r} is not supported; use epsilon, v_prediction, sample"
    )


class Denoiser:
    """Frozen VAE + UNet of an image decoder and a DDPM training scheduler built from its config (so the
    noise schedule and `prediction_type` are the pipeline's own)."""

    def __init__(self, unet: Any, vae: Any, scheduler: Any) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.scheduler = scheduler

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Denoiser:
        return cls(pipe.unet, pipe.vae, DDPMScheduler.from_config(pipe.scheduler.config))

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/8, W/8) scaled latents (the posterior mean: deterministic)."""
        param = next(self.vae.parameters())
        latents = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def loss(self, cond: Tensor, latents: Tensor) -> Tensor:
        """MSE of the UNet's prediction at a random timestep, conditioned on `cond` (B, 77, D)."""
        param = next(self.unet.parameters())
        latents = latents.to(param.device, param.dtype)
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=cond.to(param.dtype)).sample
        target = denoise_target(self.scheduler, latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float())
