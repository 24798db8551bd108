"""Stage 0 and the three NExT-GPT stages on a shapes world, for any profile: the LLM half of
`make train-demo` (the tiny profile's random decoders) and of `make train-world` (the `shapes` profile's
trained ones).

Stage 0 chat-tunes the profile's LLM base (`nextgpt.training.base_chat`): NExT-GPT's recipe starts from
a trained chat model (Vicuna) that it keeps frozen, and a frozen random base never gets confident enough
about ordinary tokens to reach the `###` stop. Stages 1-3 then train the projectors and the LoRA with
the base frozen. Stage 2's targets are the profile's own decoders' text-encoder embeddings of the
captions (`nextgpt.training.data.targets`), so the output projectors learn to speak to *these*
decoders.

The base is frozen in stages 1-3, so stage 3 uses a LoRA on every projection (attention and MLP,
r=32, `WORLD_LORA`) instead of the tiny profile's attention-only r=8: with only attention LoRA the
frozen MLPs and LM head leave too little room to learn the replies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

WORLD_LORA: dict[str, Any] = {
    "r": 32,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
N_INSTRUCTIONS = 832
"""Dialogues in the world: 2.6 times the generator's default, for more varied plain text requests."""


@dataclass
class StagePlan:
    """Step budgets of stage 0 and the three stages; the defaults are `make train-demo`'s."""

    base_steps: int = 300
    encoder_epochs: int = 6
    encoder_lr: float = 2e-2
    decoder_epochs: int = 8
    decoder_lr: float = 1e-2
    instruct_epochs: int = 31
    instruct_lr: float = 5e-3
    instruct_projector_lr: float | None = None
    """Stage 3's `TrainConfig.projector_lr` (None: `instruct_lr`)."""
    instruct_align_weight: float = 1.0
    """Stage 3's `TrainConfig.align_weight` against its text loss."""
    batch_size: int = 8
    zero_unseen_embeddings: bool = False
    """Stage 0's `BaseChatConfig.zero_unseen_embeddings`."""
    lora: dict[str, Any] = field(default_factory=lambda: dict(WORLD_LORA))


def stage_settings(world: Path, out: Path, plan: StagePlan) -> dict[str, dict[str, Any]]:
    """Per stage: its data, learning rate, epochs and initial checkpoint (`TrainConfig` fields)."""
    pairs = [
        {"kind": "pairs", "path": str(world / "cc3m.json"), "modality": "image"},
        {"kind": "pairs", "path": str(world / "webvid.json"), "modality": "video"},
        {"kind": "pairs", "path": str(world / "audiocaps.json"), "modality": "audio"},
    ]
    instructions = {"kind": "instructions", "path": str(world / "instructions.json")}
    return {
        "encoder": {"data": pairs, "lr": plan.encoder_lr, "epochs": plan.encoder_epochs, "init": "base"},
        "decoder": {
            "data": [pairs[0], instructions],
            "lr": plan.decoder_lr,
            "epochs": plan.decoder_epochs,
            "init": str(out / "encoder"),
        },
        "instruct": {
            "data": [instructions],
            "lr": plan.instruct_lr,
            "epochs": plan.instruct_epochs,
            "init": str(out / "decoder"),
            "lora": plan.lora,
            "projector_lr": plan.instruct_projector_lr,
            "align_weight": plan.instruct_align_weight,
        },
    }


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss curves drawn with PIL (no plotting dependency): one polyline per loss part."""
    width, height, pad = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    keys = [k for k in ("loss", "ce", "align") if any(k in r for r in records)]
    values = [r[k] for r in records for k in keys if k in r]
    top = max(values) if values else 1.0
    steps = max(len(records), 2)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    colours = {"loss": (0, 0, 0), "ce": (30, 90, 220), "align": (220, 60, 30)}
    for n, key in enumerate(keys):
        points = [
            (pad + i * (width - 2 * pad) / (steps - 1), height - pad - r[key] / top * (height - 2 * pad))
            for i, r in enumerate(records)
            if key in r
        ]
        if len(points) > 1:
            draw.line(points, fill=colours[key], width=1)
        draw.text((width - pad - 60, pad + 5 + 12 * n), key, fill=colours[key])
    draw.text((pad, 12), f"{title}: steps 1..{len(records)}, y 0..{top:.2f}", fill="black")
    image.save(path)


def train_llm_stages(
    out: Path,
    world: Path,
    profile_overrides: dict[str, Any],
    plan: StagePlan | None = None,
    *,
    models_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Stage 0 on the profile's base, then the three stages; returns (summary, profile.yaml).

    `profile_overrides` is a profile YAML's content (`{"profile": "tiny"}` or more); the stages run on it
    with the chat-tuned base, and the returned `out/profile.yaml` adds the final delta checkpoint and
    the LoRA shape, ready for `nextgpt generate --config`. Each stage writes `out/<stage>/` (metrics,
    loss.png, checkpoints, pytorch_model.pt)."""
    from nextgpt.profiles import load_profile
    from nextgpt.training.base_chat import BaseChatConfig, chat_tune_base, dialogue_texts
    from nextgpt.training.config import TrainConfig
    from nextgpt.training.runner import read_metrics, run_stage

    plan = plan or StagePlan()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"stages": {}}
    base_dir = (out / "base").resolve()
    start_yaml = out / "start-profile.yaml"
    start_yaml.write_text(yaml.safe_dump(profile_overrides))
    profile = load_profile(config_file=start_yaml, models_dir=models_dir, env={})
    t0 = time.perf_counter()
    texts = dialogue_texts(world / "instructions.json")
    stage0_cfg = BaseChatConfig(steps=plan.base_steps, zero_unseen_embeddings=plan.zero_unseen_embeddings)
    stage0 = chat_tune_base(profile.llm.base_dir, texts, base_dir, stage0_cfg)
    summary["stages"]["base_chat"] = {**stage0, "seconds": round(time.perf_counter() - t0, 1)}
    base_yaml = out / "base-profile.yaml"
    with_base = {**profile_overrides, "llm": {**profile_overrides.get("llm", {}), "base_dir": str(base_dir)}}
    base_yaml.write_text(yaml.safe_dump(with_base))
    for stage, settings in stage_settings(world, out, plan).items():
        cfg = TrainConfig(
            stage=stage,  # type: ignore[arg-type]  # the keys of stage_settings are the Stage literals
            output_dir=out / stage,
            batch_size=plan.batch_size,
            save_every=500,
            warmup_ratio=0.03,
            targets_dir=out / "targets",
            profile_config=base_yaml,
            models_dir=models_dir,
            **settings,
        )
        (out / f"{stage}.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        t0 = time.perf_counter()
        result = run_stage(cfg)
        records = read_metrics(cfg.output_dir / "metrics.jsonl")
        plot_losses(records, cfg.output_dir / "loss.png", f"stage {stage}")
        summary["stages"][stage] = {
            "steps": result["steps"],
            "seconds": round(time.perf_counter() - t0, 1),
            "first": result["first"],
            "last": result["last"],
        }
    profile_yaml = out / "profile.yaml"
    final = {
        **with_base,
        "delta_checkpoint": str((out / "instruct" / "pytorch_model.pt").resolve()),
        "llm": {**with_base["llm"], "lora": plan.lora},
    }
    profile_yaml.write_text(yaml.safe_dump(final))
    (out / "stages.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, profile_yaml
