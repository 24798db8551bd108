"""Scores produced media or text against what was asked: per attribute, the share of items in which the
classifier (media) or the mention parser (text) finds the expected value.

    report = evaluate_world_media([
        ("a red circle on a white background", image_array),      # text -> image
        ({"colour": "blue", "direction": "up"}, video_item),       # text -> video (a MediaItem)
        ("a rising sweep", AudioClip(wave, 16000)),                # text -> audio
        ("a green star on a black background", "A green star."),   # image -> text
    ])
    report.accuracy()  # {"colour": 1.0, "shape": 1.0, "background": 0.5, ..., "all": 0.75}

Only the expected attributes are scored: pass a dict to leave some out (a reply that does not mention
the background is not wrong about it when only colour and shape were asked). A text that names two
values for an attribute ("red or blue") is wrong on it; media that cannot be decoded are wrong on all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nextgpt.errors import InvalidInput
from nextgpt.media.decode import read_audio, read_image, read_video
from nextgpt.training.world_eval.audio import classify_audio
from nextgpt.training.world_eval.image import classify_image
from nextgpt.training.world_eval.text import caption_attributes, mentions
from nextgpt.training.world_eval.video import classify_video
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

AUDIO_RATE = 16000
"""Rate encoded audio is decoded at (the world's and AudioLDM's)."""


@dataclass
class AudioClip:
    """A waveform and its rate: audio arrays need the rate, so they are passed in this wrapper."""

    waveform: np.ndarray
    """float, (N,) mono, or (C, N) / (N, C) channels, which are averaged."""
    sample_rate: int


Produced = str | np.ndarray | AudioClip | MediaItem
"""Text, an image (H, W, 3) or video (T, H, W, 3) array, audio, or encoded media of any modality."""


@dataclass
class AttributeScore:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class ItemResult:
    expected: dict[str, str]
    found: dict[str, str]
    """What the classifier or parser read, every attribute it reads (not only the expected ones)."""
    kind: str
    """text, image, video, audio, or undecodable."""
    correct: dict[str, bool]


@dataclass
class WorldReport:
    attributes: dict[str, AttributeScore] = field(default_factory=dict)
    all: AttributeScore = field(default_factory=AttributeScore)
    """Items with every expected attribute right."""
    items: list[ItemResult] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        """Attribute -> share right, and "all" -> share of items entirely right."""
        return {**{name: s.accuracy for name, s in self.attributes.items()}, "all": self.all.accuracy}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the accuracies, the counts and every item."""
        return {
            "accuracy": self.accuracy(),
            "counts": {name: asdict(s) for name, s in {**self.attributes, "all": self.all}.items()},
            "items": [asdict(item) for item in self.items],
        }


def read_attributes(produced: Produced) -> tuple[str, dict[str, str]]:
    """(kind, attribute -> value) of one produced item, by the classifier of its kind. Undecodable
    media read as ("undecodable", {}); an array of no known shape raises ValueError (a caller's bug)."""
    if isinstance(produced, str):
        return "text", mentions(produced).claims()
    if isinstance(produced, AudioClip):
        return "audio", classify_audio(produced.waveform, produced.sample_rate).attributes()
    if isinstance(produced, MediaItem):
        try:
            return _read_item(produced)
        except InvalidInput as exc:
            logger.warning("undecodable %s output scored as wrong: %s", produced.modality, exc)
            return "undecodable", {}
    array = np.asarray(produced)
    if array.ndim == 3:
        return "image", classify_image(array).attributes()
    if array.ndim == 4:
        return "video", classify_video(array).attributes()
    raise ValueError(
        f"an array of shape {array.shape} is no image (H, W, 3) or video (T, H, W, 3); "
        "pass audio as AudioClip(waveform, sample_rate)"
    )


def _read_item(item: MediaItem) -> tuple[str, dict[str, str]]:
    if item.modality == "image":
        return "image", classify_image(np.asarray(read_image(item.data))).attributes()
    if item.modality == "video":
        return "video", classify_video(read_video(item.data).frames).attributes()
    wave, rate = read_audio(item.data, sample_rate=AUDIO_RATE)
    return "audio", classify_audio(wave, rate).attributes()


def evaluate_world_media(items: Iterable[tuple[Mapping[str, str] | str, Produced]]) -> WorldReport:
    """Score (expected, produced) pairs; `expected` is a world caption (its attributes are all scored,
    see `caption_attributes`) or attribute -> value."""
    report = WorldReport()
    for expected, produced in items:
        wanted = caption_attributes(expected) if isinstance(expected, str) else dict(expected)
        kind, found = read_attributes(produced)
        correct = {name: found.get(name) == value for name, value in wanted.items()}
        for name, ok in correct.items():
            score = report.attributes.setdefault(name, AttributeScore())
            score.correct += ok
            score.total += 1
        report.all.correct += all(correct.values())
        report.all.total += 1
        report.items.append(ItemResult(wanted, found, kind, correct))
    return report
