"""Weights around the base LLM: resizing for the signal tokens, the checkpoint's token rows, LoRA, and
exports for vLLM (a PEFT adapter directory and an HF base with the resized vocabulary).

Every mismatch between a checkpoint and the base raises CheckpointError naming its cause and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from nextgpt.config import LLMConfig
from nextgpt.errors import CheckpointError
from nextgpt.llm.signal_tokens import LAYOUTS, get_layout

logger = logging.getLogger(__name__)

PREPARE_HINT = (
    "build the right base with `nextgpt prepare-vicuna` (or `nextgpt init-tiny` for the tiny profile)"
)


def copy_token_rows(
    model: Any,
    cfg: LLMConfig,
    embed_tokens: torch.Tensor | None,
    lm_head: torch.Tensor | None,
    *,
    base_vocab: int,
) -> None:
    """Check and copy the checkpoint's full (V, H) embedding / head matrices into the resized model."""
    vocab, hidden = model.get_input_embeddings().weight.shape
    for name, rows in (("embed_tokens", embed_tokens), ("lm_head", lm_head)):
        if rows is None:
            continue
        _check_rows(name, rows, vocab=int(vocab), base_vocab=base_vocab, hidden=int(hidden), cfg=cfg)
        target = model.get_input_embeddings() if name == "embed_tokens" else model.get_output_embeddings()
        with torch.no_grad():
            target.weight.copy_(rows.to(target.weight.dtype))


def resize_embeddings(model: Any, vocab: int) -> None:
    """Resize to `vocab` rows. New rows get seeded random values (N(0, initializer_range)) so that a
    tiny model without a checkpoint is deterministic; a checkpoint overwrites them anyway."""
    old = model.get_input_embeddings().weight.shape[0]
    if old == vocab:
        return
    model.resize_token_embeddings(vocab, mean_resizing=False)
    gen = torch.Generator().manual_seed(0)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for table in (model.get_input_embeddings(), model.get_output_embeddings()):
            new = torch.randn(vocab - old, table.weight.shape[1], generator=gen) * std
            table.weight[old:] = new.to(table.weight.dtype)


def _check_rows(
    name: str, rows: torch.Tensor, *, vocab: int, base_vocab: int, hidden: int, cfg: LLMConfig
) -> None:
    n_signal = len(get_layout(cfg.signal_layout).all_tokens)
    if rows.dim() != 2:
        raise CheckpointError(f"checkpoint {name} must be (vocab, hidden), got shape {tuple(rows.shape)}")
    if rows.shape[1] != hidden:
        raise CheckpointError(
            f"checkpoint {name} rows are {rows.shape[1]} wide but the base at {cfg.base_dir} has hidden size "
            f"{hidden}: the checkpoint was trained on a different model size (e.g. 4096 = 7B, 5120 = 13B); "
            f"use the base it was trained on; {PREPARE_HINT}"
        )
    if rows.shape[0] != vocab:
        ckpt_base = rows.shape[0] - n_signal
        msg = (
            f"checkpoint {name} has {rows.shape[0]} token rows = a {ckpt_base}-token base + {n_signal} "
            f"{cfg.signal_layout} signal tokens, but the base at {cfg.base_dir} has {base_vocab} tokens "
            f"(-> {vocab}): this is not the base the checkpoint was trained on"
        )
        if cfg.signal_layout == "legacy":
            msg += (
                " (NExT-GPT 7b_tiva_v0 was trained on the Vicuna-7B v0 (LLaMA-1) base with 32000 tokens; a "
                "Llama-2/Vicuna-v1.5 base gives this error)"
            )
        for other in LAYOUTS.values():
            if other.name != cfg.signal_layout and rows.shape[0] == base_vocab + len(other.all_tokens):
                msg += f"; the row count fits the {other.name} layout: set llm.signal_layout={other.name!r}"
        raise CheckpointError(f"{msg}; {PREPARE_HINT}")


def attach_lora(model: Any, cfg: LLMConfig, lora: dict[str, torch.Tensor]) -> PeftModel:
    """Wrap with peft and load every LoRA tensor; any missing, unexpected or misshapen key is an error."""
    assert cfg.lora is not None
    peft_cfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, peft_cfg)
    expected = {k: v.shape for k, v in wrapped.state_dict().items() if ".lora_" in k}
    missing = sorted(set(expected) - set(lora))
    unexpected = sorted(set(lora) - set(expected))
    bad_shape = [
        f"{k}: checkpoint {tuple(lora[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(lora))
        if tuple(lora[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or bad_shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad_shape)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(
            f"LoRA tensors do not fit LoRA(r={cfg.lora.r}, targets={list(cfg.lora.target_modules)}) on the "
            f"base at {cfg.base_dir}: " + "; ".join(parts) + ". Check llm.lora (r, target_modules) and that "
            "the keys look like base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        )
    result = wrapped.load_state_dict(lora, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return wrapped


def export_peft_adapter(model: Any, out_dir: Path) -> Path:
    """Write the LoRA as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    if not isinstance(model, PeftModel):
        raise CheckpointError("this model has no LoRA to export; load it with the checkpoint's LoRA tensors")
    # The resized token rows live in the exported base; the adapter carries LoRA only.
    model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return out_dir


def export_merged_base(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Write the base with resized vocab and token rows (LoRA *not* merged) plus the tokenizer."""
    base: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value  # peft keeps the wrapped Linear as base_layer
    fresh = LlamaForCausalLM(base.config)
    fresh.load_state_dict(state, strict=True)
    fresh.generation_config = base.generation_config
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
