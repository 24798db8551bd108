"""How much decoding one input medium may cost, checked before (or while) it is decoded.

File size alone says little: a 63 KB PNG can hold 8192 x 8192 pixels (+515 MB decoded) and a 26 KB MP4
600 frames of 720p (+2.8 GB as RGB). These budgets bound what a file *decodes to*; each one is a setting
of the encoder service (`EncoderServiceSettings`, `NEXTGPT_ENCODER_*`) and every refusal is an
`InvalidInput` (HTTP 400, gRPC INVALID_ARGUMENT) that names the limit, its setting and the value.
Defaults pass real use (12 MP photos, 5-10 s sounds, minutes of 1080p video) with the encoder's peak
memory per input under about 300 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

from nextgpt.errors import ConfigError

MAX_IMAGE_PIXELS = 4096 * 4096
"""Default of `MediaBudgets.max_image_pixels`: 16.8 M pixels (~50 MB as RGB; a 12 MP photo fits)."""
MAX_IMAGE_SIDE = 16384
"""Longest image side accepted whatever the pixel count (a 16384 x 1 strip is a mistake, not a photo)."""
MAX_AUDIO_SECONDS = 300.0
"""Default of `MediaBudgets.max_audio_seconds` (ImageBind reads 3 clips of 2 s spread over the file)."""
MAX_AUDIO_CHANNELS = 8
"""Default of `MediaBudgets.max_audio_channels` (7.1 sound; the decoded waveform keeps every channel)."""
MAX_VIDEO_SECONDS = 600.0
"""Default of `MediaBudgets.max_video_seconds`."""
MAX_VIDEO_FRAME_PIXELS = 1920 * 1088
"""Default of `MediaBudgets.max_video_frame_pixels`: 1080p (coded height 1088) and anything smaller."""
MAX_VIDEO_DECODED_PIXELS = 2 * 1024**3
"""Default of `MediaBudgets.max_video_decoded_pixels`: ~1000 frames of 1080p, a few CPU seconds."""


@dataclass(frozen=True)
class MediaBudgets:
    """Limits on what one input medium decodes to (the encoder service fills them from its settings)."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    """Most pixels (width x height) of an image, read from its header before any pixel is decoded."""
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    """Longest audio, in seconds: checked against the header's duration, then while decoding."""
    max_audio_channels: int = MAX_AUDIO_CHANNELS
    """Most channels of an audio stream."""
    max_video_seconds: float = MAX_VIDEO_SECONDS
    """Longest video, in seconds (frames / average frame rate, as ImageBind's reference loader)."""
    max_video_frame_pixels: int = MAX_VIDEO_FRAME_PIXELS
    """Most pixels (width x height) of one video frame. Only the frames ImageBind samples (at most 10) are
    kept as RGB, so this bounds the memory of a video: 10 x 1920 x 1088 x 3 B = 63 MB."""
    max_video_decoded_pixels: int = MAX_VIDEO_DECODED_PIXELS
    """Most pixels the video decoder may produce for one input, skipped frames included (frames decoded
    x width x height): seeking to the keyframe before each sampled frame keeps this small for ordinary
    files; it bounds the CPU time of a long video with few keyframes."""

    def __post_init__(self) -> None:
        for name in (
            "max_image_pixels",
            "max_audio_channels",
            "max_video_frame_pixels",
            "max_video_decoded_pixels",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("max_audio_seconds", "max_video_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0 seconds")


DEFAULT_BUDGETS = MediaBudgets()
