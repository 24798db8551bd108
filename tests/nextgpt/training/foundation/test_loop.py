"""The shared loop of the foundation trainers: it learns, one seed gives one result, and a run that
stops and resumes ends with the same bits as one that never stopped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nextgpt.training.foundation.loop import LoopConfig, train


def _task() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 1))
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.randn(32, 4, generator=gen)
        return ((model(x) - x @ target) ** 2).mean()

    return model, loss_fn


def test_the_loop_learns_and_is_deterministic():
    cfg = LoopConfig(steps=200, lr=1e-2, warmup_steps=10, seed=3)
    model, loss_fn = _task()
    result = train(model, loss_fn, cfg, progress=False)
    assert len(result.losses) == 200 and result.last < 0.2 * result.first
    again, loss_fn2 = _task()
    train(again, loss_fn2, cfg, progress=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, ema_decay):
    cfg = LoopConfig(steps=40, lr=1e-2, warmup_steps=5, checkpoint_every=10, seed=1, ema_decay=ema_decay)
    whole, loss_fn = _task()
    expected = train(whole, loss_fn, cfg, progress=False)

    part, loss_fn_b = _task()

    def killed_at_25(step: int, gen: torch.Generator) -> torch.Tensor:
        if step == 25:
            raise KeyboardInterrupt  # the run stops between two saved states (20 and 30)
        return loss_fn_b(step, gen)

    with pytest.raises(KeyboardInterrupt):
        train(part, killed_at_25, cfg, state_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 20
    resumed, loss_fn_c = _task()  # a fresh process: new module, the state on disk
    got = train(resumed, loss_fn_c, cfg, state_dir=tmp_path, progress=False)
    assert got.losses == expected.losses
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ema_leaves_the_average_of_the_steps_weights_in_the_module():
    """With ema_decay the module ends on the moving average (here: of the last steps' weights), not on
    the last step's weights; the losses are the same run's."""
    plain_model, plain_loss = _task()
    plain = train(plain_model, plain_loss, LoopConfig(steps=60, lr=1e-2, seed=2), progress=False)
    ema_model, ema_loss = _task()
    averaged = train(
        ema_model, ema_loss, LoopConfig(steps=60, lr=1e-2, seed=2, ema_decay=0.9), progress=False
    )
    assert averaged.losses == plain.losses
    moved = [
        not torch.equal(a, b) for a, b in zip(plain_model.parameters(), ema_model.parameters(), strict=True)
    ]
    assert all(moved)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(9))
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    plain_model.eval()
    assert ((ema_model(x) - target) ** 2).mean() < 2 * ((plain_model(x) - target) ** 2).mean() + 0.1


def test_bad_settings_and_a_diverging_loss_are_reported():
    with pytest.raises(ValueError, match="steps=0"):
        LoopConfig(steps=0)
    model = nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        train(model, lambda step, gen: model.weight.sum() * float("nan"), LoopConfig(steps=3), progress=False)
