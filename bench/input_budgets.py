"""Peak memory of the encoder's per-input path (decode + ImageBind preprocessing) for attack-sized media.

`python bench/input_budgets.py` makes each medium, then runs `services.encoder.core._preprocess_one` on
it with the default encoder settings in a fresh process and prints the rise of peak RSS. Measured
(2-core CPU, OMP_NUM_THREADS=1), before the budgets -> after:
- 8192x8192 RGB PNG (191 KB):       +520 MB, decoded         -> +0 MB, refused (max_image_pixels)
- 600-frame black 720p MP4 (26 KB): +3178 MB, all 600 frames -> +115 MB, 10 sampled frames decoded
- 4096x4096 PNG (the largest accepted): +133 MB; 300-frame 1080p MP4: +222 MB.
"""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def png_bomb(width: int, height: int) -> bytes:
    """An all-black 8-bit RGB PNG: a few hundred KB of zlib that decode to width x height x 3 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def black_mp4(frames: int, width: int, height: int, fps: int = 30) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        black = np.zeros((height, width, 3), np.uint8)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def measure(path: str, modality: str, mime: str) -> str:
    """In this (fresh) process: peak RSS rise of one `_preprocess_one` call."""
    import torch  # noqa: F401  (loaded before the baseline, as in the running service)

    from nextgpt.types import MediaItem
    from services.encoder.config import EncoderServiceSettings
    from services.encoder.core import _preprocess_one

    item = MediaItem(modality, Path(path).read_bytes(), mime)  # type: ignore[arg-type]
    budgets = EncoderServiceSettings().media_budgets()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    try:
        result = f"ok {tuple(_preprocess_one(item, budgets).shape)}"  # type: ignore[union-attr]
    except Exception as exc:  # the refusal is the result
        result = f"{type(exc).__name__}: {exc}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return f"+{peak:.0f} MB peak RSS, {time.perf_counter() - started:.2f} s -> {result[:140]}"


def main() -> None:
    cases = {
        "8192x8192 PNG": (lambda: png_bomb(8192, 8192), "image", "image/png"),
        "4096x4096 PNG": (lambda: png_bomb(4096, 4096), "image", "image/png"),
        "600-frame 720p MP4": (lambda: black_mp4(600, 1280, 720), "video", "video/mp4"),
        "300-frame 1080p MP4": (lambda: black_mp4(300, 1920, 1080), "video", "video/mp4"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, modality, mime) in cases.items():
            path = Path(tmp) / "medium"
            path.write_bytes(make())
            args = f"{str(path)!r}, {modality!r}, {mime!r}"
            code = f"from bench.input_budgets import measure; print(measure({args}))"
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
            print(f"{name} ({path.stat().st_size // 1024} KB): {out}")


if __name__ == "__main__":
    main()
