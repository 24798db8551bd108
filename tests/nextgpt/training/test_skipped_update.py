"""fp16 overflow: a step whose update the grad scaler skips does not advance the LR schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.training.runner import Runner, read_metrics
from tests.nextgpt.training.train_helpers import small_world, stage_config


class OverflowAtFirstStep:
    """Stands in for torch's GradScaler (fp16 overflow cannot be caused on CPU): the first update is
    skipped and the scale halved, as GradScaler does on inf/nan gradients; later steps update."""

    def __init__(self) -> None:
        self.value, self.updates = 2.0**16, 0

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer) -> None:
        pass

    def get_scale(self) -> float:
        return self.value

    def step(self, optimizer) -> None:
        if self.updates > 0:
            optimizer.step()

    def update(self) -> None:
        self.updates += 1
        if self.updates == 1:
            self.value /= 2

    def state_dict(self) -> dict:
        return {}


def test_skipped_update_holds_the_schedule(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    world = small_world(tmp_path_factory)
    common = {"max_steps": 4, "lr": 1e-2, "warmup_ratio": 0.75, "max_examples": 16}
    plain = stage_config("encoder", world, tmp_path / "a", tiny_models_dir, **common)
    Runner(plain, profile=tiny_profile, progress=False).run()
    want = [r["lr"] for r in read_metrics(plain.output_dir / "metrics.jsonl")]
    assert len(set(want[:3])) == 3  # warmup: the schedule moves at every one of the first steps

    overflow = stage_config("encoder", world, tmp_path / "b", tiny_models_dir, **common)
    runner = Runner(overflow, profile=tiny_profile, progress=False)
    runner.scaler = OverflowAtFirstStep()  # type: ignore[assignment]
    runner.run()
    records = read_metrics(overflow.output_dir / "metrics.jsonl")
    assert [r.get("skipped_update", False) for r in records] == [True, False, False, False]
    assert [r["lr"] for r in records] == [want[0], want[0], want[1], want[2]]
