"""A tiny NExT-GPT delta with exactly the released key names (design 1.5), at tiny widths.

The embedding and LM-head matrices start from the tiny base Llama's own rows, so the delta fits that base
exactly as the released delta fits Vicuna-7B v0. LoRA B is non-zero on purpose: with the usual zero init
a test could not tell whether the LoRA was loaded at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from nextgpt import tiny_profile as dims
from nextgpt.checkpoint import SIGNAL_TOKEN_COUNTS, DeltaCheckpoint, save_delta
from nextgpt.config import ProfileConfig
from nextgpt.errors import CheckpointError, ModelNotReady
from nextgpt.projectors.input import build_input_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.types import MODALITIES

logger = logging.getLogger(__name__)

NEW_ROW_STD = 0.02
LORA_B_STD = 0.05
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _read_base(base_dir: Path) -> tuple[dict[str, int], Tensor, Tensor]:
    """config.json and the (V, H) embedding / LM-head matrices of an HF Llama directory."""
    config_path = base_dir / "config.json"
    if not config_path.is_file():
        raise ModelNotReady(f"base Llama config {config_path} not found; build the tiny base LLM first")
    config = json.loads(config_path.read_text())
    tensors: dict[str, Tensor] = {}
    for path in sorted(base_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    if "model.embed_tokens.weight" not in tensors:
        raise CheckpointError(f"no model.embed_tokens.weight in the safetensors files of {base_dir}")
    embed = tensors["model.embed_tokens.weight"]  # (V0, H)
    # A base with tied embeddings has no lm_head tensor; the delta still stores both, as released.
    lm_head = tensors.get("lm_head.weight", embed)  # (V0, H)
    return config, embed, lm_head


def _lora_shapes(config: dict[str, int], target: str) -> tuple[str, int, int]:
    """(block, in_features, out_features) of one Llama projection, from config.json."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    shapes = {
        "q_proj": ("self_attn", hidden, heads * head_dim),
        "k_proj": ("self_attn", hidden, kv_heads * head_dim),
        "v_proj": ("self_attn", hidden, kv_heads * head_dim),
        "o_proj": ("self_attn", heads * head_dim, hidden),
        "gate_proj": ("mlp", hidden, inter),
        "up_proj": ("mlp", hidden, inter),
        "down_proj": ("mlp", inter, hidden),
    }
    if target not in shapes:
        raise CheckpointError(f"LoRA target {target!r} unknown; use some of {sorted(shapes)}")
    return shapes[target]


def _grow(base: Tensor, n_new: int, gen: torch.Generator) -> Tensor:
    """Base rows copied, `n_new` small random rows appended for the signal tokens."""
    new = torch.randn(n_new, base.shape[1], generator=gen) * NEW_ROW_STD  # (n_new, H)
    return torch.cat([base.float(), new], dim=0)  # (V0 + n_new, H)


def build_tiny_delta(
    base_llama_dir: Path, out_path: Path, profile: ProfileConfig, seed: int = dims.SEED
) -> Path:
    """Write a tiny `pytorch_model.pt` in the released layout and return its path. Deterministic in `seed`."""
    base_llama_dir, out_path = Path(base_llama_dir), Path(out_path)
    config, base_embed, base_head = _read_base(base_llama_dir)
    hidden = int(config["hidden_size"])
    if hidden != profile.input_projector.out_dim:
        raise CheckpointError(
            f"base Llama at {base_llama_dir} is {hidden} wide but the profile's input projector writes "
            f"{profile.input_projector.out_dim}"
        )
    n_new = SIGNAL_TOKEN_COUNTS[profile.llm.signal_layout]
    gen = torch.Generator().manual_seed(seed)
    delta = DeltaCheckpoint(embed_tokens=_grow(base_embed, n_new, gen), lm_head=_grow(base_head, n_new, gen))

    lora = profile.llm.lora
    if lora is not None:
        for layer in range(int(config["num_hidden_layers"])):
            for target in lora.target_modules:
                block, d_in, d_out = _lora_shapes(config, target)
                key = f"base_model.model.model.layers.{layer}.{block}.{target}"
                a = torch.randn(lora.r, d_in, generator=gen) / d_in**0.5  # (r, in)
                b = torch.randn(d_out, lora.r, generator=gen) * LORA_B_STD  # (out, r)
                delta.lora[f"{key}.lora_A.default.weight"] = a
                delta.lora[f"{key}.lora_B.default.weight"] = b

    # Modules draw from the global RNG; fork it so that building a delta leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        delta.input_projector = _detached(build_input_projector(profile.input_projector).state_dict())
        for modality in MODALITIES:
            projector = OutputProjector(profile.output_projectors[modality])
            delta.output_projectors[modality] = _detached(projector.state_dict())

    save_delta(delta, out_path)
    logger.info(
        "wrote tiny delta %s: vocab %d, hidden %d, lora r=%s on %d layers",
        out_path,
        delta.vocab_size,
        hidden,
        delta.lora_rank,
        delta.lora_layers,
    )
    return out_path


def _detached(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
