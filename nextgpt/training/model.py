"""The trainable NExT-GPT: the core components wired for teacher-forced training.

One `nn.Module` holds exactly what any stage may train (input projector, the LLM with LoRA attached, the
three output projectors); the frozen ImageBind encoder is kept beside it, outside the module, because it
only ever runs once per medium (its embeddings are cached by the collator). `forward(batch)` returns the
loss parts; which parameters learn is decided by `nextgpt.training.trainables`, never here.

Hidden states follow design 1.4: the LLM's last layer after the final norm, at the signal tokens' own
positions (the states the inference loop reads when it feeds each token).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn

from nextgpt.checkpoint import DeltaCheckpoint, check_against_profile, load_delta, load_into
from nextgpt.config import LoRAConfig, Placement, ProfileConfig
from nextgpt.errors import CheckpointError, ConfigError
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.signal_tokens import get_layout
from nextgpt.projectors.input import build_input_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.training.collate import Batch
from nextgpt.training.losses import alignment_distance, caption_ce
from nextgpt.types import MODALITIES, Modality

logger = logging.getLogger(__name__)


def resolve_init(init: str, profile: ProfileConfig) -> DeltaCheckpoint | None:
    """The delta a run starts from (see `TrainConfig.init`); None = fresh projectors and zero LoRA."""
    if init == "base":
        return None
    if init == "profile":
        if profile.delta_checkpoint is None:
            raise ConfigError(f"init=profile but profile {profile.name!r} has no delta_checkpoint")
        return load_delta(profile.delta_checkpoint)
    path = Path(init)
    if path.is_dir():
        path = path / "pytorch_model.pt"
    if not path.is_file():
        raise ConfigError(
            f"init={init!r}: no such checkpoint; use base, profile, a pytorch_model.pt or a run folder "
            "holding one (each stage writes <output_dir>/pytorch_model.pt)"
        )
    return load_delta(path)


class TrainableNextGPT(nn.Module):
    """Input projector + LLM (LoRA attached) + output projectors, with a teacher-forced `forward`."""

    def __init__(
        self,
        profile: ProfileConfig,
        lm: NextGPTLanguageModel,
        input_projector: nn.Module,
        output_projectors: dict[Modality, OutputProjector],
    ) -> None:
        super().__init__()
        self.profile = profile
        self.lm = lm  # tokenizer, signal ids and prompt tokenization (not a module: `llm` is)
        self.llm = lm.model
        self.input_projector = input_projector
        self.output_projectors = nn.ModuleDict({m: p for m, p in output_projectors.items()})  # str keys
        self.n_new_rows = len(get_layout(profile.llm.signal_layout).all_tokens)
        self.base_vocab = lm.vocab_size - self.n_new_rows

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        profile: ProfileConfig,
        *,
        init: DeltaCheckpoint | None,
        lora: LoRAConfig | None,
        seed: int,
        device: str = "cpu",
    ) -> TrainableNextGPT:
        """Load the base LLM, the init delta's rows / LoRA / projectors, and fill what is missing fresh
        (seeded): new projectors, and LoRA with B = 0 so that it starts as the identity."""
        lora = lora or profile.llm.lora
        if lora is None:
            raise ConfigError("training needs a LoRA shape: set `lora` in the training config or llm.lora")
        llm_cfg = dataclasses.replace(profile.llm, lora=lora, placement=Placement("cpu", "float32"))
        if init is not None and init.lora and _lora_differs(init, lora):
            if any(bool(t.any()) for k, t in init.lora.items() if ".lora_B." in k):
                raise ConfigError(
                    f"the init checkpoint's LoRA (r={init.lora_rank}, {list(init.lora_target_modules)}) "
                    f"differs from the configured one (r={lora.r}, {list(lora.target_modules)}); "
                    "set `lora` to the checkpoint's shape"
                )
            logger.info("init LoRA is untrained (B = 0) and of another shape: starting a fresh LoRA")
            init = dataclasses.replace(init, lora={})
        if init is not None:
            check_against_profile(init, dataclasses.replace(profile, llm=llm_cfg), require_all=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm = NextGPTLanguageModel.load(
                llm_cfg,
                embed_tokens=init.embed_tokens if init else None,
                lm_head=init.lm_head if init else None,
                lora=init.lora if init and init.lora else None,
            )
            if not isinstance(lm.model, PeftModel):
                peft_cfg = LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    bias="none",
                    task_type="CAUSAL_LM",
                )
                lm.model = get_peft_model(lm.model, peft_cfg)  # B = 0: the base model's outputs
            input_projector = build_input_projector(profile.input_projector)
            output_projectors = {m: OutputProjector(profile.output_projectors[m]) for m in MODALITIES}
        if init is not None:
            if init.input_projector:
                load_into(input_projector, init.input_projector, "input projector")
            for modality, state in init.output_projectors.items():
                load_into(output_projectors[modality], state, f"{modality} output projector")
        model = cls(profile, lm, input_projector, output_projectors)
        model.to_device(torch.device(device))
        return model

    def attach_denoiser(self, denoiser: Any) -> None:
        """A frozen `Denoiser`; kept outside the module tree so its UNet is neither saved nor trained."""
        self.__dict__["denoiser"] = denoiser

    def to_device(self, device: torch.device) -> None:
        self.to(device)
        self.lm.device = device

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embedding(self) -> nn.Embedding:
        return self.llm.get_input_embeddings()

    def lm_head(self) -> nn.Linear:
        return self.llm.get_output_embeddings()

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Teacher-forced pass over a batch: {"ce", "align", "denoise"}; "align" (the mean over the batch's
        output modalities of each one's mean distance, each also reported as "align_<modality>", detached)
        only when the batch has output spans, "denoise" only with a denoiser attached (`attach_denoiser`)
        and image latents."""
        device = self.device
        input_ids = batch.input_ids.to(device)  # (B, T)
        embeds = self.embedding()(input_ids)  # (B, T, H)
        # 1. splice the projected media in place of their placeholder tokens
        if batch.media_embeds is not None and len(batch.media_pos):
            proj = self.input_projector(batch.media_embeds.to(device))  # (M, n, H)
            flat = proj.reshape(-1, proj.shape[-1]).to(embeds.dtype)  # (M * n, H)
            b_idx = torch.tensor([b for b, _ in batch.media_pos], device=device)
            t_idx = torch.tensor([t for _, t in batch.media_pos], device=device)
            embeds = embeds.index_put((b_idx, t_idx), flat)
        # 2. the LLM, all positions at once
        out = self.llm(
            inputs_embeds=embeds, attention_mask=batch.attention_mask.to(device), output_hidden_states=True
        )
        losses: dict[str, Tensor] = {"ce": caption_ce(out.logits, batch.labels.to(device))}
        # 3. output projectors on the signal-token states of every output span
        if batch.outputs:
            hidden = out.hidden_states[-1]  # (B, T, H), last layer after the final norm
            per_modality: dict[Modality, Tensor] = {}  # each modality's mean alignment distance
            denoiser = self.__dict__.get("denoiser")
            for modality in MODALITIES:
                items = [o for o in batch.outputs if o.modality == modality]
                if not items:
                    continue
                n = len(self.lm.ids.spans[modality])
                h = torch.stack([hidden[o.batch, o.start : o.start + n] for o in items])  # (S, N, H)
                e = torch.stack([embeds[o.batch, o.start : o.start + n] for o in items])  # (S, N, H)
                pred = self.output_projectors[modality](h, e)  # (S, Q, D) or (S, D)
                target = torch.stack([o.target for o in items]).to(device, pred.dtype)
                per_modality[modality] = alignment_distance(pred, target)
                with_latents = [i for i, o in enumerate(items) if o.latents is not None]
                if modality == "image" and denoiser is not None and with_latents:
                    latents = torch.stack(
                        [o.latents for o in items if o.latents is not None]
                    )  # (S', C, h, w)
                    losses["denoise"] = denoiser.loss(pred[with_latents], latents)
            # The mean of the modalities' means: a mean over all tokens would give an image span (77 tokens)
            # 77 times the say of an audio span (1 token), and the shared LoRA then learned nothing of the
            # audio requests (every audio span projected to the same point).
            losses["align"] = torch.stack(list(per_modality.values())).mean()
            losses.update({f"align_{m}": d.detach() for m, d in per_modality.items()})
        return losses

    # ------------------------------------------------------------------ weights out
    def to_delta(self) -> DeltaCheckpoint:
        """The released-layout delta of the current weights (what `export` writes)."""

        def cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().float().cpu().clone() for k, v in state.items()}

        lora = {k: v for k, v in self.llm.state_dict().items() if ".lora_" in k}
        return DeltaCheckpoint(
            input_projector=cpu(self.input_projector.state_dict()),
            embed_tokens=self.embedding().weight.detach().float().cpu().clone(),
            lm_head=self.lm_head().weight.detach().float().cpu().clone(),
            lora=cpu(lora),
            # the ModuleDict's keys are the modalities `build` gave it
            output_projectors={
                cast(Modality, m): cpu(p.state_dict()) for m, p in self.output_projectors.items()
            },
        )

    def trainable_state(self) -> dict[str, Tensor]:
        """Everything a stage may change, small: projectors, LoRA, and only the *new* token rows."""
        state: dict[str, Tensor] = {}
        for k, v in self.input_projector.state_dict().items():
            state[f"input_projector.{k}"] = v
        for m, p in self.output_projectors.items():
            for k, v in p.state_dict().items():
                state[f"output_projectors.{m}.{k}"] = v
        for k, v in self.llm.state_dict().items():
            if ".lora_" in k:
                state[f"lora.{k}"] = v
        state["new_rows.embed_tokens"] = self.embedding().weight[self.base_vocab :]
        state["new_rows.lm_head"] = self.lm_head().weight[self.base_vocab :]
        return {k: v.detach().contiguous().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of `trainable_state` (strict: every key must be there)."""
        own = self.trainable_state()
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise CheckpointError(
                f"trainable state does not fit: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        with torch.no_grad():
            load_into(self.input_projector, _strip(state, "input_projector."), "input projector")
            for m, p in self.output_projectors.items():
                load_into(p, _strip(state, f"output_projectors.{m}."), f"{m} output projector")
            lora = _strip(state, "lora.")
            result = self.llm.load_state_dict(lora, strict=False)
            if result.unexpected_keys:
                raise CheckpointError(f"unexpected LoRA keys {result.unexpected_keys[:5]}")
            self.embedding().weight[self.base_vocab :] = state["new_rows.embed_tokens"].to(
                self.embedding().weight.dtype
            )
            self.lm_head().weight[self.base_vocab :] = state["new_rows.lm_head"].to(
                self.lm_head().weight.dtype
            )


def _lora_differs(delta: DeltaCheckpoint, lora: LoRAConfig) -> bool:
    return delta.lora_rank != lora.r or set(delta.lora_target_modules) != set(lora.target_modules)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
