"""The stage runner: a plain training loop (no trainer framework), litgpt-style.

1. resolve the profile and the starting delta, build the model, set the stage's trainables (printed);
2. read the stage's data into tokenized examples (media embedded once by the frozen ImageBind, caption
   targets computed once by the decoders' own text encoders and cached content-addressed);
3. Adam, linear warmup then linear decay, gradient accumulation, grad clipping, autocast on GPUs;
4. every step a `metrics.jsonl` line, every `save_every` steps a resumable checkpoint (trainables,
   optimizer, scheduler, RNG states; the data position is the step itself: the order of every epoch is
   a permutation seeded by (seed, epoch)), so `resume=True` continues with the same losses;
5. at the end the own format (`final/`) and the legacy `pytorch_model.pt`.

Multi-GPU: run under `torchrun --nproc-per-node N -m nextgpt_serve.cli train ...` (or `accelerate launch`,
which sets the same variables); each rank takes its slice of every step's examples, gradients are
averaged by DDP, rank 0 logs and saves. On CPU it is a single process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nextgpt.config import ProfileConfig
from nextgpt.errors import ConfigError
from nextgpt.profiles import load_profile
from nextgpt.training.collate import Batch, Example, collate
from nextgpt.training.config import TrainConfig
from nextgpt.training.export import export_legacy, save_run
from nextgpt.training.model import TrainableNextGPT, resolve_init
from nextgpt.training.stage_data import StageData, build_stage_data
from nextgpt.training.trainables import TrainableSet, set_trainables

logger = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


@dataclass
class Dist:
    """torchrun's view of this process (world 1 on a single device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    return dist


def _device(cfg: TrainConfig, dist: Dist) -> str:
    if cfg.device == "auto":
        return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available; use device: auto or cpu")
    return cfg.device


def _autocast_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    if not device.startswith("cuda"):
        return None  # CPU: fp32 (bf16 autocast on CPU is slow and changes results)
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_linear(total: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 over `warmup` steps, then linearly down to 0 at `total`."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def param_groups(
    params: dict[str, torch.nn.Parameter], lr: float, projector_lr: float | None
) -> list[dict[str, Any]]:
    """Adam's parameter groups: one at `lr`, or the output projectors apart at `projector_lr`."""
    if projector_lr is None:
        return [{"params": list(params.values())}]
    projectors = [p for name, p in params.items() if name.startswith("output_projectors.")]
    rest = [p for name, p in params.items() if not name.startswith("output_projectors.")]
    groups = [{"params": rest, "lr": lr}, {"params": projectors, "lr": projector_lr}]
    return [g for g in groups if g["params"]]


