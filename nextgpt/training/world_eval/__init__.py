"""Independent classifiers for the shapes world: what a picture, video or sound shows, read from signal
statistics (no learned model), what a text claims, and a scorer that compares them with a caption's
attributes. Validated on the world's own media in tests/nextgpt/training/test_world_eval.py.

- `image`: background, shape colour and shape of a picture;
- `video`: colour, shape and motion direction of a clip;
- `audio`: tone/chord/sweep, low/high pitch, rising/falling sweep, major/minor chord, beeping;
- `text`: which attributes a caption or a reply names (`mentions`), a world caption's ground truth
  (`caption_attributes`);
- `score`: `evaluate_world_media`, per-attribute accuracy over (expected, produced) pairs.
"""

from nextgpt.training.world_eval.audio import AudioReading, classify_audio
from nextgpt.training.world_eval.image import UNKNOWN, ImageReading, classify_image
from nextgpt.training.world_eval.score import AudioClip, WorldReport, evaluate_world_media, read_attributes
from nextgpt.training.world_eval.text import Mentions, caption_attributes, mentions
from nextgpt.training.world_eval.video import VideoReading, classify_video

__all__ = [
    "UNKNOWN",
    "AudioClip",
    "AudioReading",
    "ImageReading",
    "Mentions",
    "VideoReading",
    "WorldReport",
    "caption_attributes",
    "classify_audio",
    "classify_image",
    "classify_video",
    "evaluate_world_media",
    "mentions",
    "read_attributes",
]
