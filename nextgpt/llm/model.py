"""The language model of NExT-GPT: Vicuna + LoRA with signal tokens, run with plain transformers.

This is the HF engine and the reference the vLLM engine is tested against. `generate` runs its own
decode loop (KV cache on, one token per step) because it needs, for every generated token, the
last-layer hidden state after the final norm *at that token's own position* (the state computed when
the token is fed as input; the training convention), and because requested modalities are guaranteed
by constrained continuation, which `model.generate` cannot express.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, LlamaForCausalLM

from nextgpt.config import GenerationOptions, LLMConfig
from nextgpt.errors import CheckpointError, InvalidInput, ModelNotReady
from nextgpt.llm.prompt import Segment, stop_strings
from nextgpt.llm.signal_tokens import SignalTokenIds, add_signal_tokens, find_spans, get_layout
from nextgpt.llm.weights import (
    PREPARE_HINT,
    attach_lora,
    copy_token_rows,
    export_merged_base,
    export_peft_adapter,
    resize_embeddings,
)
from nextgpt.types import MODALITIES, LLMOutput, Modality, SignalSpan

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
        # A stop string may be tokenized with or without a leading space (`▁###` is id 835 in LLaMA);
        # match both, longest first, so that the space goes with it.
        stops = {
            tuple(self._encode(p + s, first=False))
            for s in stop_strings(cfg.prompt_format)
            for p in ("", " ")
        }
        self._stop_ids = sorted((list(s) for s in stops if s), key=len, reverse=True)
        self._signal_ids = ids.all_ids

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
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
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
    def _encode(self, text: str, *, first: bool) -> list[int]:
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
                token_ids = self._encode(seg, first=i == 0)
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

    @torch.inference_mode()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        options: GenerationOptions,
        *,
        force: list[Modality] | tuple[Modality, ...] = (),
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> LLMOutput:
        """Decode a reply from (T, H) prompt embeddings (see the module docstring).

        `on_step(n)` runs before each decode step with the number of tokens generated so far; it may
        raise to abandon the request (the services' cancellation: the exception propagates)."""
        # 1. check inputs and the token budget
        prompt_len = int(prompt_embeds.shape[0])
        force = [m for m in MODALITIES if m in force]
        warnings: list[str] = []
        if prompt_len >= self.cfg.max_context:
            raise InvalidInput(
                f"the prompt has {prompt_len} tokens but max_context is {self.cfg.max_context}; "
                "shorten the conversation or send fewer media"
            )
        budget = options.max_new_tokens
        if prompt_len + budget > self.cfg.max_context:
            budget = self.cfg.max_context - prompt_len
            warnings.append(
                f"context overflow: prompt {prompt_len} + max_new_tokens {options.max_new_tokens} > "
                f"max_context {self.cfg.max_context}; generating at most {budget} tokens"
            )
        needed = sum(len(self.ids.spans[m]) for m in force)
        if needed > budget:
            raise InvalidInput(
                f"{budget} new tokens cannot hold the requested spans ({', '.join(force)}: {needed} signal "
                f"tokens); raise max_new_tokens to at least {needed}"
            )
        generator = _make_generator(options.seed, self.device)
        eos = self.tokenizer.eos_token_id

        # 2. prefill the prompt once
        logits, _, cache = self._forward(prompt_embeds.to(self.device, self.dtype), None)
        next_logits = logits[-1]  # (V,)

        ids: list[int] = []
        states: list[torch.Tensor] = []  # (H,) per fed token, aligned with ids
        queue: list[int] = []  # forced tokens to emit next
        forced: list[Modality] = []
        done: set[Modality] = set()
        finish: Literal["stop", "length"] = "length"
        streamer = _TextStreamer(self, on_text)

        def missing() -> list[Modality]:
            return [m for m in force if m not in done and not self._span_in_progress(ids, queue, m)]

        # 3. decode one token per step
        while True:
            if on_step is not None:
                on_step(len(ids))
            if not queue:
                reserve = sum(len(self.ids.spans[m]) for m in missing())
                if len(ids) + reserve >= budget or len(ids) >= budget:
                    if missing() and len(ids) < budget:
                        self._force_spans(missing(), queue, forced)
                        continue
                    finish = "length"
                    break
                token = _sample(
                    self._mask_unfit(next_logits, ids, force, done, budget - reserve), options, generator
                )
                stop_len = self._stop_match(ids + [token])
                if token == eos or stop_len:
                    if missing():  # the model would stop but a requested span is missing: insert it
                        if stop_len > 1:
                            cache.crop(prompt_len + len(ids) - (stop_len - 1))
                            del ids[-(stop_len - 1) :], states[-(stop_len - 1) :]
                        self._force_spans(missing(), queue, forced)
                        continue
                    if stop_len > 1:
                        del ids[-(stop_len - 1) :], states[-(stop_len - 1) :]
                    finish = "stop"
                    break
                pos = self.ids.position(token)
                if pos is not None and pos[0] in force:
                    # Never leave a requested modality's span partial: complete it token by token.
                    span = list(self.ids.spans[pos[0]])
                    token, queue[:0] = span[0], span[1:]
            else:
                token = queue.pop(0)
            ids.append(token)
            pos = self.ids.position(token)
            if pos is not None and pos[1] == len(self.ids.spans[pos[0]]) - 1 and self._ends_span(ids, pos[0]):
                done.add(pos[0])
            logits, hidden, cache = self._forward(self.token_embeds([token]), cache)
            next_logits = logits[-1]
            states.append(hidden[-1])  # the state at this token's own position
            streamer.update(ids)

        # 4. spans, text, warnings
        return self._finish(ids, states, finish, prompt_len, forced, warnings, streamer)

    def _finish(
        self,
        ids: list[int],
        states: list[torch.Tensor],
        finish: Literal["stop", "length"],
        prompt_len: int,
        forced: list[Modality],
        warnings: list[str],
        streamer: _TextStreamer,
    ) -> LLMOutput:
        hidden = torch.stack(states) if states else torch.empty(0, self.hidden_size)  # (N_gen, H)
        located, span_warnings = find_spans(ids, self.ids)
        spans = []
        for modality, start in located:
            n = len(self.ids.spans[modality])
            token_ids = ids[start : start + n]
            spans.append(
                SignalSpan(
                    modality=modality,
                    start=start,
                    token_ids=token_ids,
                    hidden=hidden[start : start + n].clone(),
                    token_embeds=self.token_embeds(token_ids).clone(),
                )
            )
        streamer.update(ids, final=True)
        text = streamer.text
        raw_text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return LLMOutput(
            text=text,
            raw_text=raw_text,
            token_ids=ids,
            spans=spans,
            finish_reason=finish,
            prompt_tokens=prompt_len,
            forced_modalities=forced,
            warnings=warnings + span_warnings,
        )

    def _mask_unfit(
        self, logits: torch.Tensor, ids: list[int], force: list[Modality], done: set[Modality], limit: int
    ) -> torch.Tensor:
        """Forbid starting a further span of an already satisfied requested modality when its completion
        would eat the room reserved for the missing ones (spans of requested modalities are completed)."""
        room = limit - len(ids)
        unfit = [m for m in force if m in done and len(self.ids.spans[m]) > room]
        if not unfit:
            return logits
        logits = logits.clone()
        for m in unfit:
            span = self.ids.spans[m]
            logits[span[0] : span[-1] + 1] = float("-inf")
        return logits

    def _force_spans(self, modalities: list[Modality], queue: list[int], forced: list[Modality]) -> None:
        for m in modalities:
            queue.extend(self.ids.spans[m])
            forced.append(m)
        logger.debug("forcing spans %s", modalities)

    def _span_in_progress(self, ids: list[int], queue: list[int], modality: Modality) -> bool:
        return any(self.ids.position(t) == (modality, len(self.ids.spans[modality]) - 1) for t in queue)

    def _ends_span(self, ids: list[int], modality: Modality) -> bool:
        span = list(self.ids.spans[modality])
        return ids[-len(span) :] == span

    def _stop_match(self, ids: list[int]) -> int:
        """Length of the stop sequence `ids` ends with, else 0."""
        for stop in self._stop_ids:
            if stop and ids[-len(stop) :] == stop:
                return len(stop)
        return 0

    def _stop_prefix_len(self, ids: list[int]) -> int:
        """Longest tail of `ids` that may still become a stop sequence (held back from streaming)."""
        best = 0
        for stop in self._stop_ids:
            for k in range(min(len(stop), len(ids)), 0, -1):
                if ids[-k:] == stop[:k]:
                    best = max(best, k)
                    break
        return best

    def visible_text(self, ids: list[int]) -> str:
        """Reply text of `ids` without signal/wrapper tokens, as `generate` reports it."""
        streamer = _TextStreamer(self, None)
        streamer.update(ids, final=True)
        return streamer.text

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


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _sample(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator) -> int:
    """Greedy for temperature 0, else temperature + nucleus (top_p) sampling. logits: (V,)."""
    if options.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    keep = cumulative - sorted_probs < options.top_p  # always keeps the most likely token
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


class _TextStreamer:
    """Incremental detokenization (as vLLM does it): the reply text *is* the concatenation of the
    deltas, so a streaming client and the final result always agree.

    Each step decodes the visible tokens from a lagging `prefix` offset and emits only what the newest
    tokens add. Held back: a trailing incomplete UTF-8 character (sentencepiece byte pieces arrive one
    token at a time), tokens that may still become the stop sequence, and trailing whitespace (the
    reply is right-stripped, e.g. the newline before `###`). Signal tokens never reach the text."""

    def __init__(self, lm: NextGPTLanguageModel, on_text: Callable[[str], None] | None) -> None:
        self.lm = lm
        self.on_text = on_text
        self.visible: list[int] = []  # fed, non-signal token ids
        self.fed = 0  # how many generated ids were fed
        self.prefix = 0
        self.read = 0
        self.text = ""  # emitted so far
        self.pending_space = ""  # trailing whitespace not emitted yet

    def update(self, ids: list[int], final: bool = False) -> None:
        hold = 0 if final else self.lm._stop_prefix_len(ids)
        for token in ids[self.fed : len(ids) - hold]:
            if token not in self.lm._signal_ids:
                self.visible.append(token)
        self.fed = max(self.fed, len(ids) - hold)
        decode = self.lm.tokenizer.decode
        before = decode(self.visible[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.visible[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return
        self.prefix, self.read = self.read, len(self.visible)
        new = self.pending_space + after[len(before) :]
        if not self.text:
            new = new.lstrip()
        body = new.rstrip()
        self.pending_space = new[len(body) :]
        if body:
            self.text += body
            if self.on_text is not None:
                self.on_text(body)
