"""Resuming from a checkpoint continues exactly as the uninterrupted run (losses equal step by step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.training.runner import Runner, read_metrics
from tests.nextgpt.training.train_helpers import small_world, stage_config

KEYS = ("loss", "ce", "align", "lr")


def test_resume_equals_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    world = small_world(tmp_path_factory)
    # Stage 3: LoRA dropout draws random numbers, so the RNG state must be restored too.
    common = {"max_steps": 6, "lr": 5e-3, "batch_size": 4, "grad_accum": 2, "max_examples": 24}
    straight = stage_config("instruct", world, tmp_path / "a", tiny_models_dir, **common)
    Runner(straight, profile=tiny_profile, progress=False).run()
    want = read_metrics(straight.output_dir / "metrics.jsonl")

    broken = stage_config("instruct", world, tmp_path / "b", tiny_models_dir, save_every=3, **common)
    Runner(broken, profile=tiny_profile, progress=False).run(stop_after=4)  # dies after step 4
    assert [p.name for p in (broken.output_dir / "checkpoints").iterdir()] == ["step-0000003"]
    resumed = Runner(broken, profile=tiny_profile, progress=False)
    resumed.run(resume=True)
    got = read_metrics(broken.output_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(want, got, strict=True):
        for key in KEYS:
            assert a.get(key) == pytest.approx(b.get(key), rel=1e-5, abs=1e-6), (key, a, b)
