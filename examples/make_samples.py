"""Writes the sample media the README and docs use: `cat.png` (a drawn cat face), `sound.wav` (a purring
chord), `clip.mp4` (a ball rolling across). Deterministic: the same bytes on every run and machine.

    .venv/bin/python examples/make_samples.py [DIR]   # DIR defaults to examples/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav

HERE = Path(__file__).resolve().parent


def cat_png() -> bytes:
    image = Image.new("RGB", (128, 128), (235, 225, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((24, 34, 104, 114), fill=(230, 140, 50))  # head
    draw.polygon([(28, 50), (36, 14), (56, 40)], fill=(230, 140, 50))  # ears
    draw.polygon([(100, 50), (92, 14), (72, 40)], fill=(230, 140, 50))
    draw.ellipse((44, 60, 56, 72), fill=(20, 20, 20))  # eyes
    draw.ellipse((72, 60, 84, 72), fill=(20, 20, 20))
    draw.polygon([(58, 82), (70, 82), (64, 90)], fill=(200, 80, 90))  # nose
    return encode_png(image)


def sound_wav(seconds: float = 2.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    purr = 0.5 * (1 + np.sin(2 * np.pi * 25 * t))  # a 25 Hz flutter over a low chord
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0, 165.0, 220.0)) / 3
    return encode_wav((0.4 * purr * chord).astype("float32"), rate)


def clip_mp4(frames: int = 16, size: int = 64) -> bytes:
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    video[:] = (40, 90, 40)  # grass
    ys, xs = np.mgrid[0:size, 0:size]
    for i in range(frames):
        cx = 8 + (size - 16) * i / (frames - 1)
        ball = (xs - cx) ** 2 + (ys - size / 2) ** 2 < 36
        video[i][ball] = (240, 240, 240)
    return encode_mp4(video, fps=8)


def main(out: Path = HERE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in (("cat.png", cat_png()), ("sound.wav", sound_wav()), ("clip.mp4", clip_mp4())):
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
