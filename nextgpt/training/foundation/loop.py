"""The training loop every foundation trainer shares: AdamW with warm-up and cosine decay, gradient
clipping, a progress bar, a loss log, and resumable, deterministic runs.

A trainer supplies the module and `loss_fn(step, generator) -> scalar loss`; the loop owns everything
else. Each step's randomness (which examples, which noise, which timesteps) comes from the generator the
loop hands it, seeded from (seed, step) alone, so a run that stops and resumes from its last state gives
the same bits as one that never stopped (tested), and two runs with one seed give the same weights.

State lives in `state_dir/last.pt` (module, optimizer, step, losses, the EMA), written every
`checkpoint_every` steps and at the end; a run given a `state_dir` that holds a state continues from it.

With `ema_decay`, the loop keeps an exponential moving average of the trained parameters and leaves it in
the module at the end (the usual practice for diffusion models: the averaged weights sample markedly
better than the last step's after a short run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

STATE_NAME = "last.pt"


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    """The cosine decay ends at lr x this."""
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    """Steps between saved states (0: only at the end). A state costs one `torch.save` of the module."""
    ema_decay: float | None = None
    """Decay of the parameters' moving average (e.g. 0.999), None for none. Early steps use the smaller
    (1 + step) / (10 + step), so the average is not dominated by the initial weights."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]")

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based `step`: linear warm-up, then cosine down to lr x min_lr_ratio."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / span
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)
    """The loss of every step, in order (a resumed run includes the steps before the stop)."""
    seconds: float = 0.0
    """Wall time of this call (not of earlier calls a resumed run continues)."""

    def mean(self, start: int, stop: int | None = None) -> float:
        window = self.losses[start:stop]
        return sum(window) / len(window) if window else float("nan")

    @property
    def first(self) -> float:
        """Mean loss over the first tenth of the run (at least one step)."""
        return self.mean(0, max(1, len(self.losses) // 10))

    @property
    def last(self) -> float:
        """Mean loss over the last tenth of the run (at least one step)."""
        return self.mean(-max(1, len(self.losses) // 10))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: a function of (seed, step) only, so resuming reproduces the run."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train(
    module: nn.Module,
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    cfg: LoopConfig,
    *,
    name: str = "train",
    state_dir: Path | None = None,
    progress: bool = True,
) -> LoopResult:
    """Run `cfg.steps` optimiser steps over the module's parameters that require grad."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: the module has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = LoopResult()
    ema = [p.detach().clone() for p in params] if cfg.ema_decay is not None else None
    start = _resume(module, optimizer, result, state_dir, name, ema)
    module.train()
    bar = _progress(name, cfg.steps, start) if progress else None
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and other global draws, per step too
        loss = loss_fn(step, step_generator(cfg.seed, step))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if ema is not None and cfg.ema_decay is not None:
            _update_ema(ema, params, min(cfg.ema_decay, (1 + step) / (10 + step)))
        result.losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)
        done = step + 1
        due = done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        if state_dir is not None and due:
            _save(module, optimizer, result, state_dir, done, ema)
    if bar is not None:
        bar.close()
    if ema is not None:
        with torch.no_grad():
            for param, average in zip(params, ema, strict=True):
                param.copy_(average)
    module.eval()
    result.seconds = time.perf_counter() - t0
    logger.info(
        "%s: %d steps, loss %.4f -> %.4f, %.1f s", name, cfg.steps, result.first, result.last, result.seconds
    )
    return result


def _progress(name: str, total: int, start: int):  # type: ignore[no-untyped-def]  # tqdm's own type
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True, leave=False)


@torch.no_grad()
def _update_ema(ema: list[torch.Tensor], params: list[nn.Parameter], decay: float) -> None:
    for average, param in zip(ema, params, strict=True):
        average.lerp_(param.detach(), 1 - decay)


def _save(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    result: LoopResult,
    state_dir: Path,
    step: int,
    ema: list[torch.Tensor] | None,
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (STATE_NAME + ".tmp")
    torch.save(
        {
            "step": step,
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "losses": result.losses,
            "ema": ema,
        },
        tmp,
    )
    tmp.replace(state_dir / STATE_NAME)  # a stop while writing leaves the previous state whole


def _resume(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    result: LoopResult,
    state_dir: Path | None,
    name: str,
    ema: list[torch.Tensor] | None,
) -> int:
    path = state_dir / STATE_NAME if state_dir is not None else None
    if path is None or not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    result.losses = list(state["losses"])
    if ema is not None:
        saved = state.get("ema")
        if saved is None:  # a state from before EMA was asked for: start the average at the weights
            saved = [p.detach() for p in module.parameters() if p.requires_grad]
        for average, value in zip(ema, saved, strict=True):
            average.copy_(value)
    logger.info("%s: resuming from %s at step %d", name, path, state["step"])
    return int(state["step"])
