"""apply_vicuna_delta on tiny sharded base/delta directories, against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nextgpt.errors import CheckpointError
from nextgpt.vicuna import apply_vicuna_delta

H = 8


def _tensors(vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": torch.randn(vocab, H, generator=gen),
        "lm_head.weight": torch.randn(vocab, H, generator=gen),
        "model.norm.weight": torch.randn(H, generator=gen),
    }
    for layer in range(3):
        out[f"model.layers.{layer}.self_attn.q_proj.weight"] = torch.randn(H, H, generator=gen)
        out[f"model.layers.{layer}.mlp.up_proj.weight"] = torch.randn(2 * H, H, generator=gen)
    return out


def _write_sharded(model_dir: Path, tensors: dict[str, torch.Tensor], n_shards: int, fmt: str) -> None:
    model_dir.mkdir(parents=True)
    names = sorted(tensors)
    weight_map = {}
    for i in range(n_shards):
        part = {k: tensors[k] for k in names[i::n_shards]}
        if fmt == "safetensors":
            fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
            save_file(part, str(model_dir / fname))
        else:
            fname = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
            torch.save(part, model_dir / fname)
        weight_map.update({k: fname for k in part})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (model_dir / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_apply_delta_matches_direct_sum(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    base, delta = _tensors(10, gen), _tensors(11, gen)  # the delta adds one token row (a pad token)
    _write_sharded(tmp_path / "base", base, 2, fmt)
    _write_sharded(tmp_path / "delta", delta, 3, "safetensors")
    (tmp_path / "delta" / "config.json").write_text('{"vocab_size": 11}')
    (tmp_path / "delta" / "tokenizer_config.json").write_text("{}")

    out = apply_vicuna_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(delta)
    merged: dict[str, torch.Tensor] = {}
    for shard in set(index["weight_map"].values()):
        merged.update(load_file(out / shard))
    for key, d in delta.items():
        expected = d.clone()
        b = base[key]
        expected[: b.shape[0]] += b
        torch.testing.assert_close(merged[key], expected)
    assert merged["lm_head.weight"].shape == (11, H)
    torch.testing.assert_close(
        merged["lm_head.weight"][10], delta["lm_head.weight"][10]
    )  # new row: delta only
    assert (out / "config.json").read_text() == '{"vocab_size": 11}'
    assert (out / "tokenizer_config.json").is_file()
    assert not list(out.glob("*.bin"))


def test_missing_tensor_and_bad_shape(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    base, delta = _tensors(10, gen), _tensors(10, gen)
    del base["model.norm.weight"]
    _write_sharded(tmp_path / "base", base, 1, "safetensors")
    _write_sharded(tmp_path / "delta", delta, 1, "safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing in the base \['model.norm.weight'\]"):
        apply_vicuna_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")

    base2 = _tensors(10, gen)
    base2["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3 * H, H)
    _write_sharded(tmp_path / "base2", base2, 1, "safetensors")
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj.weight: base shape"):
        apply_vicuna_delta(tmp_path / "base2", tmp_path / "delta", tmp_path / "out2")


def test_no_weights(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no weights"):
        apply_vicuna_delta(tmp_path / "empty", tmp_path / "empty", tmp_path / "out")
