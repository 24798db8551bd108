"""What the shapes world is made of: its attributes (colours, shapes, backgrounds, directions, sounds),
its sizes (`WorldConfig`), the captions, and the renderers of its pictures, clips and sounds.

The trained parts (`nextgpt.training.foundation`) read the world through this module only, so a change
to the dialogues or the files `nextgpt.training.data.synthetic` writes leaves their build keys alone
(`nextgpt.training.world_build.trainer_code_hash`) and retrains the LLM only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
DIRECTIONS = ("left", "right", "up", "down")
SOUNDS = (
    "a low tone",
    "a high tone",
    "a low beeping tone",
    "a high beeping tone",
    "a major chord",
    "a minor chord",
    "a rising sweep",
    "a falling sweep",
)
CHORD_PARTIALS = 6
"""Partials of each chord note, the k-th at 1/k of the first (a sawtooth-like timbre; since world
version 10). ImageBind's front end (25 ms Hann windows: 31 Hz bins) cannot resolve the thirds of pure
notes at the world's roots (major and minor 14-28 Hz apart), so the encoder read major or minor at
chance; with partials the two chords' spectra differ where the partials meet or beat (a linear probe
on time-averaged fbank features: 56% pure, 98% with six partials; `scripts/probe_chord_features.py`)."""


@dataclass
class WorldConfig:
    """Sizes of the shapes world; the defaults generate in a few seconds and train on CPU."""

    seed: int = 0
    n_images: int = 240
    """Image-caption pairs (cc3m.json)."""
    n_videos: int = 64
    """Video-caption pairs (webvid.json)."""
    n_audios: int = 64
    """Audio-caption pairs (audiocaps.json)."""
    n_instructions: int = 320
    """Dialogues in instructions.json."""
    filler_rate: float = 0.0
    """Share of the requests for and questions about a medium that get one stray word outside the caption
    (`synthetic.with_filler`): an "an", "on", "the", ... or a made-up word of 3-8 letters, drawn from
    their own stream, so the dialogues are otherwise the same. Meant against single tokens of the few
    phrasings taken for content: "an" comes only before "orange" in a caption, and seed 2's LLM drew
    "Please animate ..." ("an im ate") orange; another answered "What is going on in this clip?" with "A
    gray background." (the world's "on" is nearly always "on a ... background"). Measured at 0.3 (the LLM
    stages alone, 2026-12-03): seed 2's text->video 100% instead of 42%, but seed 0's 71% (its video
    alignment turned late) until stage 3's output projectors trained at half the LoRA's rate. The `shapes`
    build uses 0.3 (`world_build.SHAPES_FILLER_RATE`); 0, the default, keeps version 10's dialogues."""
    n_heldout_images: int = 6
    """Image captions (colour, shape, background) kept out of all training data, asked for in heldout.json."""
    image_size: int = 64
    """Side of the square images and video frames, in pixels."""
    video_frames: int = 8
    video_fps: int = 4
    video_travel: float = 0.25
    """Share of the frame's free width a clip's shape travels (1: from one edge to the other, as until
    world version 5). ImageBind reads a clip as its first and last frame, one 28 px patch stem over both
    (the `shapes` arch): when the shape overlaps itself between them, the stem sees the motion within a
    patch; when it crosses the frame, direction is a relation between patches far apart, which the
    encoder's tower learnt only in part (held-out 54%). On fresh clips, the tower on a direction loss
    alone reached 94% in 500 steps at 0.25, 66% at 0.4 and ~50% after 1200 steps at 1
    (`scripts/probe_encoder_shapes.py --task direction`)."""
    audio_seconds: float = 2.0
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not 0.0 <= self.filler_rate <= 1.0:
            raise ValueError(f"filler_rate must be in [0, 1], got {self.filler_rate}")
        for name in ("n_images", "n_videos", "n_audios", "n_instructions", "n_heldout_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        combos = len(COLOURS) * len(SHAPES) * len(BACKGROUNDS)
        if self.n_heldout_images >= combos:
            raise ValueError(
                f"n_heldout_images={self.n_heldout_images} must be below {combos} (all combinations)"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size} must be >= 16 pixels")
        if not 0 < self.video_travel <= 1:
            raise ValueError(f"video_travel={self.video_travel} must be in (0, 1]")
        if self.video_frames < 2 or self.video_fps <= 0:
            raise ValueError(f"video_frames={self.video_frames} (>= 2) / video_fps={self.video_fps} (> 0)")
        if not 0.1 <= self.audio_seconds <= 30 or self.sample_rate < 8000:
            raise ValueError(f"audio_seconds={self.audio_seconds} (0.1-30) / sample_rate={self.sample_rate}")


def world_rng(seed: int, stream: str) -> random.Random:
    """An independent generator per stream, so changing one count leaves the other files unchanged."""
    return random.Random(f"{seed}:{stream}")


# --- images and videos ------------------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sentence_case(text: str) -> str:
    """`text` with its first letter capitalised (unlike str.capitalize, the rest is left alone)."""
    return text[:1].upper() + text[1:]


def image_caption(colour: str, shape: str, background: str) -> str:
    return f"{article(colour)} {colour} {shape} on a {background} background"


def video_caption(colour: str, shape: str, direction: str) -> str:
    return f"{article(colour)} {colour} {shape} moving {direction}"


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a triangle (apex up) or five-pointed star centred at (cx, cy) with outer radius r."""
    if shape == "triangle":
        angles = [-90.0, 30.0, 150.0]
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles]
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else 0.45 * r
        a = math.radians(-90.0 + 36.0 * i)
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def draw_shape(canvas: Image.Image, shape: str, colour: str, cx: float, cy: float, r: float) -> None:
    draw = ImageDraw.Draw(canvas)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.85  # a square of the same visual weight as the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape in ("triangle", "star"):
        draw.polygon(shape_points(shape, cx, cy, r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def render_image(colour: str, shape: str, background: str, size: int, rng: random.Random) -> np.ndarray:
    """(H, W, 3) uint8: one shape of random size and position on a plain background."""
    canvas = Image.new("RGB", (size, size), BACKGROUNDS[background])
    r = rng.uniform(0.15, 0.35) * size
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    draw_shape(canvas, shape, colour, cx, cy, r)
    return np.asarray(canvas)


def render_video(colour: str, shape: str, direction: str, cfg: WorldConfig, rng: random.Random) -> np.ndarray:
    """(T, H, W, 3) uint8: the shape moves in `direction` at constant speed over `cfg.video_travel` of
    the white frame's free width, from a random start."""
    size = cfg.image_size
    r = rng.uniform(0.12, 0.2) * size
    lo, hi = r + 1, size - r - 1
    across = rng.uniform(lo, hi)  # the fixed coordinate
    span = cfg.video_travel * (hi - lo)
    start = rng.uniform(lo, hi - span)  # the lower end of the track
    frames = []
    for t in range(cfg.video_frames):
        f = t / (cfg.video_frames - 1)
        along = start + f * span if direction in ("right", "down") else start + span - f * span
        cx, cy = (along, across) if direction in ("left", "right") else (across, along)  # y grows down
        canvas = Image.new("RGB", (size, size), BACKGROUNDS["white"])
        draw_shape(canvas, shape, colour, float(cx), float(cy), r)
        frames.append(np.asarray(canvas))
    return np.stack(frames)


# --- audio ------------------------------------------------------------------------------------------


def render_audio(caption: str, cfg: WorldConfig, rng: random.Random) -> np.ndarray:
    """(N,) float32 in [-1, 1]: the sound a caption of SOUNDS names, with a random pitch and loudness."""
    n = int(cfg.audio_seconds * cfg.sample_rate)
    t = np.arange(n, dtype=np.float64) / cfg.sample_rate
    low = rng.uniform(150.0, 300.0)
    high = rng.uniform(900.0, 1500.0)
    if caption in ("a low tone", "a low beeping tone"):
        wave = np.sin(2 * np.pi * low * t)
    elif caption in ("a high tone", "a high beeping tone"):
        wave = np.sin(2 * np.pi * high * t)
    elif caption in ("a major chord", "a minor chord"):
        root = rng.uniform(200.0, 400.0)
        third = 2 ** ((4 if caption == "a major chord" else 3) / 12)
        partials = range(1, CHORD_PARTIALS + 1)
        notes = (1.0, third, 2 ** (7 / 12))
        wave = sum(
            (np.sin(2 * np.pi * root * n * k * t) / k for n in notes for k in partials), np.zeros_like(t)
        )
        wave = wave / (len(notes) * sum(1 / k for k in partials))  # |wave| <= 1
    elif caption in ("a rising sweep", "a falling sweep"):
        f0, f1 = (low, high) if caption == "a rising sweep" else (high, low)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * cfg.audio_seconds))  # linear chirp
        wave = np.sin(phase)
    else:
        raise ValueError(f"unknown sound {caption!r}; use one of {SOUNDS}")
    if "beeping" in caption:
        wave = wave * ((t * 4.0) % 1.0 < 0.5)  # 4 beeps per second
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms ramps: no clicks
    return (rng.uniform(0.3, 0.8) * wave * fade).astype(np.float32)


# --- the world --------------------------------------------------------------------------------------


def image_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) a picture can have, in a fixed order."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def video_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction) a clip can have, in a fixed order."""
    return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def world_captions(modality: str) -> list[str]:
    """Every caption the world can give a medium of `modality` ("image", "video" or "audio")."""
    if modality == "image":
        return [image_caption(*combo) for combo in image_combos()]
    if modality == "video":
        return [video_caption(*combo) for combo in video_combos()]
    return list(SOUNDS)


def heldout_image_combos(cfg: WorldConfig) -> list[tuple[str, str, str]]:
    return sorted(world_rng(cfg.seed, "heldout").sample(image_combos(), cfg.n_heldout_images))
