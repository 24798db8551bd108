"""Which parameters each stage trains, set explicitly (design 2; the reference set them implicitly: its
newer code trained nothing in stage 3, its legacy code trained whole embedding matrices by accident).

| stage    | trained                                                                       |
|----------|-------------------------------------------------------------------------------|
| encoder  | input projector + new token rows of the input embedding                        |
| decoder  | output projectors + new token rows of the input embedding and of the LM head   |
| instruct | LoRA + input projector + output projectors + new rows of embedding and LM head |

The embedding and LM-head matrices are whole parameters, so "only the new rows" is a gradient mask: a
hook zeroes the gradient of every base row. With Adam and no weight decay a zero gradient is a zero
update, so base rows stay bit-identical (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from nextgpt.training.config import Stage
from nextgpt.training.model import TrainableNextGPT

logger = logging.getLogger(__name__)


@dataclass
class TrainableSet:
    """The parameters one stage trains; `row_masks` names the row-masked matrices (first trained row)."""

    stage: Stage
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    row_masks: dict[str, int] = field(default_factory=dict)
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Trained scalars: full parameters plus only the unmasked rows of masked ones."""
        total = 0
        for name, p in self.params.items():
            if name in self.row_masks:
                total += (p.shape[0] - self.row_masks[name]) * p[0].numel()
            else:
                total += p.numel()
        return total

    def summary(self) -> str:
        """Count and names, grouped (printed at the start of every run)."""
        groups: dict[str, int] = {}
        for name, p in self.params.items():
            if name in self.row_masks:
                first = self.row_masks[name]
                label = f"{name}[{first}:{p.shape[0]}] (new token rows only)"
                groups[label] = (p.shape[0] - first) * p[0].numel()
                continue
            key = _group(name)
            groups[key] = groups.get(key, 0) + p.numel()
        lines = [f"stage {self.stage}: {self.count:,} trainable parameters in {len(self.params)} tensors"]
        lines += [f"  {n:>12,}  {g}" for g, n in groups.items()]
        return "\n".join(lines)

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def _group(name: str) -> str:
    if ".lora_" in name:
        return "LoRA (" + ".".join(p for p in name.split(".") if p.endswith("_proj")) + " of every layer)"
    parts = name.split(".")
    return ".".join(parts[:2]) + ".*" if parts[0] == "output_projectors" else parts[0] + ".*"


def set_trainables(model: TrainableNextGPT, stage: Stage, *, new_rows: bool = True) -> TrainableSet:
    """Freeze everything, then unfreeze exactly the stage's parameters (see the module table)."""
    model.requires_grad_(False)
    chosen = TrainableSet(stage)
    named = dict(model.named_parameters())

    def take(prefix_or_pred: str) -> None:
        for name, p in named.items():
            if name.startswith(prefix_or_pred) or (prefix_or_pred == "lora" and ".lora_" in name):
                chosen.params[name] = p

    if stage in ("encoder", "instruct"):
        take("input_projector.")
    if stage in ("decoder", "instruct"):
        take("output_projectors.")
    if stage == "instruct":
        take("lora")
    if new_rows:
        matrices = [model.embedding().weight]
        if stage in ("decoder", "instruct"):
            matrices.append(model.lm_head().weight)
        for weight in matrices:
            name = next(n for n, p in named.items() if p is weight)
            chosen.params[name] = named[name]  # `weight` itself, typed as the Parameter it is
            chosen.row_masks[name] = model.base_vocab
            weight.requires_grad_(True)
            chosen.hooks.append(weight.register_hook(_row_mask_hook(weight, model.base_vocab)))
    for p in chosen.params.values():
        p.requires_grad_(True)
    return chosen


def _row_mask_hook(weight: torch.Tensor, first_row: int) -> Callable[[torch.Tensor], torch.Tensor]:
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[first_row:] = 1.0

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.device, grad.dtype)  # base rows get exactly zero gradient

    return hook
