"""Signal tokens: the added vocabulary through which the LLM asks for an image, a video or a sound.

Two layouts exist (design 1.2). The legacy one is the released checkpoint's: `<Img>`, `</Img>` (input
wrappers), then `[IMG0..3]`, `[VID0..23]`, `[AUD0..7]` -> ids base..base+37. The order matters: the
checkpoint's embedding rows are indexed by it, so `add_signal_tokens` checks that the ids come out
consecutive and in order.

A span counts only when all N tokens of one modality appear consecutively and in order; anything else
is a partial span, reported as a warning (the reference asserted and crashed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken

from nextgpt.errors import CheckpointError
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, Modality

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalLayout:
    """Which signal tokens a checkpoint was trained with."""

    name: str
    tokens: dict[Modality, tuple[str, ...]]
    """Span tokens per modality, in span order (image 4, video 24, audio 8)."""
    input_wrapper: tuple[str, str] | None
    """Tokens around each input medium in the prompt (legacy `<Img>`/`</Img>`); None for v1.5."""

    @property
    def all_tokens(self) -> list[str]:
        """Every added token in vocabulary order (wrapper first, then image, video, audio)."""
        out = list(self.input_wrapper or ())
        for modality in MODALITIES:
            out.extend(self.tokens[modality])
        return out

    def span_length(self, modality: Modality) -> int:
        return len(self.tokens[modality])


LEGACY = SignalLayout(
    name="legacy",
    tokens={m: out.signal_tokens("legacy") for m, out in OUTPUTS.items()},
    input_wrapper=("<Img>", "</Img>"),
)
V15 = SignalLayout(
    name="v1.5",
    tokens={m: out.signal_tokens("v1.5") for m, out in OUTPUTS.items()},
    input_wrapper=None,
)
LAYOUTS: dict[str, SignalLayout] = {"legacy": LEGACY, "v1.5": V15}


def get_layout(name: str) -> SignalLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown signal layout {name!r}; use one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


@dataclass(frozen=True)
class SignalTokenIds:
    """Token ids of one layout in one tokenizer."""

    layout: SignalLayout
    spans: dict[Modality, tuple[int, ...]]
    """Span token ids per modality, in span order."""
    wrapper: tuple[int, int] | None
    """Ids of `<Img>` / `</Img>` (legacy) or None."""

    @property
    def all_ids(self) -> frozenset[int]:
        """Every added id, wrappers included: removed from the user-facing text."""
        out = set(self.wrapper or ())
        for ids in self.spans.values():
            out.update(ids)
        return frozenset(out)

    def position(self, token_id: int) -> tuple[Modality, int] | None:
        """(modality, index within its span) of a span token, else None."""
        for modality, ids in self.spans.items():
            if ids[0] <= token_id <= ids[-1]:
                return modality, token_id - ids[0]
        return None


def add_signal_tokens(tokenizer: Any, layout: SignalLayout) -> SignalTokenIds:
    """Add the layout's tokens (those not yet present) and return their ids.

    Tokens are ordinary (non-special) added tokens, as in the reference, so they survive decoding with
    `skip_special_tokens=True` and `raw_text` shows them. Raises CheckpointError when the ids are not
    consecutive in layout order: the checkpoint's embedding rows would then not line up.
    """
    wanted = layout.all_tokens
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    ids = [tokenizer.convert_tokens_to_ids(t) for t in wanted]
    expected = list(range(ids[0], ids[0] + len(ids)))
    if ids != expected:
        bad = [f"{t}={i} (want {e})" for t, i, e in zip(wanted, ids, expected, strict=True) if i != e]
        raise CheckpointError(
            f"signal tokens of the {layout.name} layout are not consecutive in order: {', '.join(bad[:6])}; "
            "the tokenizer already holds some of them at other ids. Use the plain base tokenizer."
        )
    cursor = 0
    wrapper = None
    if layout.input_wrapper is not None:
        wrapper = (ids[0], ids[1])
        cursor = 2
    spans: dict[Modality, tuple[int, ...]] = {}
    for modality in MODALITIES:
        n = layout.span_length(modality)
        spans[modality] = tuple(ids[cursor : cursor + n])
        cursor += n
    logger.debug("signal tokens %s: ids %d..%d", layout.name, ids[0], ids[-1])
    return SignalTokenIds(layout=layout, spans=spans, wrapper=wrapper)


def find_spans(token_ids: list[int], ids: SignalTokenIds) -> tuple[list[tuple[Modality, int]], list[str]]:
    """Locate complete spans in generated ids: ([(modality, start index)], warnings). Never raises.

    Signal tokens that are not part of a complete span (missing tokens, wrong order, cut off at the end)
    are grouped into runs and each run gives one warning.
    """
    spans: list[tuple[Modality, int]] = []
    warnings: list[str] = []

    def complete_at(i: int) -> Modality | None:
        pos = ids.position(token_ids[i])
        if pos is None or pos[1] != 0:
            return None
        modality = pos[0]
        expected = list(ids.spans[modality])
        return modality if token_ids[i : i + len(expected)] == expected else None

    i = 0
    while i < len(token_ids):
        pos = ids.position(token_ids[i])
        if pos is None:
            i += 1
            continue
        modality = complete_at(i)
        if modality is not None:
            spans.append((modality, i))
            i += len(ids.spans[modality])
            continue
        # A partial run: consecutive tokens of this modality up to the next complete span.
        run_modality = pos[0]
        j = i
        while j < len(token_ids):
            p = ids.position(token_ids[j])
            if p is None or p[0] != run_modality or (j > i and complete_at(j) is not None):
                break
            j += 1
        n = len(ids.spans[run_modality])
        warnings.append(
            f"partial {run_modality} span at token {i}: {j - i} signal token(s) where {n} consecutive "
            f"ones in order are needed; no {run_modality} is generated from it"
        )
        i = j
    return spans, warnings
