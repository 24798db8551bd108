"""Continuous batching on plain transformers: several requests decode together, one forward per step.

Every request (a row) keeps its own `DecodePolicy`, sampling generator, text streamer and hidden
states; the model runs once per step over every active row, as a (B, 1) step on one shared KV cache.
A new request is prefilled alone (exactly the single-request computation) and joins at the next step;
a finished, failed or cancelled one leaves at once. Rows of different lengths share the cache
left-padded: a 2-D attention mask hides the padding (and tokens a stop took back), and each row gets
its own position ids, so a row's tokens are those it would get alone. With one row and nothing hidden,
the step is the plain single-sequence call, bit for bit (`NextGPTLanguageModel.generate` is this
class with one row); in a wider batch, float rounding of the batched kernels may differ in the last
bits.

Rows share the model's active LoRA adapter: batch only requests of one adapter together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from nextgpt.config import SamplingOptions
from nextgpt.llm.decoding import (
    DecodePolicy,
    Finish,
    Sample,
    TextStreamer,
    make_generator,
    mask_banned,
    sample_rows,
)
from nextgpt.types import LLMOutput, Modality, SignalSpan

if TYPE_CHECKING:
    from nextgpt.llm.model import NextGPTLanguageModel

logger = logging.getLogger(__name__)


@dataclass
class DecodeRequest:
    """One request to decode, with the callbacks that stream its progress (run in the decoding thread)."""

    prompt_embeds: torch.Tensor
    """(T, H) input embeddings of the whole prompt."""
    options: SamplingOptions
    force: Sequence[Modality] = ()
    """Modalities that must get a complete span (inserted when the model does not emit one)."""
    on_text: Callable[[str], None] | None = None
    on_step: Callable[[int], None] | None = None
    """Runs before each step with the number of tokens generated so far; raising abandons the request."""
    on_span: Callable[[SignalSpan], None] | None = None
    """Gets each complete span as soon as its last token was fed (its states are final then)."""


@dataclass
class _Row:
    request: DecodeRequest
    policy: DecodePolicy
    streamer: TextStreamer
    generator: torch.Generator
    next_logits: torch.Tensor  # (V,) logits for the next token
    length: int  # positions this row really holds in the cache: its next position id
    states: list[torch.Tensor] = field(default_factory=list)  # (H,) per fed token, aligned with policy.ids
    spans: list[SignalSpan] = field(default_factory=list)


Outcome = tuple[DecodeRequest, LLMOutput | BaseException]


class BatchDecoder:
    """`add()` requests, then `step()` until `len(decoder) == 0`; each step returns the requests that
    ended in it, with their output or the exception that ended them."""

    def __init__(self, lm: NextGPTLanguageModel) -> None:
        self.lm = lm
        self.rows: list[_Row] = []
        self.cache: Any = None  # DynamicCache over the rows, (B, heads, L, d) per layer
        self.mask = torch.ones(0, 0, dtype=torch.long)  # (B, L): 1 where a row holds a real position

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ joining
    @torch.inference_mode()
    def add(self, request: DecodeRequest) -> None:
        """Check the budget (InvalidInput goes to the caller), prefill the prompt alone, join the batch."""
        lm = self.lm
        prompt_len = int(request.prompt_embeds.shape[0])
        policy = lm.policy(request.options, prompt_len, request.force)
        logits, _, cache = lm._forward(request.prompt_embeds.to(lm.device, lm.dtype), None)
        row = _Row(
            request=request,
            policy=policy,
            streamer=lm.streamer(request.on_text),
            generator=make_generator(request.options.seed, lm.device),
            next_logits=logits[-1],
            length=prompt_len,
        )
        self._join(row, cache)

    def _join(self, row: _Row, cache: Any) -> None:
        """Append a prefilled row to the batch, left-padding whichever side is shorter."""
        new_len = cache.get_seq_length()
        new_mask = torch.ones(1, new_len, dtype=torch.long, device=self.lm.device)
        if not self.rows:
            self.rows, self.cache, self.mask = [row], cache, new_mask
            return
        width = max(self.mask.shape[1], new_len)
        layers = [
            (
                torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)]),
                torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)]),
            )
            for old, new in zip(self.cache.layers, cache.layers, strict=True)
        ]
        self.cache = DynamicCache(layers)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(new_mask, width)])
        self.rows.append(row)

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def step(self) -> list[Outcome]:
        """Advance every row by one fed token (sampling as its policy says); one forward for all.

        A row samples at most once per step (a sampled token is fed next, or ends the row), so all rows
        that sample do it together (`sample_rows`), then each row's policy decides what it feeds."""
        ended: list[Outcome] = []
        feeding: dict[int, int] = {}  # row index -> token
        sampling: list[tuple[int, Sample]] = []
        for i, row in enumerate(self.rows):
            self._next(i, row, ended, feeding, sampling)
        if sampling:
            rows = [self.rows[i] for i, _ in sampling]
            logits = torch.stack(
                [mask_banned(r.next_logits, a, self.lm.ids) for r, (_, a) in zip(rows, sampling, strict=True)]
            )  # (b, V)
            tokens = sample_rows(logits, [r.request.options for r in rows], [r.generator for r in rows])
            for (i, _), row, token in zip(sampling, rows, tokens, strict=True):
                drop = row.policy.on_sampled(token).drop
                if drop:  # a stop sequence's earlier tokens are taken back
                    del row.states[-drop:]
                    if not row.policy.finished:
                        self._take_back(i, row, drop)
                again: list[tuple[int, Sample]] = []
                self._next(i, row, ended, feeding, again)
                if again:  # cannot happen with this policy (a sample is followed by a feed or the end)
                    raise RuntimeError(f"row {i} asked to sample twice in one step")
        kept = sorted(feeding)
        if len(kept) < len(self.rows):
            self._keep(kept)
        if kept:
            self._forward([feeding[i] for i in kept])
        return ended

    def _next(
        self,
        index: int,
        row: _Row,
        ended: list[Outcome],
        feeding: dict[int, int],
        sampling: list[tuple[int, Sample]],
    ) -> None:
        """The row's next action, filed where it belongs: ended (finished or failed), a token to feed,
        or a sample to draw."""
        try:
            if row.request.on_step is not None:
                row.request.on_step(len(row.policy.ids))
            action = row.policy.next_action()
        except BaseException as exc:  # noqa: BLE001 - ends this row only (e.g. the client left)
            ended.append((row.request, exc))
            return
        if isinstance(action, Finish):
            ended.append((row.request, row.policy.output(row.streamer, row.spans)))
        elif isinstance(action, Sample):
            sampling.append((index, action))
        else:
            feeding[index] = action.token

    def _take_back(self, index: int, row: _Row, n: int) -> None:
        """Hide the row's last `n` cache positions (the single-row case crops them, as before)."""
        row.length -= n
        if len(self.rows) == 1 and bool(self.mask.all()):
            self.cache.crop(row.length)
            self.mask = self.mask[:, : row.length]
            return
        real = self.mask[index].nonzero().flatten()
        self.mask[index, real[-n:]] = 0

    def _forward(self, tokens: list[int]) -> None:
        """One (B, 1) step over the cache; each row gets its next logits and the state of its token."""
        lm = self.lm
        embeds = lm.token_embeds(tokens)[:, None]  # (B, 1, H)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)  # (B, L + 1)
        plain = bool(self.mask.all())  # nothing hidden: positions follow the cache, as for one sequence
        out = lm.model(
            inputs_embeds=embeds,
            past_key_values=self.cache,
            attention_mask=None if plain else self.mask,
            position_ids=None if plain else torch.tensor([[r.length] for r in self.rows], device=lm.device),
            use_cache=True,
            output_hidden_states=True,
        )
        self.cache = out.past_key_values
        logits = out.logits[:, -1].float()  # (B, V)
        hidden = out.hidden_states[-1][:, -1]  # (B, H): last layer after the final norm
        for row, token, next_logits, state in zip(self.rows, tokens, logits, hidden, strict=True):
            completed = row.policy.feed(token)
            row.next_logits = next_logits
            row.length += 1
            row.states.append(state)  # the state at this token's own position
            row.streamer.update(row.policy.ids)
            if completed is not None:
                span = lm.span(completed, torch.stack(row.states[completed.start :]))  # (N, H)
                row.spans.append(span)
                if row.request.on_span is not None:
                    row.request.on_span(span)

    def _keep(self, indices: list[int]) -> None:
        """Drop every other row from the batch and trim padding no remaining row needs."""
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache, self.mask = None, self.mask[:0, :0]
            return
        self.cache.batch_select_indices(torch.tensor(indices, device=self.lm.device))
        self.mask = self.mask[indices]
        unused = int(self.mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dim 2 (KV: (B, heads, L, d)) or dim 1 (mask: (B, L)) on the left to `width`."""
    dim = 2 if t.dim() == 4 else 1
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
