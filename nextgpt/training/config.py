"""`TrainConfig`: one dataclass for a training run of one stage, validated at creation, loadable from YAML.

Defaults follow the reference (design 2): lr 5e-4, one epoch, Adam, warmup then linear decay, grad clip
1.0. LoRA defaults to the profile's shape (the released r=32 / alpha=32 / dropout 0.1 on q/k/v/o; the tiny
profile's smaller shape); it is attached in every stage so that every export is a complete delta, and
trained only in stage 3.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nextgpt.config import LoRAConfig
from nextgpt.errors import ConfigError
from nextgpt.training.data.types import InstructionFormat
from nextgpt.types import MODALITIES, Modality

Stage = Literal["encoder", "decoder", "instruct"]
STAGES: tuple[Stage, ...] = ("encoder", "decoder", "instruct")
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass
class DataSource:
    """One data file of a run."""

    kind: Literal["pairs", "instructions"]
    """"pairs": X-caption JSON (CC3M / WebVid / AudioCaps style); "instructions": dialogues."""
    path: Path
    """The JSON (or JSON-lines) file."""
    media_dir: Path | None = None
    """Folder the media names are relative to (default: the file's folder)."""
    modality: Modality = "image"
    """Modality of a pairs file."""
    fmt: InstructionFormat = "auto"
    """Instruction format for the reader: "auto", "conversations" (T->T+X, MosIT), "llava", "alpaca"."""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.media_dir = Path(self.media_dir) if self.media_dir is not None else self.path.parent
        _check(self.kind in ("pairs", "instructions"), f"data kind={self.kind!r}: use pairs or instructions")
        _check(self.modality in MODALITIES, f"data modality={self.modality!r}: use one of {MODALITIES}")


@dataclass
class TrainConfig:
    """Everything one stage's run needs. Paths are relative to the working directory."""

    stage: Stage
    """"encoder" (stage 1), "decoder" (stage 2) or "instruct" (stage 3)."""
    output_dir: Path
    """Run folder: metrics.jsonl, checkpoints/, final/ (own format) and pytorch_model.pt (legacy)."""
    data: list[DataSource] = field(default_factory=list)
    """Stage 1 reads `pairs`; stage 2 the captions of `pairs` and the output captions of `instructions`;
    stage 3 `instructions`."""
    profile: str | None = None
    """Profile naming the frozen components (nextgpt.profiles); None: the `profile:` of profile_config,
    else NEXTGPT_PROFILE, else tiny (the rule of `load_profile`)."""
    profile_config: Path | None = None
    """Optional YAML/TOML overriding the profile (as `nextgpt generate --config`)."""
    models_dir: Path | None = None
    """Root of the model directories (default: NEXTGPT_MODELS_DIR or ./models)."""
    init: str = "base"
    """Starting weights: "base" (fresh projectors, zero LoRA), "profile" (the profile's delta), or a path
    to a `pytorch_model.pt` or to a previous stage's run folder."""
    targets_dir: Path | None = None
    """Where caption targets are cached (content-addressed); default `<output_dir>/../targets`."""
    max_examples: int | None = None
    """Use at most this many examples (after reading), for quick runs."""

    lr: float = 5e-4
    """Peak learning rate (Adam)."""
    projector_lr: float | None = None
    """Peak rate of the output projectors (stages 2 and 3), on the same schedule; None = `lr`. Stage 3's
    LoRA and projectors pull on each other's targets: this sets their pace apart."""
    epochs: int = 1
    max_steps: int | None = None
    """Optimizer steps in all; None = epochs over the data."""
    batch_size: int = 4
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    warmup_ratio: float = 0.05
    """Share of the steps with linear warmup from 0; then linear decay to 0."""
    weight_decay: float = 0.0
    """Adam L2 decay. 0 keeps frozen embedding rows exactly unchanged (their gradients are masked)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    seed: int = 0
    precision: Precision = "auto"
    """Autocast dtype: "auto" = bf16 on a GPU that supports it, else fp32 (CPU always fp32)."""
    device: str = "auto"
    """"auto" (cuda when available, the local rank's GPU under torchrun), "cpu" or "cuda[:N]"."""
    save_every: int = 200
    """Write a resumable checkpoint every N optimizer steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept on disk (oldest removed)."""
    log_every: int = 1
    """Write a metrics.jsonl line every N optimizer steps."""

    lora: LoRAConfig | None = None
    """LoRA shape; None = the profile's `llm.lora`."""
    ce_weight: float = 1.0
    align_weight: float = 1.0
    """Weight of the Euclidean alignment distance (stages 2 and 3)."""
    denoise_weight: float = 0.0
    """Weight of the denoising loss through the frozen image UNet (stage 2/3, image pairs); 0 = off."""
    train_new_rows: bool = True
    """Train the signal/wrapper token rows of the embedding (and, stage 2/3, LM-head) matrices."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        for name in ("profile_config", "models_dir", "targets_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.data = [d if isinstance(d, DataSource) else DataSource(**d) for d in self.data]
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        _check(self.stage in STAGES, f"stage={self.stage!r}: use one of {list(STAGES)}")
        _check(self.lr > 0, f"lr={self.lr} must be positive")
        _check(
            self.projector_lr is None or self.projector_lr > 0,
            f"projector_lr={self.projector_lr} must be positive (or unset: lr)",
        )
        _check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps} must be >= 1")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(self.grad_accum >= 1, f"grad_accum={self.grad_accum} must be >= 1")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _check(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        _check(self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0 (0 = off)")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), f"precision={self.precision!r}")
        _check(self.save_every >= 0, f"save_every={self.save_every} must be >= 0")
        _check(self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be >= 1")
        _check(self.log_every >= 1, f"log_every={self.log_every} must be >= 1")
        _check(self.max_examples is None or self.max_examples >= 1, "max_examples must be >= 1")
        for name in ("ce_weight", "align_weight", "denoise_weight"):
            _check(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device={self.device!r}: use auto, cpu or cuda[:N]",
        )
        wanted = {"encoder": ("pairs",), "decoder": ("pairs", "instructions"), "instruct": ("instructions",)}
        wrong = [str(d.path) for d in self.data if d.kind not in wanted[self.stage]]
        _check(
            not wrong, f"stage {self.stage} reads {wanted[self.stage]} data; these sources are not: {wrong}"
        )

    @property
    def targets_root(self) -> Path:
        return self.targets_dir or self.output_dir.parent / "targets"

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML mapping of these fields; `overrides` (e.g. stage from the command line) win."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"training config {path} must hold a mapping at the top level")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"training config {path}: unknown field(s) {unknown}; known: {sorted(known)}")
        for key in ("stage", "output_dir"):
            if key not in raw:
                raise ConfigError(f"training config {path} needs `{key}`")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return typing.cast(dict[str, Any], plain(dataclasses.asdict(self)))