class Runner:
    """One stage's run. `run()` trains and returns the summary (also written as `summary.json`)."""

    def __init__(
        self, cfg: TrainConfig, *, profile: ProfileConfig | None = None, progress: bool = True
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.dist = _setup_dist(
            cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.device = _device(cfg, self.dist)
        self.autocast = _autocast_dtype(cfg, self.device)
        seed_everything(cfg.seed)
        self.profile = profile or load_profile(
            cfg.profile, config_file=cfg.profile_config, models_dir=cfg.models_dir
        )
        self.model = TrainableNextGPT.build(
            self.profile,
            init=resolve_init(cfg.init, self.profile),
            lora=cfg.lora,
            seed=cfg.seed,
            device=self.device,
        )
        self.trainables: TrainableSet = set_trainables(self.model, cfg.stage, new_rows=cfg.train_new_rows)
        self._say(self.trainables.summary())
        self.data: StageData = build_stage_data(cfg, self.model, self.profile, say=self._say)
        if self.data.denoiser is not None:
            self.model.attach_denoiser(self.data.denoiser)
        if not self.data.examples:
            raise ConfigError(f"stage {cfg.stage}: no training examples (check `data` in the config)")
        self.batches_per_epoch = math.ceil(len(self.data.examples) / (cfg.batch_size * self.dist.world))
        self.total_steps = cfg.max_steps or math.ceil(self.batches_per_epoch * cfg.epochs / cfg.grad_accum)
        self.optimizer = torch.optim.Adam(
            param_groups(self.trainables.params, cfg.lr, cfg.projector_lr),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear(self.total_steps, warmup)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        self.step = 0
        self.ddp: Any = self.model
        if self.dist.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.dist.local_rank] if self.device.startswith("cuda") else None,
                find_unused_parameters=True,
            )

    def _say(self, text: str) -> None:
        logger.info("%s", text)
        if self.progress and self.dist.main:
            print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ data order
    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data.examples), generator=gen).tolist()

    def micro_batch(self, index: int) -> list[Example]:
        """Examples of global micro-batch `index` for this rank: a pure function of (seed, index)."""
        n, bs = len(self.data.examples), self.cfg.batch_size
        epoch, k = divmod(index, self.batches_per_epoch)
        order = self._order(epoch)
        first = k * bs * self.dist.world + self.dist.rank * bs
        return [self.data.examples[order[(first + t) % n]] for t in range(min(bs, n))]

    def collate(self, examples: list[Example]) -> Batch:
        return collate(examples, self.data.targets, pad_id=self.data.pad_id, latents=self.data.latents)

    # ------------------------------------------------------------------ the loop
    def run(self, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to `total_steps` (or stop after step `stop_after`, as if interrupted)."""
        cfg, out = self.cfg, self.cfg.output_dir
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_latest()
        elif self.dist.main:
            (out / METRICS).write_text("")
            (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        self._say(
            f"stage {cfg.stage}: {len(self.data.examples)} examples, {self.total_steps} steps of "
            f"{cfg.batch_size}x{cfg.grad_accum}x{self.dist.world}, device {self.device}"
            + (f", autocast {self.autocast}" if self.autocast else "")
        )
        self.model.train()
        bar = self._bar()
        history: list[dict[str, Any]] = []
        while self.step < self.total_steps:
            record = self._train_step()
            self.step += 1
            history.append(record)
            if self.dist.main and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                with (out / METRICS).open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("loss", "ce", "align")})
                bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self._save_checkpoint()
            if stop_after is not None and self.step >= stop_after:
                break
        if bar is not None:
            bar.close()
        if self.step >= self.total_steps and self.dist.main:
            return self._finish()
        return {"steps": self.step, "history": history}

    def _train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter()
        parts: dict[str, float] = {}
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self.collate(self.micro_batch(self.step * cfg.grad_accum + micro))
            tokens += batch.num_tokens
            ctx = torch.autocast("cuda", dtype=self.autocast) if self.autocast else contextlib.nullcontext()
            with ctx:
                losses = self.ddp(batch)
            total = cfg.ce_weight * losses["ce"]
            if "align" in losses:
                total = total + cfg.align_weight * losses["align"]
            if "denoise" in losses:
                total = total + cfg.denoise_weight * losses["denoise"]
            self.scaler.scale(total / cfg.grad_accum).backward()
            for name, value in (("loss", total), *losses.items()):
                parts[name] = parts.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
        self.scaler.unscale_(self.optimizer)
        params = list(self.trainables.params.values())
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        lr = self.scheduler.get_last_lr()[0]
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # fp16: on inf/nan gradients the scaler skips the update and lowers its scale; the schedule
        # then waits too, so warmup and decay count real updates (as accelerate does).
        skipped = self.scaler.get_scale() < scale
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        return {
            "step": self.step + 1,
            **{k: round(v, 6) for k, v in parts.items()},
            "grad_norm": round(float(grad_norm), 6),
            "lr": lr,
            "tokens_per_s": round(tokens * self.dist.world / max(seconds, 1e-9), 1),
            **({"skipped_update": True} if skipped else {}),
        }

    def _bar(self) -> Any:
        if not (self.progress and self.dist.main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps, initial=self.step, desc=f"stage {self.cfg.stage}", file=sys.stderr
        )

    @torch.no_grad()
    def evaluate(self, examples: list[Example] | None = None) -> dict[str, float]:
        """Mean loss parts over `examples` (default: the first 32 training examples), eval mode."""
        examples = examples if examples is not None else self.data.examples[:32]
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        bs = self.cfg.batch_size
        for start in range(0, len(examples), bs):
            chunk = examples[start : start + bs]
            losses = self.model(self.collate(chunk))
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(chunk)
        self.model.train(was_training)
        return {k: v / len(examples) for k, v in sums.items()}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self, step: int) -> Path:
        return self.cfg.output_dir / "checkpoints" / f"step-{step:07d}"

    def _save_checkpoint(self) -> None:
        if not self.dist.main:
            return
        final = self._checkpoint_dir(self.step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.model.trainable_state(), str(tmp / "trainables.safetensors"))
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
            },
            tmp / "training_state.pt",
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        kept = sorted(p for p in final.parent.glob("step-*") if not p.name.endswith(".tmp"))
        for old in kept[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)

    def _load_latest(self) -> None:
        found = sorted(
            p for p in (self.cfg.output_dir / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")
        )
        if not found:
            raise ConfigError(f"--resume: no checkpoint under {self.cfg.output_dir / 'checkpoints'}")
        path = found[-1]
        self.model.load_trainable_state(load_file(str(path / "trainables.safetensors")))
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        # Metrics after the checkpoint are recomputed: drop lines the interrupted run wrote past it.
        metrics = self.cfg.output_dir / METRICS
        if self.dist.main and metrics.is_file():
            lines = [
                ln for ln in metrics.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step
            ]
            metrics.write_text("".join(ln + "\n" for ln in lines))
        self._say(f"resumed from {path} at step {self.step}")

    def _finish(self) -> dict[str, Any]:
        out = self.cfg.output_dir
        self.model.eval()
        records = read_metrics(out / METRICS)
        summary = {
            "stage": self.cfg.stage,
            "steps": self.step,
            "examples": len(self.data.examples),
            "trainable_parameters": self.trainables.count,
            "first": records[0] if records else {},
            "last": records[-1] if records else {},
            "data_report": self.data.report,
        }
        save_run(self.model, out / "final", {"stage": self.cfg.stage, "steps": self.step})
        export_legacy(self.model, out / "pytorch_model.pt")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._say(f"stage {self.cfg.stage} done: {out / 'pytorch_model.pt'}")
        return summary


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def iter_parts(records: list[dict[str, Any]], key: str) -> Iterator[float]:
    return (r[key] for r in records if key in r)


def run_stage(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, profile: ProfileConfig | None = None
) -> dict[str, Any]:
    """Build the runner for `cfg` and train (the `nextgpt train` entry point)."""
    return Runner(cfg, profile=profile, progress=progress).run(resume=resume)
