"""Sample inputs made on the fly, so that demos, benchmarks and tests need no media files of their own."""

from __future__ import annotations

from nextgpt.media.encode import encode_png, encode_wav
from nextgpt.types import MediaItem


def sample_inputs() -> dict[str, MediaItem]:
    """A generated picture (a yellow disc on blue, 96x96 PNG) and a C-major chord (2 s, 16 kHz WAV)."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (30, 90, 200))
    ImageDraw.Draw(image).ellipse((24, 24, 72, 72), fill=(240, 200, 40))
    t = np.arange(16000 * 2) / 16000
    chord = sum((np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)), np.zeros_like(t)) / 3
    return {
        "image": MediaItem("image", encode_png(image), "image/png"),
        "audio": MediaItem("audio", encode_wav(chord.astype("float32"), 16000), "audio/wav"),
    }
