"""Training data: records, readers of the community formats, the synthetic shapes world, targets."""

from nextgpt.training.data.types import (
    MEDIA_MARKERS,
    CaptionPair,
    Conversation,
    MediaRef,
    OutputRef,
    ReadReport,
    Turn,
)

__all__ = [
    "MEDIA_MARKERS",
    "CaptionPair",
    "Conversation",
    "MediaRef",
    "OutputRef",
    "ReadReport",
    "Turn",
]
