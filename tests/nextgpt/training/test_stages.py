"""Each stage learns on the shapes world with the tiny profile (the acceptance checks of issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.training.runner import Runner, read_metrics
from tests.nextgpt.training.train_helpers import small_world, stage_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_world(tmp_path_factory)


def _mean(records: list[dict], key: str, first: bool, n: int = 5) -> float:
    values = [r[key] for r in records if key in r]
    part = values[:n] if first else values[-n:]
    return sum(part) / len(part)


def test_stage1_lowers_caption_ce(world: Path, tmp_path: Path, tiny_models_dir: Path, tiny_profile) -> None:
    cfg = stage_config("encoder", world, tmp_path, tiny_models_dir, max_steps=40, lr=5e-2, max_examples=48)
    runner = Runner(cfg, profile=tiny_profile, progress=False)
    before = runner.evaluate()
    summary = runner.run()
    after = runner.evaluate()
    assert after["ce"] < before["ce"] - 0.02, (before, after)
    assert summary["last"]["ce"] < summary["first"]["ce"]
    records = read_metrics(cfg.output_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"step", "loss", "ce", "lr", "tokens_per_s"} <= set(records[0])
    assert (cfg.output_dir / "pytorch_model.pt").is_file() and (cfg.output_dir / "final" / "adapter").is_dir()


def test_stage2_halves_alignment_distance(
    world: Path, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    cfg = stage_config("decoder", world, tmp_path, tiny_models_dir, max_steps=60, lr=1e-2)
    runner = Runner(cfg, profile=tiny_profile, progress=False)
    summary = runner.run()
    records = read_metrics(cfg.output_dir / "metrics.jsonl")
    start, end = _mean(records, "align", True, 3), _mean(records, "align", False, 3)
    assert end <= 0.5 * start, (start, end)
    assert summary["last"]["ce"] < summary["first"]["ce"]
    # the targets came from the decoders' own text encoders, cached content-addressed
    assert list((tmp_path / "targets").glob("image-*.safetensors"))


def test_stage3_lowers_total_loss(world: Path, tmp_path: Path, tiny_models_dir: Path, tiny_profile) -> None:
    cfg = stage_config("instruct", world, tmp_path, tiny_models_dir, max_steps=60, lr=5e-3)
    runner = Runner(cfg, profile=tiny_profile, progress=False)
    runner.run()
    records = read_metrics(cfg.output_dir / "metrics.jsonl")
    assert _mean(records, "loss", False, 10) < _mean(records, "loss", True, 10)
    assert any("align" in r for r in records) and any(r.get("lr", 0) > 0 for r in records)
    summary = json.loads((cfg.output_dir / "summary.json").read_text())
    assert summary["stage"] == "instruct" and summary["steps"] == 60


def test_stage3_projectors_at_their_own_rate(
    world: Path, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    cfg = stage_config("instruct", world, tmp_path, tiny_models_dir, max_steps=2, lr=5e-3, projector_lr=1e-3)
    runner = Runner(cfg, profile=tiny_profile, progress=False)
    projectors = {id(p) for n, p in runner.trainables.params.items() if n.startswith("output_projectors.")}
    rates = {
        group["initial_lr"]: {id(p) in projectors for p in group["params"]}
        for group in runner.optimizer.param_groups
    }
    assert projectors and rates == {5e-3: {False}, 1e-3: {True}}
    runner.run()
    assert [g["lr"] for g in runner.optimizer.param_groups] == [0.0, 0.0]  # one schedule, to zero


def test_projector_rate_must_be_positive(world: Path, tmp_path: Path, tiny_models_dir: Path) -> None:
    from nextgpt.errors import ConfigError

    with pytest.raises(ConfigError, match="projector_lr"):
        stage_config("instruct", world, tmp_path, tiny_models_dir, projector_lr=0.0)
