"""Output projector: signal-token hidden states -> a diffusion decoder's conditioning (design 1.4).

One per modality. Attribute names (`fc`, `tfm`, `model`, `query_embs`) give the released state-dict keys
under `gen_text_hidden_fcs{,_video,_audio}.0.`, so the released weights load without renaming.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextgpt.config import OutputProjectorConfig
from nextgpt.errors import ConfigError, InvalidInput

logger = logging.getLogger(__name__)


class OutputProjector(nn.Module):
    """`x = hidden + token_embeds -> fc -> Transformer(src=x, tgt=queries) -> model`.

    The learned queries fix the output length Q (77 rows for SD / Zeroscope, 1 for AudioLDM) whatever the
    number N of signal tokens. No masks and no positional encoding: the released model has none, and the
    signal tokens' own embeddings already tell the positions apart.
    """

    def __init__(self, cfg: OutputProjectorConfig) -> None:
        super().__init__()
        if cfg.normalize and cfg.num_queries != 1:
            raise ConfigError(
                f"output projector normalize=True needs num_queries=1 (one CLAP vector), got "
                f"num_queries={cfg.num_queries}"
            )
        self.cfg = cfg
        self.fc = nn.Linear(cfg.in_dim, cfg.d_model)
        with warnings.catch_warnings():
            # norm_first disables the nested-tensor fast path; torch warns about it on every build.
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.tfm = nn.Transformer(
                d_model=cfg.d_model,
                nhead=cfg.nhead,
                num_encoder_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers,
                dim_feedforward=cfg.dim_feedforward,
                dropout=0.0,
                activation="relu",
                batch_first=True,
                norm_first=True,
            )
        self.model = nn.Linear(cfg.d_model, cfg.out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.d_model) * 0.02)

    def check_inputs(self, hidden: Tensor, token_embeds: Tensor) -> None:
        """Raise InvalidInput naming the expected and the received shapes."""
        n, width = self.cfg.num_signal_tokens, self.cfg.in_dim
        for name, t in (("hidden", hidden), ("token_embeds", token_embeds)):
            if t.dim() != 3 or t.shape[1] != n or t.shape[2] != width:
                raise InvalidInput(
                    f"output projector {name} must have shape [B, {n}, {width}] (B spans x "
                    f"{n} signal tokens x LLM width), got {list(t.shape)}"
                )
        if hidden.shape != token_embeds.shape:
            raise InvalidInput(
                f"output projector hidden {list(hidden.shape)} and token_embeds "
                f"{list(token_embeds.shape)} must have the same shape"
            )

    def forward(self, hidden: Tensor, token_embeds: Tensor) -> Tensor:
        """(B, N, in_dim) twice -> (B, Q, out_dim), or (B, out_dim) L2-normalised when cfg.normalize."""
        self.check_inputs(hidden, token_embeds)
        dtype = self.fc.weight.dtype
        x = hidden.to(dtype) + token_embeds.to(dtype)  # (B, N, in_dim)
        x = self.fc(x)  # (B, N, D)
        queries = self.query_embs.expand(x.shape[0], -1, -1)  # (B, Q, D)
        y = self.tfm(src=x, tgt=queries)  # (B, Q, D)
        y = self.model(y)  # (B, Q, out_dim)
        if self.cfg.normalize:
            # AudioLDM uses the vector as given; CLAP embeddings it was trained on are unit-norm.
            return F.normalize(y[:, 0], dim=-1)  # (B, out_dim)
        return y


def output_projector_param_count(cfg: OutputProjectorConfig) -> int:
    """Parameters of `OutputProjector(cfg)` by formula (no allocation); ~32 M at the released widths."""
    d, ff = cfg.d_model, cfg.dim_feedforward
    attn = 4 * d * d + 4 * d  # in_proj (3d x d + 3d) + out_proj (d x d + d)
    mlp = 2 * d * ff + ff + d
    enc_layer = attn + mlp + 2 * 2 * d  # 2 LayerNorms
    dec_layer = 2 * attn + mlp + 3 * 2 * d  # self + cross attention, 3 LayerNorms
    tfm = cfg.num_encoder_layers * enc_layer + cfg.num_decoder_layers * dec_layer + 2 * 2 * d  # final norms
    return (cfg.in_dim * d + d) + tfm + (d * cfg.out_dim + cfg.out_dim) + cfg.num_queries * d
