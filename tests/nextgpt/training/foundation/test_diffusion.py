"""The shared denoiser loss (`diffusion.denoising_loss`): it regresses what the saved scheduler samples
with (epsilon, or v under a zero-terminal-SNR schedule), and its min-SNR weights stay finite where the
schedule ends in pure noise."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from nextgpt.tiny.diffusion import sd_scheduler_kwargs
from nextgpt.training.foundation.diffusion import ZERO_TERMINAL_SNR, alphas_cumprod, denoising_loss

STEPS = 10
"""A short schedule, so that a batch surely holds its last (pure-noise) timestep."""


def scheduler(zero_snr: bool) -> DDIMScheduler:
    kwargs = {**sd_scheduler_kwargs(), "num_train_timesteps": STEPS}
    return DDIMScheduler(clip_sample=False, **kwargs, **(ZERO_TERMINAL_SNR if zero_snr else {}))


def oracle(x0: torch.Tensor, alphas: torch.Tensor, predicts: str):
    """A denoiser that knows the one clean latent, so it can answer exactly in either parametrisation."""

    def denoise(xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ab = alphas[t].view(-1, 1, 1, 1)
        noise = torch.where(ab < 1, (xt - ab.sqrt() * x0) / (1 - ab).sqrt(), torch.zeros_like(xt))
        return noise if predicts == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0

    return denoise


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("predicts", ["epsilon", "v_prediction"])
def test_the_loss_regresses_what_the_scheduler_samples_with(zero_snr: bool, predicts: str) -> None:
    sched = scheduler(zero_snr)
    alphas = alphas_cumprod(sched)
    assert (float(alphas[-1]) == 0.0) is zero_snr  # Lin et al.: the last timestep is pure noise
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond_bank, empty = torch.zeros(1, 1, 3, 8), torch.zeros(3, 8)
    loss = denoising_loss(
        oracle(x0, alphas, predicts),
        x0,
        torch.zeros(1, dtype=torch.long),
        cond_bank,
        empty,
        sched,
        torch.Generator().manual_seed(1),
        batch=256,
        uncond_prob=0.1,
        snr_gamma=5.0,
    )
    assert torch.isfinite(loss)
    if predicts == sched.config.prediction_type:
        assert float(loss) < 1e-8
    else:
        assert float(loss) > 1e-3, float(loss)  # the other target is off wherever ab < 1
