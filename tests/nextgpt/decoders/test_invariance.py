"""The batch-invariant layers and the guidance-halves sharing, on small random modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nextgpt.config import OutputProjectorConfig
from nextgpt.decoders.invariance import (
    InvariantConv2d,
    InvariantLinear,
    make_batch_invariant,
    project_spans,
    share_guidance_halves,
)
from nextgpt.projectors.output import OutputProjector


def _rows_alike(layer: nn.Module, x: torch.Tensor) -> None:
    """layer(x[:n]) equals the first n rows of layer(x) bit for bit, for every n."""
    full = layer(x)
    for n in range(1, x.shape[0] + 1):
        assert torch.equal(layer(x[:n]), full[:n]), f"batch {n}"


def _switched(module: nn.Module) -> nn.Module:
    assert make_batch_invariant(module) >= 1
    return module


def test_linear_rows_do_not_depend_on_the_row_count() -> None:
    torch.manual_seed(0)
    layer = _switched(nn.Linear(32, 64))
    assert isinstance(layer, InvariantLinear)
    _rows_alike(layer, torch.randn(40, 32))
    _rows_alike(layer, torch.randn(20, 3, 32))  # leading dims fold into rows
    # A transposed (strided) input gives the same bits as its contiguous copy.
    x = torch.randn(32, 6).t()
    assert torch.equal(layer(x), layer(x.contiguous()))


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Conv2d(16, 16, 3, padding=1), (20, 16, 8, 8)),
        (nn.Conv2d(4, 4, 1), (20, 4, 8, 8)),  # 1x1: a linear over pixels
        (nn.Conv2d(16, 32, 3, stride=2, padding=1), (20, 16, 8, 8)),
        (nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0)), (20, 16, 8, 4, 4)),  # temporal
        (nn.Conv1d(8, 8, 3, padding=3, dilation=3), (20, 8, 100)),
        (nn.ConvTranspose1d(8, 4, 8, stride=4, padding=2), (20, 8, 50)),
        (nn.GroupNorm(4, 16), (20, 16, 8, 8)),
    ],
)
def test_conv_and_norm_batches(layer: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    reference = [p.clone() for p in layer.parameters()]
    _switched(layer)
    assert all(torch.equal(a, b) for a, b in zip(reference, layer.parameters(), strict=True))
    with torch.inference_mode():
        _rows_alike(layer, torch.randn(*shape))


def test_switched_layers_compute_what_they_did() -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(4, 8, 1), nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)), nn.Linear(8, 3)]
    inputs = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 5, 4, 4), torch.randn(2, 8)]
    for layer, x in zip(layers, inputs, strict=True):
        before = layer(x)
        _switched(layer)
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_channels_last_group_norm_input_is_normalised_as_contiguous() -> None:
    torch.manual_seed(0)
    norm = _switched(nn.GroupNorm(4, 16))
    x = torch.randn(3, 16, 8, 8)
    assert torch.equal(norm(x.contiguous(memory_format=torch.channels_last)), norm(x))


def test_state_dict_and_unknown_layers_are_kept() -> None:
    class Custom(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), Custom(4 * 2 * 2, 2))
    keys = list(model.state_dict())
    assert make_batch_invariant(model) == 1
    assert isinstance(model[0], InvariantConv2d) and type(model[2]) is Custom
    assert list(model.state_dict()) == keys
    assert make_batch_invariant(model) == 0  # idempotent


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.rows_seen: list[int] = []

    def forward(self, x: torch.Tensor, temb: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.rows_seen.append(x.shape[0])
        return self.linear(x) * scale + temb


def test_guidance_halves_run_once_when_equal() -> None:
    torch.manual_seed(0)
    module = _Counting()
    make_batch_invariant(module)
    plain = module(torch.zeros(2, 4), torch.zeros(2, 4))  # warm, and a reference call
    share_guidance_halves(module)
    share_guidance_halves(module)  # wrapping twice wraps once
    module.rows_seen.clear()
    x, temb = torch.randn(3, 4), torch.randn(1, 4).expand(3, 4)
    stacked = torch.cat([x, x])  # [unconditional; conditional], equal halves
    out = module(stacked, torch.cat([temb, temb]), scale=2.0)
    assert module.rows_seen == [3]
    expected = module.linear(stacked) * 2.0 + torch.cat([temb, temb])
    assert torch.equal(out, expected)
    # Different halves (or an odd batch) run as before.
    module.rows_seen.clear()
    module(torch.randn(6, 4), torch.cat([temb, temb]))
    module(torch.cat([x, x]), torch.randn(6, 4))
    module(torch.randn(3, 4), torch.randn(3, 4))
    assert module.rows_seen == [6, 6, 3]
    assert plain.shape == (2, 4)


@pytest.mark.parametrize("num_queries", [1, 5])
def test_projected_spans_do_not_depend_on_the_batch(num_queries: int) -> None:
    cfg = OutputProjectorConfig(
        in_dim=16, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
        num_queries=num_queries, out_dim=8, num_signal_tokens=8, normalize=num_queries == 1,
    )  # fmt: skip
    torch.manual_seed(0)
    projector = OutputProjector(cfg).eval()
    hidden, embeds = torch.randn(9, 8, 16), torch.randn(9, 8, 16)
    with torch.inference_mode():
        alone = [projector(hidden[i : i + 1], embeds[i : i + 1]) for i in range(9)]  # as the pipeline does
        for batch in (2, 3, 9):
            out = project_spans(projector, hidden[:batch], embeds[:batch])
            assert all(torch.equal(out[i : i + 1], alone[i]) for i in range(batch))
