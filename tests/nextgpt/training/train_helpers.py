"""Shared set-up of the training-loop tests: one small shapes world per session, small configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nextgpt.training.config import TrainConfig
from nextgpt.training.runner import Runner, read_metrics

_WORLD: dict[str, Path] = {}


def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes world small enough that reading and embedding it takes a few seconds (built once)."""
    if "dir" not in _WORLD:
        from nextgpt.training.data.synthetic import make_world
        from nextgpt.training.data.world_media import WorldConfig

        root = tmp_path_factory.mktemp("shapes-world")
        make_world(root, WorldConfig(n_images=48, n_videos=4, n_audios=8, n_instructions=64))
        _WORLD["dir"] = root
    return _WORLD["dir"]


def stage_config(stage: str, world: Path, out: Path, models_dir: Path, **overrides: Any) -> TrainConfig:
    data = {
        "encoder": [
            {"kind": "pairs", "path": world / "cc3m.json", "modality": "image"},
            {"kind": "pairs", "path": world / "audiocaps.json", "modality": "audio"},
        ],
        "decoder": [{"kind": "pairs", "path": world / "cc3m.json", "modality": "image"}],
        "instruct": [{"kind": "instructions", "path": world / "instructions.json"}],
    }[stage]
    settings: dict[str, Any] = {
        "stage": stage,
        "output_dir": out / stage,
        "data": data,
        "models_dir": models_dir,
        "batch_size": 8,
        "save_every": 0,
        "targets_dir": out / "targets",
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def straight_and_resumed(
    world: Path, out: Path, models_dir: Path, profile: Any, **common: Any
) -> list[list[dict]]:
    """Stage 3 run straight through (`out/a`), and the same run stopped after step 4 with a checkpoint
    at step 3, then resumed (`out/b`): the metrics of both. Stage 3 because LoRA dropout draws random
    numbers, so the RNG state must be restored too."""
    straight = stage_config("instruct", world, out / "a", models_dir, **common)
    Runner(straight, profile=profile, progress=False).run()
    broken = stage_config("instruct", world, out / "b", models_dir, save_every=3, **common)
    Runner(broken, profile=profile, progress=False).run(stop_after=4)  # dies after step 4
    assert [p.name for p in (broken.output_dir / "checkpoints").iterdir()] == ["step-0000003"]
    Runner(broken, profile=profile, progress=False).run(resume=True)
    return [read_metrics(cfg.output_dir / "metrics.jsonl") for cfg in (straight, broken)]
