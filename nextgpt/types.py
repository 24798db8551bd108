"""Plain data types shared by the pipeline, the services and the training code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "video", "audio")
Role = Literal["user", "assistant"]


@dataclass
class MediaItem:
    """One piece of media, as encoded bytes (PNG, WAV, MP4, ...). Generated media use the same type,
    so that an output can be sent back as an input in the next turn."""

    modality: Modality
    data: bytes
    mime_type: str
    """e.g. "image/png", "audio/wav", "video/mp4"."""


@dataclass
class Message:
    """One conversation turn. A user turn's media are inputs; an assistant turn's media were outputs."""

    role: Role
    text: str = ""
    media: list[MediaItem] = field(default_factory=list)


@dataclass
class SignalSpan:
    """A complete run of one modality's signal tokens in the generated reply."""

    modality: Modality
    start: int
    """Index of the span's first token within the generated token ids."""
    token_ids: list[int]
    hidden: torch.Tensor
    """(N, H) last-layer LLM states *after the final norm*, at the signal tokens' own positions."""
    token_embeds: torch.Tensor
    """(N, H) input embeddings of the signal tokens; the output projector adds them to `hidden`."""


@dataclass
class LLMOutput:
    """What the language model produced for one request."""

    text: str
    """Decoded reply with signal tokens removed and whitespace tidied."""
    raw_text: str
    """Decoded reply including signal tokens (for logs and for the next turn's history)."""
    token_ids: list[int]
    spans: list[SignalSpan]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    forced_modalities: list[Modality] = field(default_factory=list)
    """Modalities whose span was forced because the request asked for them and the model did not emit."""
    warnings: list[str] = field(default_factory=list)
