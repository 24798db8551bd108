"""Plain records the readers produce and the collators consume.

They carry paths and text only (no tensors, no tokenizer), so that reading a data set is cheap and
independent of the model; the collator turns them into token ids, media embeddings and targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nextgpt.types import Modality

InstructionFormat = Literal["auto", "conversations", "llava", "alpaca"]
"""Instruction-file layouts the reader knows ("auto" picks from the records)."""

MEDIA_MARKERS: dict[Modality, str] = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
"""The placeholder string of each modality, as the community formats write it in the text."""


@dataclass
class CaptionPair:
    """One X-caption pair (stage 1 encoder-side and stage 2 decoder-side alignment)."""

    modality: Modality
    caption: str
    media_path: Path


@dataclass
class MediaRef:
    """An input medium of a user turn; its marker (`<image>` etc.) stays in the turn's text at the
    position where the collator splices the medium's embedding."""

    modality: Modality
    path: Path


@dataclass
class OutputRef:
    """A medium the assistant turn must generate. Its signal-token span text (legacy
    `[IMG0][IMG1][IMG2][IMG3]` etc.) replaces the placeholder in the assistant text; `caption` is the
    alignment target's text (looked up in the precomputed targets)."""

    modality: Modality
    caption: str


@dataclass
class Turn:
    """One turn of a conversation. Inputs appear in user turns, outputs in assistant turns, each in
    the order of their markers / spans in `text`."""

    role: Literal["user", "assistant"]
    text: str
    inputs: list[MediaRef] = field(default_factory=list)
    outputs: list[OutputRef] = field(default_factory=list)


@dataclass
class Conversation:
    """One training dialogue."""

    turns: list[Turn]
    source: str
    """Where it came from, e.g. "instructions.json#12" (for error messages and logs)."""


@dataclass
class ReadReport:
    """What a reader kept and what it skipped, with the number of skipped records per reason
    (e.g. "missing media file", "unreadable media", "bad record")."""

    read: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
        return f"read {self.read}, skipped {self.skipped}" + (f" ({why})" if why else "")
