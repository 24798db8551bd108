"""The language model of NExT-GPT: Vicuna + LoRA with signal tokens, run with plain transformers.

This is the HF engine and the reference the vLLM engine is tested against. `generate` runs its own
decode loop (KV cache on, one token per step) because it needs, for every generated token, the
last-layer hidden state after the final norm *at that token's own position* (the state computed when
the token is fed as input; the training convention), and because requested modalities are guaranteed
by constrained continuation, which `model.generate` cannot express.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, LlamaForCausalLM

from nextgpt.config import LLMConfig, SamplingOptions
from nextgpt.errors import CheckpointError, InvalidInput, ModelNotReady
from nextgpt.llm.batch import BatchDecoder, DecodeRequest
from nextgpt.llm.decoding import CompletedSpan, DecodePolicy, TextStreamer, TokenRules
from nextgpt.llm.prompt import Segment, stop_strings
from nextgpt.llm.signal_tokens import SignalTokenIds, add_signal_tokens, get_layout
from nextgpt.llm.weights import (
    PREPARE_HINT,
    attach_lora,
    copy_token_rows,
    export_merged_base,
    export_peft_adapter,
    resize_embeddings,
)
from nextgpt.types import LLMOutput, Modality, SignalSpan

logger = logging.getLogger(__name__)


class EmbeddedPrompt(NamedTuple):
    embeds: torch.Tensor
    """(T, H) input embeddings of the whole prompt."""
    num_tokens: int
    """T: text tokens plus media tokens."""
    num_media_tokens: int


class NextGPTLanguageModel:
    """Tokenizer + (LoRA-wrapped) LlamaForCausalLM + signal token ids. Build it with `load`."""

    def __init__(self, cfg: LLMConfig, tokenizer: Any, model: Any, ids: SignalTokenIds) -> None:
        """`model`: a LlamaForCausalLM, or a peft PeftModel around one."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model
        self.ids = ids
        placement = cfg.placement.resolve()
        self.device = torch.device(placement.device)
        self.dtype = placement.torch_dtype
        self._continuation = _no_prefix_backend(tokenizer)
        # A stop string may be tokenized with or without a leading space: match both.
        stops = [self.encode(p + s, first=False) for s in stop_strings(cfg.prompt_format) for p in ("", " ")]
        self.rules = TokenRules.build(ids, tokenizer.eos_token_id, stops)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        cfg: LLMConfig,
        *,
        embed_tokens: torch.Tensor | None = None,
        lm_head: torch.Tensor | None = None,
        lora: dict[str, torch.Tensor] | None = None,
    ) -> NextGPTLanguageModel:
        """Load the base, add the signal tokens, then the checkpoint's token rows and LoRA.

        `embed_tokens` / `lm_head` are the checkpoint's full (V, H) matrices; `lora` holds tensors keyed as
        in a peft PeftModel's state_dict(). Every mismatch raises CheckpointError naming its cause.
        """
        base_dir = Path(cfg.base_dir)
        placement = cfg.placement.resolve()
        # 1. check inputs
        if not (base_dir / "config.json").is_file():
            raise ModelNotReady(
                f"LLM base directory {base_dir} is missing or has no config.json; {PREPARE_HINT}"
            )
        if lora and cfg.lora is None:
            raise CheckpointError(
                f"the checkpoint carries {len(lora)} LoRA tensors but the LLM config has lora=None; "
                "set llm.lora to the checkpoint's LoRA shape (r, alpha)"
            )
        # 2. base tokenizer and model
        logger.info("loading LLM base from %s (%s, %s)", base_dir, placement.device, placement.dtype)
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        base_vocab = len(tokenizer)
        model: Any = LlamaForCausalLM.from_pretrained(base_dir, dtype=placement.torch_dtype)
        # 3. signal tokens and resized embeddings
        layout = get_layout(cfg.signal_layout)
        ids = add_signal_tokens(tokenizer, layout)
        vocab = len(tokenizer)
        resize_embeddings(model, vocab)
        # 4. checkpoint token rows
        hidden = int(model.config.hidden_size)
        copy_token_rows(model, cfg, embed_tokens, lm_head, base_vocab=base_vocab)
        # 5. LoRA
        if cfg.lora is not None and lora:
            model = attach_lora(model, cfg, lora)
        model.to(placement.device)
        model.eval()
        logger.info("LLM ready: vocab %d -> %d, hidden %d, LoRA %s", base_vocab, vocab, hidden, bool(lora))
        return cls(cfg, tokenizer, model, ids)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    # ------------------------------------------------------------------ prompt
    def encode(self, text: str, *, first: bool) -> list[int]:
        """Token ids of one text piece. Only the first piece gets BOS and SentencePiece's dummy-prefix
        space: a piece that continues after a media block is taken literally."""
        if first:
            # BOS explicitly: tokenizers converted from a bare tokenizer.model may not add it themselves.
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return [self.tokenizer.bos_token_id, *ids]
        return list(self._continuation.encode(text, add_special_tokens=False).ids)

    def token_embeds(self, token_ids: list[int]) -> torch.Tensor:
        """(N, H) input embedding rows of `token_ids`."""
        table = self.model.get_input_embeddings()
        return table(torch.tensor(token_ids, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def embed(self, segments: list[Segment]) -> EmbeddedPrompt:
        """Embed text pieces and splice in media blocks: (T, H) plus token counts."""
        parts: list[torch.Tensor] = []
        media_tokens = 0
        for i, seg in enumerate(segments):
            if isinstance(seg, str):
                token_ids = self.encode(seg, first=i == 0)
                if token_ids:
                    parts.append(self.token_embeds(token_ids))  # (n, H)
            else:
                if seg.dim() != 2 or seg.shape[1] != self.hidden_size:
                    raise InvalidInput(
                        f"media block {i} has shape {tuple(seg.shape)}; "
                        f"expected (n_tokens, {self.hidden_size})"
                    )
                if i == 0:  # BOS still comes first, as in training
                    parts.append(self.token_embeds([self.tokenizer.bos_token_id]))
                parts.append(seg.to(self.device, self.dtype))
                media_tokens += seg.shape[0]
        embeds = torch.cat(parts, dim=0)  # (T, H)
        return EmbeddedPrompt(embeds, embeds.shape[0], media_tokens)

    # ------------------------------------------------------------------ generation
    def _forward(self, embeds: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One step: (T, H) inputs -> logits (T, V), last-layer normed states (T, H), cache."""
        out = self.model(
            inputs_embeds=embeds[None], past_key_values=cache, use_cache=True, output_hidden_states=True
        )
        return out.logits[0].float(), out.hidden_states[-1][0], out.past_key_values

    def policy(
        self, options: SamplingOptions, prompt_len: int, force: Sequence[Modality] = ()
    ) -> DecodePolicy:
        """The decoding rules of one request on this model (raises InvalidInput when it cannot fit)."""
        return DecodePolicy(self.rules, options, prompt_len, self.cfg.max_context, force)

    def streamer(self, on_text: Callable[[str], None] | None) -> TextStreamer:
        return TextStreamer(self.tokenizer, self.rules, on_text)

    def span(self, completed: CompletedSpan, hidden: torch.Tensor) -> SignalSpan:
        """A span with its (N, H) last-layer states and the signal tokens' input embeddings."""
        return SignalSpan(
            modality=completed.modality,
            start=completed.start,
            token_ids=list(completed.token_ids),
            hidden=hidden.clone(),
            token_embeds=self.token_embeds(list(completed.token_ids)).clone(),
        )

    def generate(
        self,
        prompt_embeds: torch.Tensor,
        options: SamplingOptions,
        *,
        force: Sequence[Modality] = (),
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_span: Callable[[SignalSpan], None] | None = None,
    ) -> LLMOutput:
        """Decode a reply from (T, H) prompt embeddings (see the module docstring): a batch of one.

        `on_step(n)` runs before each step with the number of tokens generated so far; it may raise to
        abandon the request (the services' cancellation: the exception propagates). `on_span` gets each
        complete span as soon as its last token was fed (its states are final then)."""
        decoder = BatchDecoder(self)
        decoder.add(DecodeRequest(prompt_embeds, options, force, on_text, on_step, on_span))
        while True:
            for _, outcome in decoder.step():
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome

    @torch.inference_mode()
    def hidden_states_for(self, prompt_embeds: torch.Tensor, generated_ids: list[int]) -> torch.Tensor:
        """(N, H) last-layer normed states at the generated positions, from one full forward pass."""
        gen = self.token_embeds(generated_ids)
        embeds = torch.cat([prompt_embeds.to(self.device, self.dtype), gen], dim=0)  # (T + N, H)
        out = self.model(inputs_embeds=embeds[None], use_cache=False, output_hidden_states=True)
        return out.hidden_states[-1][0, prompt_embeds.shape[0] :]

    # ------------------------------------------------------------------ export (for vLLM)
    def export_peft_adapter(self, out_dir: Path) -> Path:
        """Write the LoRA as a PEFT adapter directory (adapter_config.json + safetensors)."""
        return export_peft_adapter(self.model, Path(out_dir))

    def export_merged_base(self, out_dir: Path) -> Path:
        """Write an HF Llama directory of the base with the resized vocab and the checkpoint's token rows
        (LoRA not merged) plus the tokenizer with the signal tokens: what vLLM loads."""
        return export_merged_base(self.model, self.tokenizer, Path(out_dir))


# ---------------------------------------------------------------------- helpers
def _no_prefix_backend(tokenizer: Any) -> Tokenizer:
    """A copy of the fast tokenizer backend that never prepends SentencePiece's dummy-prefix space."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    pre = backend.pre_tokenizer
    if isinstance(pre, pre_tokenizers.Metaspace):
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    else:
        logger.warning("tokenizer pre-tokenizer %s is not Metaspace; pieces may get an extra space", pre)
    return backend
