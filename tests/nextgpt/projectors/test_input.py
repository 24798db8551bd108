"""Input projectors: released key names, shapes, errors."""

import pytest
import torch

from nextgpt.config import InputProjectorConfig
from nextgpt.errors import InvalidInput
from nextgpt.projectors.input import GroupInputProjector, LinearInputProjector, build_input_projector


def test_linear_keys_and_shape() -> None:
    torch.manual_seed(0)
    proj = LinearInputProjector(InputProjectorConfig(kind="linear", in_dim=16, out_dim=8))
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {"weight": (8, 16), "bias": (8,)}
    assert proj(torch.randn(3, 16)).shape == (3, 1, 8)


def test_linear_matches_nn_linear() -> None:
    torch.manual_seed(0)
    proj = LinearInputProjector(InputProjectorConfig(in_dim=16, out_dim=8))
    ref = torch.nn.Linear(16, 8)
    ref.load_state_dict(proj.state_dict())
    x = torch.randn(2, 16)
    assert torch.allclose(proj(x)[:, 0], ref(x))


def test_linear_rejects_wrong_width() -> None:
    proj = LinearInputProjector(InputProjectorConfig(in_dim=16, out_dim=8))
    with pytest.raises(InvalidInput, match=r"\[B, 16\].*\[2, 12\]"):
        proj(torch.randn(2, 12))


def test_real_linear_keys_on_meta() -> None:
    with torch.device("meta"):
        proj = LinearInputProjector(InputProjectorConfig(in_dim=1024, out_dim=4096))
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "weight": (4096, 1024),
        "bias": (4096,),
    }


def test_group_shapes_and_grad() -> None:
    torch.manual_seed(0)
    cfg = InputProjectorConfig(kind="group", in_dim=32, out_dim=64, num_tokens=8)
    proj = build_input_projector(cfg)
    assert isinstance(proj, GroupInputProjector)
    patches = torch.randn(2, 20, 32, requires_grad=True)
    out = proj(patches)
    assert out.shape == (2, 8, 64)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    assert proj.group_tokens.grad is not None


def test_group_batch_independent() -> None:
    torch.manual_seed(0)
    proj = GroupInputProjector(InputProjectorConfig(kind="group", in_dim=32, out_dim=64, num_tokens=4)).eval()
    a, b = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    both = proj(torch.cat([a, b]))
    assert torch.allclose(both[1:], proj(b), atol=1e-5)


def test_group_rejects_pooled_embedding() -> None:
    proj = GroupInputProjector(InputProjectorConfig(kind="group", in_dim=32, out_dim=64, num_tokens=4))
    with pytest.raises(InvalidInput, match="patch tokens"):
        proj(torch.randn(2, 32))
