"""Input projectors: ImageBind embeddings -> LLM input embeddings (design 1.3).

Two layouts:
- `LinearInputProjector` (legacy, the released checkpoint): one L2-normalised 1024-d embedding per
  medium -> `Linear(1024, 4096)` -> one LLM token. Its state-dict keys are exactly `weight` and `bias`,
  so the released `llama_proj.{weight,bias}` load into it unchanged.
- `GroupInputProjector` (v1.5 layout): ImageBind patch tokens -> a GroupViT-style grouping block ->
  `num_tokens` LLM tokens. No public weights exist; the design below is ours.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextgpt.config import InputProjectorConfig
from nextgpt.errors import InvalidInput

logger = logging.getLogger(__name__)


class LinearInputProjector(nn.Module):
    """One embedding -> one LLM token.

    The parameters sit on the module itself (not on a child `nn.Linear`) so that the state-dict keys are
    `weight` / `bias`, matching the released `llama_proj.*` after the prefix is stripped.
    """

    def __init__(self, cfg: InputProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.out_dim, cfg.in_dim))  # (H, E)
        self.bias = nn.Parameter(torch.empty(cfg.out_dim))  # (H,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Linear, so a freshly trained stage-1 projector starts as usual.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.cfg.in_dim) if self.cfg.in_dim > 0 else 0.0
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, embeds: Tensor) -> Tensor:
        """(B, E) encoder embeddings -> (B, 1, H) LLM input embeddings."""
        if embeds.dim() != 2 or embeds.shape[-1] != self.cfg.in_dim:
            raise InvalidInput(
                f"linear input projector expects embeddings of shape [B, {self.cfg.in_dim}], got "
                f"{list(embeds.shape)}; pass one pooled encoder embedding per medium"
            )
        x = F.linear(embeds.to(self.weight.dtype), self.weight, self.bias)  # (B, H)
        return x.unsqueeze(1)  # (B, 1, H)


def _num_heads(width: int) -> int:
    """Heads of 64 channels when the width allows it (as in Llama), otherwise one head."""
    return width // 64 if width % 64 == 0 and width >= 64 else 1


class GroupInputProjector(nn.Module):
    """Patch tokens -> `num_tokens` LLM tokens through one GroupViT-style grouping block.

    Our design (no public weights to match), all at the LLM width H:
    1. `patch_proj`: LayerNorm + Linear E -> H on every patch token.               # (B, P, H)
    2. learned group tokens (1, G, H) gather context from the patches with multi-head cross-attention
       (pre-norm, residual), like GroupViT's pre-assignment attention.             # (B, G, H)
    3. assignment: each *patch* distributes itself over the groups (softmax over the group axis, as in
       GroupViT's assign-attention, so groups compete for patches instead of all looking at the same
       salient ones); each group then takes the assignment-weighted mean of the patch values and adds it
       to its token (residual). GroupViT uses hard Gumbel assignment for segmentation; we keep it soft
       because we only need a differentiable summary, not a segmentation.
    4. a pre-norm MLP (residual). No final norm: the LLM sees the raw output, as with the linear
       projector, and the first training stage learns its scale.
    """

    def __init__(self, cfg: InputProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.out_dim
        self.patch_norm = nn.LayerNorm(cfg.in_dim)
        self.patch_proj = nn.Linear(cfg.in_dim, width)
        self.group_tokens = nn.Parameter(torch.randn(1, cfg.num_tokens, width) * 0.02)
        # 2. context gathering
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, _num_heads(width), batch_first=True)
        # 3. assignment
        self.norm_assign = nn.LayerNorm(width)
        self.assign_q = nn.Linear(width, width)
        self.assign_k = nn.Linear(width, width)
        self.assign_v = nn.Linear(width, width)
        self.assign_out = nn.Linear(width, width)
        # 4. MLP
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, patches: Tensor) -> Tensor:
        """(B, P, E) patch tokens -> (B, G, H) LLM input embeddings, G = cfg.num_tokens."""
        if patches.dim() != 3 or patches.shape[-1] != self.cfg.in_dim:
            raise InvalidInput(
                f"group input projector expects patch tokens of shape [B, P, {self.cfg.in_dim}], got "
                f"{list(patches.shape)}; pass the encoder's patch tokens, not a pooled embedding"
            )
        x = self.patch_proj(self.patch_norm(patches.to(self.patch_proj.weight.dtype)))  # (B, P, H)
        g = self.group_tokens.expand(x.shape[0], -1, -1)  # (B, G, H)

        kv = self.norm_kv(x)  # (B, P, H)
        attended, _ = self.cross_attn(self.norm_q(g), kv, kv, need_weights=False)
        g = g + attended  # (B, G, H)

        q = self.assign_q(self.norm_assign(g))  # (B, G, H)
        logits = q @ self.assign_k(kv).transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, G, P)
        assign = logits.softmax(dim=1)  # each patch spreads over the groups
        assign = assign / (assign.sum(dim=-1, keepdim=True) + 1e-6)  # each group: weighted mean
        g = g + self.assign_out(assign @ self.assign_v(kv))  # (B, G, H)

        return g + self.mlp(self.norm_mlp(g))  # (B, G, H)


def build_input_projector(cfg: InputProjectorConfig) -> LinearInputProjector | GroupInputProjector:
    """The projector that `cfg.kind` names."""
    if cfg.kind == "linear":
        return LinearInputProjector(cfg)
    return GroupInputProjector(cfg)
