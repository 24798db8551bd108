"""One request's constrained decoding, written once and driven by both engines (HF and vLLM).

The engine owns the model: it samples, feeds tokens and keeps the hidden states. `DecodePolicy` owns
the rules, and knows nothing of torch models or of the engine:

- the token budget: `max_new_tokens`, cut to what the context has left, with room reserved for the
  requested spans not yet produced (the request fails at once when they cannot fit);
- what to do next (`next_action`): sample a token (and which requested modalities may not start a
  further span because its completion would eat the reserved room), feed a token that is already
  decided (a span being completed or inserted), or finish;
- what a sampled token means (`on_sampled`): a stop (EOS or the prompt format's stop string) ends the
  reply unless a requested span is still missing, which is then inserted instead; a token of a
  requested modality's span starts that whole span (never left partial); a span token of another
  modality may only be sampled where a span can go on (its first token, or the next one of the span in
  progress): out of place it would leave a partial span, raw tokens in the reply text, so it is masked
  (`stray`);
- where complete spans are (`feed` returns a span as soon as its last token is fed, so an engine can
  send it to its decoder before the reply ends).

The loop of an engine is then:

    while not isinstance(action := policy.next_action(), Finish):
        if isinstance(action, Sample):
            logits = mask_banned(logits, action.banned, rules.ids)  # or sample, then reject (vLLM)
            drop = policy.on_sampled(sample(logits, options, generator)).drop  # take back `drop` states
        else:
            span = policy.feed(action.token)  # and run the model on the token

`TextStreamer` turns the generated ids into text deltas, the same for both engines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from nextgpt.config import SamplingOptions
from nextgpt.errors import InvalidInput
from nextgpt.llm.signal_tokens import SignalTokenIds, find_spans
from nextgpt.types import MODALITIES, LLMOutput, Modality, SignalSpan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRules:
    """The token facts decoding needs: signal spans, EOS and the stop sequences."""

    ids: SignalTokenIds
    eos: int
    stop_ids: tuple[tuple[int, ...], ...]
    """Token sequences that end a reply besides EOS, longest first (a stop string may be tokenized with
    or without a leading space: `▁###` is id 835 in LLaMA; the longer one takes the space with it)."""
    signal_ids: frozenset[int] = field(init=False)
    """Every added token id: never part of the visible text."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "signal_ids", self.ids.all_ids)

    @classmethod
    def build(cls, ids: SignalTokenIds, eos: int, stops: Sequence[Sequence[int]]) -> TokenRules:
        unique = {tuple(s) for s in stops if s}
        return cls(ids, eos, tuple(sorted(unique, key=len, reverse=True)))

    def span_length(self, modality: Modality) -> int:
        return len(self.ids.spans[modality])

    @property
    def longest_stop(self) -> int:
        return len(self.stop_ids[0]) if self.stop_ids else 0

    def stop_match(self, ids: Sequence[int]) -> int:
        """Length of the stop sequence `ids` ends with, else 0."""
        for stop in self.stop_ids:
            if list(ids[-len(stop) :]) == list(stop):
                return len(stop)
        return 0

    def stop_prefix_len(self, ids: Sequence[int]) -> int:
        """Longest tail of `ids` that may still become a stop sequence (held back from streaming)."""
        best = 0
        for stop in self.stop_ids:
            for k in range(min(len(stop), len(ids)), 0, -1):
                if list(ids[-k:]) == list(stop[:k]):
                    best = max(best, k)
                    break
        return best


# ---------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Sample:
    """Sample one token from the model's next-token distribution."""

    banned: tuple[Modality, ...]
    """Requested modalities whose span tokens may not be sampled now (their span would not fit)."""
    max_tokens: int
    """How many tokens may be sampled in a row before the budget has to be looked at again."""
    stray: tuple[int, ...] = ()
    """Span tokens of modalities not requested that cannot come next (`DecodePolicy.stray`)."""


