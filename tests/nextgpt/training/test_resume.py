"""Resuming from a checkpoint continues exactly as the uninterrupted run (losses equal step by step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nextgpt.training.train_helpers import small_world, straight_and_resumed

KEYS = ("loss", "ce", "align", "lr")


def test_resume_equals_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    world = small_world(tmp_path_factory)
    common = {"max_steps": 6, "lr": 5e-3, "batch_size": 4, "grad_accum": 2, "max_examples": 24}
    want, got = straight_and_resumed(world, tmp_path, tiny_models_dir, tiny_profile, **common)
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(want, got, strict=True):
        for key in KEYS:
            assert a.get(key) == pytest.approx(b.get(key), rel=1e-5, abs=1e-6), (key, a, b)
