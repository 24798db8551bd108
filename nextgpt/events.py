"""The events of one generation, in the order they happen: text as it is produced, each medium (or its
error) as soon as it is decoded, then the summary. One vocabulary for the LLM engines, the gateway and the
clients (gRPC and REST turn them into their own messages at the edge)."""

from __future__ import annotations

from dataclasses import dataclass

from nextgpt.types import GenerateResult, MediaError, MediaItem


@dataclass
class TextDelta:
    """Newly produced visible text (signal tokens never appear here)."""

    text: str


@dataclass
class MediaReady:
    """A medium, as soon as it is decoded (the summary orders them by modality, then span order)."""

    item: MediaItem


@dataclass
class MediaFailed:
    """A medium that was asked for but could not be produced; the rest of the reply stands."""

    error: MediaError


@dataclass
class Done:
    """The summary: every medium and error again, the finish reason, usage, timings, the request id."""

    result: GenerateResult


GenerationEvent = TextDelta | MediaReady | MediaFailed | Done