@dataclass(frozen=True)
class Feed:
    """Feed this already decided token (part of a span being completed or inserted)."""

    token: int


@dataclass(frozen=True)
class Finish:
    """The reply is complete."""


Action = Sample | Feed | Finish


@dataclass(frozen=True)
class Sampled:
    """What a sampled token turned out to be."""

    kind: Literal["text", "span", "stop", "rejected"]
    """text: queued as is; span: it started a requested modality's span, the whole span is queued;
    stop: EOS or a stop sequence (the reply ends, or missing spans are queued); rejected: it would start
    a span that no longer fits, or it is a stray span token, sample again without it (only an engine
    that cannot mask logits sees this)."""
    drop: int = 0
    """Tokens already fed that belonged to the stop sequence: the engine takes back their states (and,
    when decoding goes on, their cache entries)."""


@dataclass(frozen=True)
class CompletedSpan:
    """A complete span of signal tokens; its hidden states are final once its last token was fed."""

    modality: Modality
    start: int
    """Index of the span's first token within the generated ids."""
    token_ids: tuple[int, ...]


# ---------------------------------------------------------------------- the policy
class DecodePolicy:
    """The decoding rules of one request (see the module docstring). Raises InvalidInput at creation
    for a prompt that fills the context or requested spans that cannot fit the budget."""

    def __init__(
        self,
        rules: TokenRules,
        options: SamplingOptions,
        prompt_len: int,
        max_context: int,
        force: Sequence[Modality] = (),
    ) -> None:
        self.rules = rules
        self.force: list[Modality] = [m for m in MODALITIES if m in force]
        """Requested modalities: each gets a complete span, inserted when the model does not emit one."""
        self.warnings: list[str] = []
        if prompt_len >= max_context:
            raise InvalidInput(
                f"the prompt has {prompt_len} tokens but max_context is {max_context}; "
                "shorten the conversation or send fewer media"
            )
        budget = options.max_new_tokens
        if prompt_len + budget > max_context:
            budget = max_context - prompt_len
            self.warnings.append(
                f"context overflow: prompt {prompt_len} + max_new_tokens {options.max_new_tokens} > "
                f"max_context {max_context}; generating at most {budget} tokens"
            )
        needed = sum(rules.span_length(m) for m in self.force)
        if needed > budget:
            raise InvalidInput(
                f"{budget} new tokens cannot hold the requested spans ({', '.join(self.force)}: {needed} "
                f"signal tokens); raise max_new_tokens to at least {needed}"
            )
        self.budget = budget
        self.prompt_len = prompt_len
        self.ids: list[int] = []
        """Tokens fed so far (the reply)."""
        self.forced: list[Modality] = []
        self.finish_reason: Literal["stop", "length"] = "length"
        self.finished = False
        self._queue: list[int] = []  # decided tokens to feed next
        self._done: set[Modality] = set()  # requested modalities with a complete span

    # -- state ----------------------------------------------------------------------------------------
    def missing(self) -> list[Modality]:
        """Requested modalities without a complete span that is not already on its way."""
        return [m for m in self.force if m not in self._done and not self._queued(m)]

    def _queued(self, modality: Modality) -> bool:
        last = self.rules.ids.spans[modality][-1]
        return last in self._queue

    def _limit(self) -> int:
        """Tokens the reply may hold before the missing spans' reserved room."""
        return self.budget - sum(self.rules.span_length(m) for m in self.missing())

    def _unfit(self, limit: int) -> tuple[Modality, ...]:
        room = limit - len(self.ids)
        return tuple(m for m in self.force if m in self._done and self.rules.span_length(m) > room)

    def _continuation(self) -> int | None:
        """The next token of the span the reply is in the middle of, if it is."""
        pos = self.rules.ids.position(self.ids[-1]) if self.ids else None
        if pos is None:
            return None
        span = self.rules.ids.spans[pos[0]]
        return span[pos[1] + 1] if pos[1] + 1 < len(span) else None

    def stray(self) -> tuple[int, ...]:
        """Span tokens of modalities not requested that cannot come next: all but a span's first, except
        the continuation of a span in progress. A model may emit them out of place (the `shapes` LLM put
        `[IMG1][IMG2][IMG3]` after "A blue circle moving" for 9 of 96 clips); they would leave a partial
        span and raw tokens in the reply. A requested modality's stray token starts its whole span
        instead (`on_sampled`)."""
        after = self._continuation()
        return tuple(
            t
            for m, span in self.rules.ids.spans.items()
            if m not in self.force
            for t in span[1:]
            if t != after
        )

    def _insert_missing(self) -> None:
        for m in self.missing():
            self._queue.extend(self.rules.ids.spans[m])
            self.forced.append(m)
        logger.debug("forcing spans %s", self.forced)

    # -- the steps ------------------------------------------------------------------------------------
    def next_action(self) -> Action:
        if self.finished:
            return Finish()
        if self._queue:
            return Feed(self._queue[0])
        limit = self._limit()
        if len(self.ids) >= limit:
            if self.missing() and len(self.ids) < self.budget:
                self._insert_missing()
                return Feed(self._queue[0])
            self.finished, self.finish_reason = True, "length"
            return Finish()
        return Sample(self._unfit(limit), limit - len(self.ids), self.stray())

    def on_sampled(self, token: int) -> Sampled:
        """Apply a token sampled after a `Sample` action; the tokens it decides are fed next."""
        rules = self.rules
        # Only the tail can end in a stop sequence: no copy of the whole reply per sampled token.
        tail = self.ids[max(0, len(self.ids) - rules.longest_stop + 1) :]
        stop_len = rules.stop_match([*tail, token])
        if token == rules.eos or stop_len:
            drop = max(stop_len - 1, 0)
            if drop:
                del self.ids[-drop:]
            if self.missing():  # the model would stop but a requested span is missing: insert it
                self._insert_missing()
            else:
                self.finished, self.finish_reason = True, "stop"
            return Sampled("stop", drop)
        if token in self.stray():  # what `Sample.stray` masks, sampled by an engine that cannot mask
            return Sampled("rejected")
        pos = rules.ids.position(token)
        if pos is not None and pos[0] in self.force:
            if pos[0] in self._unfit(self._limit()):
                return Sampled("rejected")
            # Never leave a requested modality's span partial: complete it token by token.
            self._queue.extend(rules.ids.spans[pos[0]])
            return Sampled("span")
        self._queue.append(token)
        return Sampled("text")

    def feed(self, token: int) -> CompletedSpan | None:
        """Record a fed token (the one `next_action` offered); returns the span it completes, if any."""
        if self._queue and self._queue[0] == token:
            self._queue.pop(0)
        self.ids.append(token)
        pos = self.rules.ids.position(token)
        if pos is None:
            return None
        span = self.rules.ids.spans[pos[0]]
        if pos[1] != len(span) - 1 or tuple(self.ids[-len(span) :]) != span:
            return None
        self._done.add(pos[0])
        return CompletedSpan(pos[0], len(self.ids) - len(span), span)

    # -- the result -----------------------------------------------------------------------------------
    def output(self, streamer: TextStreamer, spans: Sequence[SignalSpan]) -> LLMOutput:
        """The request's result: `spans` are the engine's states of every complete span (in any order)."""
        located, span_warnings = find_spans(self.ids, self.rules.ids)
        by_start = {s.start: s for s in spans}
        missing = [start for _, start in located if start not in by_start]
        if missing:
            raise RuntimeError(f"the engine has no hidden states for the spans at {missing}")
        streamer.update(self.ids, final=True)
        return LLMOutput(
            text=streamer.text,
            raw_text=streamer.tokenizer.decode(self.ids, skip_special_tokens=False),
            token_ids=list(self.ids),
            spans=[by_start[start] for _, start in located],
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_len,
            forced_modalities=list(self.forced),
            warnings=self.warnings + span_warnings,
        )


