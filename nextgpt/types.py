"""Plain data types shared by the pipeline, the services and the training code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from nextgpt.errors import InvalidInput

if TYPE_CHECKING:  # tensors only in annotations: the client and the CLI import these types without torch
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


@dataclass
class MediaError:
    """A medium the model asked for but could not produce; the rest of the answer still stands."""

    modality: Modality
    message: str


@dataclass
class GenerateResult:
    """A whole reply: from the in-process pipeline, the gateway's summary or a client."""

    text: str
    raw_text: str
    """The text with its signal tokens (clients that only see the visible text get that here)."""
    media: list[MediaItem]
    errors: list[MediaError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    forced_modalities: list[Modality] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: encode, llm, decode (total through the cluster)."""
    request_id: str = ""
    """The id the cluster logged the request under (empty in process)."""

    def as_message(self) -> Message:
        """The reply as an assistant turn, for the next request's history."""
        return Message(role="assistant", text=self.raw_text, media=list(self.media))


def check_messages(messages: list[Message]) -> None:
    """Validate a conversation at the edge, with messages that say how to fix it."""
    if not messages:
        raise InvalidInput("messages is empty: send at least one user message")
    if messages[-1].role != "user":
        raise InvalidInput(f"the last message must be a user turn, got role={messages[-1].role!r}")
    for index, message in enumerate(messages):
        if message.role not in ("user", "assistant"):
            raise InvalidInput(f"messages[{index}].role={message.role!r}: use 'user' or 'assistant'")
        if message.role == "user" and not message.text.strip() and not message.media:
            raise InvalidInput(f"messages[{index}] has neither text nor media")
        for item in message.media:
            if item.modality not in MODALITIES:
                raise InvalidInput(
                    f"messages[{index}] has media of modality {item.modality!r}; use one of {MODALITIES}"
                )
            if not item.data:
                raise InvalidInput(f"messages[{index}] has an empty {item.modality} item")
