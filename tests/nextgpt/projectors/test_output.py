"""Output projector: released key names, real-width parameter counts, tiny forward shapes."""

import pytest
import torch

from nextgpt.config import OutputProjectorConfig
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.profiles import load_profile
from nextgpt.projectors.output import OutputProjector, output_projector_param_count
from nextgpt.types import Modality


def _expected_params(in_dim: int, d: int, ff: int, layers: int, q: int, out: int) -> int:
    attn = 3 * d * d + 3 * d + d * d + d  # packed in_proj + out_proj
    mlp = d * ff + ff + ff * d + d
    enc = attn + mlp + 2 * (2 * d)
    dec = 2 * attn + mlp + 3 * (2 * d)
    return (in_dim * d + d) + layers * (enc + dec) + 2 * (2 * d) + (d * out + out) + q * d


@pytest.mark.parametrize(
    ("modality", "q", "out"), [("image", 77, 768), ("video", 77, 1024), ("audio", 1, 512)]
)
def test_real_param_count_on_meta(modality: Modality, q: int, out: int) -> None:
    cfg = load_profile("nextgpt-7b-tiva-v0", env={}).output_projectors[modality]
    with torch.device("meta"):
        proj = OutputProjector(cfg)
    count = sum(p.numel() for p in proj.parameters())
    expected = _expected_params(4096, 512, 2048, 4, q, out)
    assert count == expected == output_projector_param_count(cfg)
    assert 31_500_000 < count < 32_500_000  # "~32 M params each"
    sd = proj.state_dict()
    assert tuple(sd["fc.weight"].shape) == (512, 4096)
    assert tuple(sd["model.weight"].shape) == (out, 512)
    assert tuple(sd["query_embs"].shape) == (1, q, 512)
    assert "tfm.encoder.layers.3.self_attn.in_proj_weight" in sd
    assert "tfm.decoder.layers.3.multihead_attn.out_proj.bias" in sd
    assert "tfm.encoder.layers.4.linear1.weight" not in sd


@pytest.mark.parametrize(
    ("modality", "shape"), [("image", (2, 77, 32)), ("video", (2, 77, 48)), ("audio", (2, 24))]
)
def test_tiny_forward_shapes(modality: Modality, shape: tuple[int, ...]) -> None:
    cfg = load_profile("tiny", env={}).output_projectors[modality]
    torch.manual_seed(0)
    proj = OutputProjector(cfg).eval()
    n, h = cfg.num_signal_tokens, cfg.in_dim
    out = proj(torch.randn(2, n, h), torch.randn(2, n, h))
    assert out.shape == shape
    assert torch.isfinite(out).all()
    if modality == "audio":
        assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    else:
        assert not torch.allclose(out.norm(dim=-1), torch.ones(2, 77))


def test_hidden_plus_embeds_is_what_counts() -> None:
    cfg = load_profile("tiny", env={}).output_projectors["image"]
    torch.manual_seed(0)
    proj = OutputProjector(cfg).eval()
    h, e = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    assert torch.allclose(proj(h, e), proj(h + e, torch.zeros_like(e)), atol=1e-5)
    assert not torch.allclose(proj(h, e), proj(h, torch.zeros_like(e)))


def test_wrong_shapes_name_expected_and_got() -> None:
    cfg = load_profile("tiny", env={}).output_projectors["video"]
    proj = OutputProjector(cfg)
    with pytest.raises(InvalidInput, match=r"\[B, 24, 64\].*\[1, 4, 64\]"):
        proj(torch.randn(1, 4, 64), torch.randn(1, 4, 64))
    with pytest.raises(InvalidInput, match=r"token_embeds.*\[B, 24, 64\].*\[1, 24, 32\]"):
        proj(torch.randn(1, 24, 64), torch.randn(1, 24, 32))


def test_normalize_needs_one_query() -> None:
    with pytest.raises(ConfigError, match="num_queries=1"):
        OutputProjector(OutputProjectorConfig(in_dim=8, d_model=8, nhead=2, num_queries=3, normalize=True))
