"""Vicuna v0 weights = LLaMA weights + the published delta, tensor by tensor.

What users of the reference struggle with: LMSYS released Vicuna-7B v0 only as a delta over LLaMA-7B.
This applies it in a streaming way (one delta shard in memory at a time, base tensors read lazily), so a
7B model needs about one shard of memory, not the whole model. As in FastChat, the delta's embed_tokens /
lm_head may have more rows than the base (added tokens): the base is added into their top-left block.
Tokenizer and config come from the delta directory (it has the added tokens).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from nextgpt.errors import CheckpointError

logger = logging.getLogger(__name__)

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")
_GROWABLE = ("embed_tokens.weight", "lm_head.weight")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name of an HF model directory (sharded or single file)."""
    for name in _INDEXES:
        index = model_dir / name
        if index.is_file():
            return dict(json.loads(index.read_text())["weight_map"])
    for name in _SINGLE:
        path = model_dir / name
        if path.is_file():
            with _open_shard(path) as shard:
                return {key: name for key in shard.keys()}
    raise CheckpointError(
        f"{model_dir} holds no weights: expected one of {', '.join(_INDEXES + _SINGLE)}; point to the "
        "Hugging Face-format directory (convert original LLaMA weights with transformers' "
        "convert_llama_weights_to_hf.py first)"
    )


class _Shard:
    """Uniform lazy access to one safetensors or torch shard."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._st: Any = None
        self._pt: dict[str, torch.Tensor] | None = None
        if path.suffix == ".safetensors":
            self._st = safe_open(str(path), framework="pt")
        else:
            # mmap keeps a torch shard on disk; tensors are paged in when read.
            self._pt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)

    def keys(self) -> list[str]:
        return list(self._st.keys()) if self._st is not None else list(self._pt or {})

    def get(self, key: str) -> torch.Tensor:
        if self._st is not None:
            return self._st.get_tensor(key)
        assert self._pt is not None
        return self._pt[key]


@contextmanager
def _open_shard(path: Path) -> Iterator[_Shard]:
    shard = _Shard(path)
    try:
        yield shard
    finally:
        del shard


def add_delta(name: str, base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """delta + base in float32, returned in the delta's dtype; growable tensors get the base added into
    their top-left block."""
    if base.shape == delta.shape:
        return (delta.float() + base.float()).to(delta.dtype)
    grows = name.endswith(_GROWABLE) and base.dim() == 2 and delta.dim() == 2
    if grows and delta.shape[0] >= base.shape[0] and delta.shape[1] == base.shape[1]:
        out = delta.float().clone()
        out[: base.shape[0], : base.shape[1]] += base.float()
        return out.to(delta.dtype)
    raise CheckpointError(
        f"tensor {name}: base shape {tuple(base.shape)} does not fit delta shape {tuple(delta.shape)}; the "
        "delta was made for another base (Vicuna-7B v0 needs LLaMA-7B, not Llama-2)"
    )


def apply_vicuna_delta(base_dir: Path, delta_dir: Path, out_dir: Path) -> Path:
    """Write base + delta to `out_dir` as safetensors shards (one per delta shard) plus an index."""
    base_dir, delta_dir, out_dir = Path(base_dir), Path(delta_dir), Path(out_dir)
    # 1. check inputs
    base_map, delta_map = weight_map(base_dir), weight_map(delta_dir)
    missing_in_base = sorted(set(delta_map) - set(base_map))
    missing_in_delta = sorted(set(base_map) - set(delta_map))
    if missing_in_base or missing_in_delta:
        raise CheckpointError(
            f"base {base_dir} and delta {delta_dir} hold different tensors: "
            f"{len(missing_in_base)} missing in the base {missing_in_base[:5]}, "
            f"{len(missing_in_delta)} missing in the delta {missing_in_delta[:5]}; "
            "check that the base is LLaMA-7B in Hugging Face format and the delta is its Vicuna delta"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # 2. copy config and tokenizer from the delta (it carries the added tokens)
    for path in sorted(delta_dir.iterdir()):
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name not in _INDEXES:
            shutil.copy2(path, out_dir / path.name)
    # 3. add shard by shard
    delta_shards = sorted(set(delta_map.values()))
    n = len(delta_shards)
    new_map: dict[str, str] = {}
    total_size = 0
    base_cache: dict[str, _Shard] = {}  # lazily opened; safetensors/mmap handles hold no tensors
    with tqdm(total=len(delta_map), desc="applying delta", unit="tensor") as bar:
        for i, shard_name in enumerate(delta_shards, start=1):
            out_name = f"model-{i:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors"
            out: dict[str, torch.Tensor] = {}
            with _open_shard(delta_dir / shard_name) as delta_shard:
                for key in sorted(k for k, s in delta_map.items() if s == shard_name):
                    base_file = base_map[key]
                    if base_file not in base_cache:
                        base_cache[base_file] = _Shard(base_dir / base_file)
                    out[key] = add_delta(
                        key, base_cache[base_file].get(key), delta_shard.get(key)
                    ).contiguous()
                    new_map[key] = out_name
                    total_size += out[key].numel() * out[key].element_size()
                    bar.update(1)
            save_file(out, str(out_dir / out_name), metadata={"format": "pt"})
            logger.info("wrote %s (%d tensors)", out_name, len(out))
            del out
    # 4. index
    for stale in _INDEXES + _SINGLE:
        if stale != "model.safetensors" and (out_dir / stale).exists():
            (out_dir / stale).unlink()
    if n > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(new_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
