"""Output limits a decoder service enforces beyond `DecodeDefaults`' ranges: what its scheduler can run,
and the per-decode budget of steps x pixels x frames (`DecodeDefaults.max_pixel_steps`).

Both refusals are `InvalidInput` (INVALID_ARGUMENT) naming the limit, before a request joins a batch: a
request the pipeline cannot finish must not fail mid-diffusion with an IndexError (INTERNAL).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch

from nextgpt.config import MAX_STEPS, DecodeDefaults
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.types import Modality


def check_settings(modality: Modality, settings: DecodeDefaults, max_steps: int = MAX_STEPS) -> None:
    """Raise InvalidInput when resolved `settings` are over the decode budget or the scheduler's steps."""
    try:
        settings.check_budget(modality)
    except ConfigError as exc:
        raise InvalidInput(f"{modality} options: {exc}") from None
    if settings.steps > max_steps:
        raise InvalidInput(
            f"{modality} options: steps={settings.steps} is over this decoder's limit of {max_steps} "
            "(the most its scheduler can run); lower steps"
        )


def decoder_max_steps(decoder: object) -> int:
    """Most steps a loaded decoder runs: `MAX_STEPS`, or less when its pipeline's scheduler runs fewer."""
    scheduler = getattr(getattr(decoder, "pipe", None), "scheduler", None)
    if scheduler is None:
        return MAX_STEPS
    return min(MAX_STEPS, scheduler_max_steps(scheduler))


class Scheduler(Protocol):
    """What the probe uses of a diffusers scheduler (they share no typed base with `set_timesteps`)."""

    config: Any
    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int) -> None: ...


def scheduler_max_steps(scheduler: Scheduler) -> int:
    """Most inference steps `scheduler` runs: each timestep must index its training schedule.

    SD 1.5's PNDM and the DDIM of Zeroscope / AudioLDM (1000 training timesteps, steps_offset 1) give 999:
    at 1000 the last timestep is 1000 and `alphas_cumprod[1000]` raises IndexError mid-request.
    Found by bisection on a copy (set_timesteps only, no model call), once per load.
    """
    probe = copy.deepcopy(scheduler)
    total = int(probe.config.num_train_timesteps)

    def runs(steps: int) -> bool:
        try:
            probe.set_timesteps(steps)
        except (ValueError, IndexError):
            return False
        timesteps = probe.timesteps
        return len(timesteps) > 0 and 0 <= int(timesteps.min()) and int(timesteps.max()) < total

    low, high = 1, total
    if not runs(low):
        return total  # not a scheduler we can probe: leave the bound to MAX_STEPS
    while low < high:
        middle = (low + high + 1) // 2
        if runs(middle):
            low = middle
        else:
            high = middle - 1
    return low