# ---------------------------------------------------------------------- sampling
def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def banned_tokens(action: Sample, ids: SignalTokenIds) -> list[int]:
    """The tokens `action` may not sample: the span tokens of its banned modalities and the stray ones."""
    return [t for m in action.banned for t in ids.spans[m]] + list(action.stray)


def mask_banned(logits: torch.Tensor, action: Sample, ids: SignalTokenIds) -> torch.Tensor:
    """`logits` (V,) with the tokens `action` may not sample at -inf (a copy when any)."""
    banned = banned_tokens(action, ids)
    if not banned:
        return logits
    logits = logits.clone()
    logits[banned] = float("-inf")
    return logits


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> int:
    """Greedy for temperature 0, else temperature + nucleus (top_p) sampling. logits: (V,)."""
    return sample_rows(logits[None], [options], [generator])[0]


def sample_rows(
    logits: torch.Tensor, options: Sequence[SamplingOptions], generators: Sequence[torch.Generator]
) -> list[int]:
    """`sample` for each row of `logits` (B, V), with the row's own options and generator.

    The softmax, sort and cumulative sum run once for the batch; only the draw is per row (each row
    has its own generator). Every row gets exactly what `sample` gives it alone: the batched kernels
    reduce along each row independently."""
    tokens: list[int | None] = [None] * len(options)
    greedy = [i for i, o in enumerate(options) if o.temperature == 0]
    if greedy:
        for i, token in zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist(), strict=True):
            tokens[i] = int(token)
    drawn = [i for i, o in enumerate(options) if o.temperature != 0]
    if drawn:
        temperature = torch.tensor([[options[i].temperature] for i in drawn], dtype=torch.float32)
        top_p = torch.tensor([[options[i].top_p] for i in drawn], dtype=torch.float32)
        probs = torch.softmax(logits[drawn].float() / temperature.to(logits.device), dim=-1)  # (b, V)
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = cumulative - sorted_probs < top_p.to(logits.device)  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        for row, i in enumerate(drawn):
            weights = sorted_probs[row]
            choice = torch.multinomial(weights / weights.sum(), 1, generator=generators[i])
            tokens[i] = int(order[row, choice])
    return [int(t) for t in tokens if t is not None]


