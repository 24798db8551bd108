"""Small valid media items (PNG, WAV, MP4) for tests that run the pipeline end to end."""

from __future__ import annotations

import numpy as np
from PIL import Image

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.types import MediaItem


def sample_image() -> MediaItem:
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (200, 30, 30)
    return MediaItem("image", encode_png(Image.fromarray(pixels)), "image/png")


def sample_audio() -> MediaItem:
    t = np.arange(16000) / 16000
    return MediaItem("audio", encode_wav(np.sin(2 * np.pi * 440 * t).astype("float32"), 16000), "audio/wav")


def sample_video() -> MediaItem:
    frames = np.stack([np.full((32, 48, 3), 20 * i, dtype=np.uint8) for i in range(12)])
    return MediaItem("video", encode_mp4(frames, fps=8), "video/mp4")
