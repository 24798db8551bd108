"""`make demo`: a few any-to-any requests on the tiny profile, in one process, media saved to disk.

The tiny profile has random weights, so the text is gibberish; the point is that every path through the
model runs end to end with the real loading code and writes valid PNG / MP4 / WAV files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from nextgpt.cli import write_media
from nextgpt.config import GenerationOptions
from nextgpt.media.encode import encode_png, encode_wav
from nextgpt.pipeline import NextGPT
from nextgpt.profiles import load_profile
from nextgpt.types import MediaItem, Message

console = Console()


def sample_inputs() -> dict[str, MediaItem]:
    """A generated picture and chord, so the demo needs no files of its own."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (30, 90, 200))
    ImageDraw.Draw(image).ellipse((24, 24, 72, 72), fill=(240, 200, 40))
    t = np.arange(16000 * 2) / 16000
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 3
    return {
        "image": MediaItem("image", encode_png(image), "image/png"),
        "audio": MediaItem("audio", encode_wav(chord.astype("float32"), 16000), "audio/wav"),
    }


def run_demo(out: Path, *, profile: str | None = None, models_dir: Path | None = None) -> list[Path]:
    model = NextGPT.from_profile(load_profile(profile, models_dir=models_dir), progress=True)
    inputs = sample_inputs()
    requests = [
        ("text-to-image", Message("user", "Show me a picture of a yellow sun."), ("text", "image")),
        ("image-to-text", Message("user", "What is in this image?", [inputs["image"]]), ("text",)),
        (
            "audio-to-video",
            Message("user", "Make a video for this sound.", [inputs["audio"]]),
            ("text", "video"),
        ),
        ("text-to-audio", Message("user", "Play the sound of rain.", []), ("text", "audio")),
    ]
    written: list[Path] = []
    summary = []
    for name, message, modalities in requests:
        started = time.perf_counter()
        options = GenerationOptions(seed=0, max_new_tokens=32, modalities=modalities)
        result = model.generate([message], options)
        paths = write_media(result.media, out, prefix=f"{name}-")
        written += paths
        elapsed = time.perf_counter() - started
        console.print(f"[bold]{name}[/bold] ({elapsed:.1f}s): {result.text[:60]!r}")
        for path in paths:
            console.print(f"  wrote {path}")
        for error in result.errors:
            console.print(f"  [red]{error.modality} failed:[/red] {error.message}")
        summary.append({"request": name, "text": result.text, "media": [str(p) for p in paths]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"media saved under [bold]{out}[/bold]")
    return written