# ---------------------------------------------------------------------- streaming text
class TextStreamer:
    """Incremental detokenization (as vLLM does it): the reply text *is* the concatenation of the
    deltas, so a streaming client and the final result always agree.

    Each step decodes the visible tokens from a lagging `prefix` offset and emits only what the newest
    tokens add. Held back: a trailing incomplete UTF-8 character (sentencepiece byte pieces arrive one
    token at a time), tokens that may still become the stop sequence, and trailing whitespace (the
    reply is right-stripped, e.g. the newline before `###`). Signal tokens never reach the text."""

    def __init__(self, tokenizer: Any, rules: TokenRules, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer = tokenizer
        self.rules = rules
        self.on_text = on_text
        self.visible: list[int] = []  # fed, non-signal token ids
        self.fed = 0  # how many generated ids were fed
        self.prefix = 0
        self.read = 0
        self.text = ""  # emitted so far
        self.pending_space = ""  # trailing whitespace not emitted yet
        self._before: tuple[int, int, str] = (0, 0, "")  # (prefix, read, decoded visible[prefix:read])

    def update(self, ids: list[int], final: bool = False) -> None:
        hold = 0 if final else self.rules.stop_prefix_len(ids)
        for token in ids[self.fed : len(ids) - hold]:
            if token not in self.rules.signal_ids:
                self.visible.append(token)
        self.fed = max(self.fed, len(ids) - hold)
        decode = self.tokenizer.decode
        if self._before[:2] != (self.prefix, self.read):  # decoded once per emission, not per token
            self._before = (
                self.prefix,
                self.read,
                decode(self.visible[self.prefix : self.read], skip_special_tokens=True),
            )
        before = self._before[2]
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
