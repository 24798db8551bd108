"""The "shapes world": a tiny synthetic data set on which every training stage can show that it learns.

Images of coloured shapes, videos of a shape moving in one direction, and sounds (tones, chords, sweeps),
each captioned from the attributes that made it ("a red circle on a white background", "a blue square
moving right", "a high tone"). The files are written in the community layouts, so the same readers serve
the synthetic world and the real data sets:

    DIR/images/*.png  DIR/videos/*.mp4  DIR/audios/*.wav
    DIR/cc3m.json       [{"caption", "image_name"}]     (X-caption pairs, stage 1)
    DIR/webvid.json     [{"caption", "video_name"}]
    DIR/audiocaps.json  [{"caption", "audio_name"}]
    DIR/instructions.json  [{"conversations": [{"from", "value", ...}], ...}]   (stage 3; stage 2 uses
                        the output captions in it)
    DIR/heldout.json    [{"prompt", "expect": "image"|"text", "caption"?}]    (evaluation prompts)
    DIR/world.json      seed, counts, the held-out captions

Instruction records follow NExT-GPT's T-T+X layout: an output to generate is a placeholder (`<image>`)
in a gpt turn whose `caption` and `output_modality` fields name the alignment target; the record also
lists them in `image_captions` / `video_captions` / `audio_captions`. An input is a placeholder in a
human turn; its file is listed in the record's `image_list` / `video_list` / `audio_list`, in order.

Everything is drawn from generators seeded by (seed, stream), so a seed gives identical captions and
identical file bytes (PNG, WAV and MP4 encoding is deterministic, see `nextgpt.media.encode`).
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav

logger = logging.getLogger(__name__)

WORLD_VERSION = 6
"""Bump when the same seed would give different files or captions."""

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

DESCRIBE_PROMPTS = {
    "image": (
        "Describe this image.",
        "What is in this picture?",
        "What do you see?",
        "What is shown here?",
        "Can you describe this picture?",
    ),
    "video": (
        "Describe this video.",
        "What happens in this video?",
        "What do you see in this video?",
        "Describe the clip.",
    ),
    "audio": (
        "Describe this sound.",
        "What do you hear?",
        "Which sound is playing?",
        "Describe what you hear.",
    ),
}
"""Requests to describe an input medium. `nextgpt eval-world` asks in other words (`end_to_end.py`)."""
SHOW_PROMPTS = {
    "image": (
        "Show me a picture of {}.",
        "Can you draw {}?",
        "Generate an image of {}.",
        "I'd like to see a picture of {}.",
    ),
    "video": (
        "Show me a video of {}.",
        "Make a clip of {}.",
        "Generate a video of {}.",
        "I'd like a clip of {}.",
    ),
    "audio": ("Play me {}.", "Let me hear {}.", "Generate the sound of {}.", "Can you play {}?"),
}
"""Requests for a medium. Version 4 of the world doubled the video and audio phrasings (with two each, a
trained tiny LLM answered an unseen request for a sound with a picture or with text)."""
SHOW_REPLIES = ("Here it is: {}", "Sure! {}", "Of course. {}")
MARKER = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
TEXT_QA = (
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("How many points does a star have?", "This star has five points."),
    ("Is a circle round?", "Yes, a circle is round."),
    ("What colour is the sky on a clear day?", "The sky is blue."),
    ("What colour is grass?", "Grass is green."),
    ("What do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What do you get by mixing red and yellow?", "Mixing red and yellow gives orange."),
    ("Say hello.", "Hello!"),
    ("Who are you?", "I am a small assistant that knows about shapes, colours and sounds."),
)
SAY_WORDS = ("thanks", "yes", "no", "please", "hi", "sorry", "welcome", "okay")
"""Words for "Say ..." requests; "goodbye" is kept for the held-out set."""
THINGS = tuple("apple tree car house dog cat book chair cloud river boat bird cup".split())
"""Things outside the shapes world: asked about in text requests and asked for in a quarter of the picture
requests, so that an unfamiliar word says nothing about whether a medium is wanted (only the request
does). The held-out prompts' words (banana, wheel, joke, ...) are not among them."""
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SHAPE_FACTS = {
    "circle": ("A circle is round and has no corners.", "A circle has no sides."),
    "square": ("A square has four equal sides.", "A square has four sides."),
    "triangle": ("A triangle has three sides.", "A triangle has three sides."),
    "star": ("This star has five points.", "This star has ten sides."),
}
"""Per shape: a fact, and the answer to "How many sides does ... have?"."""
HELDOUT_TEXT_QA = (
    "How many corners does a square have?",
    "What is 7 plus 8?",
    "What colour is a banana?",
    "Name a shape with three sides.",
    "Say goodbye.",
    "Can you help me?",
    "Tell me a joke.",
    "What shape is a wheel?",
    "Good morning!",
    "Which is bigger, 3 or 5?",
)
"""Plain text prompts never seen in training, for which a trained model should answer without a span."""


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


def _rng(seed: int, stream: str) -> random.Random:
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
        wave = (
            sum((np.sin(2 * np.pi * root * k * t) for k in (1.0, third, 2 ** (7 / 12))), np.zeros_like(t)) / 3
        )
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


def world_captions(modality: str) -> list[str]:
    """Every caption the world can give a medium of `modality` ("image", "video" or "audio")."""
    if modality == "image":
        return [image_caption(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    if modality == "video":
        return [video_caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    return list(SOUNDS)


def heldout_image_combos(cfg: WorldConfig) -> list[tuple[str, str, str]]:
    combos = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    return sorted(_rng(cfg.seed, "heldout").sample(combos, cfg.n_heldout_images))


def make_world(out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Any]:
    """Write the shapes world into `out_dir` and return its summary (also saved as world.json)."""
    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    for sub in ("images", "videos", "audios"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    heldout = heldout_image_combos(cfg)
    train_combos = [
        (c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS if (c, s, b) not in set(heldout)
    ]

    # 1. images: every training combination in turn, so small worlds still cover the attribute space.
    rng = _rng(cfg.seed, "images")
    order = rng.sample(train_combos, len(train_combos))
    images = []
    for i in range(cfg.n_images):
        colour, shape, background = order[i % len(order)]
        name = f"img_{i:05d}.png"
        pixels = render_image(colour, shape, background, cfg.image_size, rng)
        (out / "images" / name).write_bytes(encode_png(pixels))
        images.append({"caption": image_caption(colour, shape, background), "image_name": name})

    # 2. videos.
    rng = _rng(cfg.seed, "videos")
    video_combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    order_v = rng.sample(video_combos, len(video_combos))
    videos = []
    for i in range(cfg.n_videos):
        colour, shape, direction = order_v[i % len(order_v)]
        name = f"vid_{i:05d}.mp4"
        frames = render_video(colour, shape, direction, cfg, rng)
        (out / "videos" / name).write_bytes(encode_mp4(frames, fps=cfg.video_fps))
        videos.append({"caption": video_caption(colour, shape, direction), "video_name": name})

    # 3. audio.
    rng = _rng(cfg.seed, "audios")
    audios = []
    for i in range(cfg.n_audios):
        caption = SOUNDS[i % len(SOUNDS)]
        name = f"aud_{i:05d}.wav"
        wave = render_audio(caption, cfg, rng)
        (out / "audios" / name).write_bytes(encode_wav(wave, cfg.sample_rate))
        audios.append({"caption": caption, "audio_name": name})

    instructions = make_instructions(cfg, images, videos, audios, train_combos)
    held = [
        {
            "prompt": SHOW_PROMPTS["image"][0].format(image_caption(*combo)),
            "expect": "image",
            "caption": image_caption(*combo),
        }
        for combo in heldout
    ] + [{"prompt": q, "expect": "text"} for q in HELDOUT_TEXT_QA]

    files = {
        "cc3m.json": images,
        "webvid.json": videos,
        "audiocaps.json": audios,
        "instructions.json": instructions,
        "heldout.json": held,
    }
    for name, records in files.items():
        (out / name).write_text(json.dumps(records, indent=1) + "\n")
    summary = {
        "version": WORLD_VERSION,
        "config": asdict(cfg),
        "counts": {name: len(records) for name, records in files.items()},
        "heldout_image_captions": [image_caption(*combo) for combo in heldout],
    }
    (out / "world.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("shapes world (seed %s) written to %s: %s", cfg.seed, out, summary["counts"])
    return summary


def _turn(who: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"from": who, "value": value, **extra}


def _show(modality: str, caption: str, rng: random.Random) -> list[dict[str, Any]]:
    """Human asks for a medium; gpt answers with its placeholder, the caption as the alignment target."""
    prompt = rng.choice(SHOW_PROMPTS[modality]).format(caption)
    reply = rng.choice(SHOW_REPLIES).format(MARKER[modality])
    return [
        _turn("human", prompt),
        _turn("gpt", reply, caption=caption, output_modality=modality),
    ]


def make_instructions(
    cfg: WorldConfig,
    images: list[dict[str, str]],
    videos: list[dict[str, str]],
    audios: list[dict[str, str]],
    train_combos: list[tuple[str, str, str]],
) -> list[dict[str, Any]]:
    """Dialogues of five kinds: describe an input, produce an output, plain text Q&A, and a two-round
    chat that describes an image and then draws a variant of it. Plain text is 4 dialogues in 9 and
    a reply with a medium 4 replies in 10, so that a reply's prior does not lean towards a medium (with
    text at 2 in 7, short unfamiliar requests were often answered with a picture). Since version 5 each
    medium has its own request in every 9 dialogues (a picture also in the chat's second round): version 4
    asked for a picture in 3 of 9 and for a clip or a sound in 1 of 18 each, and the tiny LLM answered
    most unseen requests for a sound with a picture or text (docs/training.md has both builds)."""
    rng = _rng(cfg.seed, "instructions")
    pairs = {"image": images, "video": videos, "audio": audios}
    kinds = ["describe", "show_image", "show_video", "show_audio", "text", "text", "text", "text", "chat"]
    records: list[dict[str, Any]] = []
    for i in range(cfg.n_instructions):
        kind = kinds[i % len(kinds)]
        if kind == "describe" or (kind == "chat" and not images):
            available = [m for m, items in pairs.items() if items]
            if not available:
                kind = "text"
            else:
                modality = rng.choice(available)
                item = rng.choice(pairs[modality])
                prompt = rng.choice(DESCRIBE_PROMPTS[modality])
                answer = sentence_case(item["caption"]) + "."
                records.append(
                    {
                        f"{modality}_list": [item[f"{modality}_name"]],
                        "conversations": [
                            _turn("human", f"{MARKER[modality]}\n{prompt}"),
                            _turn("gpt", answer),
                        ],
                    }
                )
                continue
        if kind == "show_image":
            if rng.random() < 0.25:
                thing = rng.choice(THINGS)
                caption = f"{article(thing)} {thing}"
            else:
                caption = image_caption(*rng.choice(train_combos))
            records.append({"image_captions": [caption], "conversations": _show("image", caption, rng)})
        elif kind in ("show_video", "show_audio"):
            modality = kind.removeprefix("show_")
            if modality == "video":
                caption = video_caption(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(DIRECTIONS))
            else:
                caption = rng.choice(SOUNDS)
            records.append(
                {f"{modality}_captions": [caption], "conversations": _show(modality, caption, rng)}
            )
        elif kind == "text":
            question, answer = text_task(rng)
            records.append({"conversations": [_turn("human", question), _turn("gpt", answer)]})
        elif kind == "chat":
            item = rng.choice(images)
            colour, shape, background = _parse_image_caption(item["caption"])
            combos = [c for c in train_combos if c[1] == shape and c[2] == background and c[0] != colour]
            new = image_caption(*(rng.choice(combos) if combos else (colour, shape, background)))
            new_colour = new.split()[1]
            records.append(
                {
                    "image_list": [item["image_name"]],
                    "image_captions": [new],
                    "conversations": [
                        _turn("human", f"<image>\n{rng.choice(DESCRIBE_PROMPTS['image'])}"),
                        _turn("gpt", sentence_case(item["caption"]) + "."),
                        _turn("human", f"Now show me {article(new_colour)} {new_colour} one."),
                        _turn(
                            "gpt",
                            rng.choice(SHOW_REPLIES).format("<image>"),
                            caption=new,
                            output_modality="image",
                        ),
                    ],
                }
            )
    return records


def text_task(rng: random.Random) -> tuple[str, str]:
    """One plain text exchange (no media in, none out): questions and, as often, imperatives ("Count
    to four.", "Say thanks."), and for each show prompt's frame a text request in the same frame ("Show
    me how to spell red.", "Can you count to three?", "Make a list of ...", "Let me know ..."), so that
    a request means "make a medium" only when it asks for a picture, a video or a sound. Text replies
    never use the show replies' openers, so a reply's first token already says whether a medium
    follows. Held-out prompts (HELDOUT_TEXT_QA) are not used."""
    colours, shapes = list(COLOURS), list(SHAPES)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    shape, colour, word = rng.choice(shapes), rng.choice(colours), rng.choice(SAY_WORDS)
    thing = rng.choice(THINGS)
    a_thing = f"{article(thing)} {thing}"
    n = rng.randint(2, 6)
    counted = ", ".join(str(i) for i in range(1, n + 1)) + "."
    tasks = [
        lambda: rng.choice(TEXT_QA),
        lambda: (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
        lambda: (
            f"What is {max(a, b)} minus {min(a, b)}?",
            f"{max(a, b)} minus {min(a, b)} is {abs(a - b)}.",
        ),
        lambda: (f"How many sides does {article(shape)} {shape} have?", SHAPE_FACTS[shape][1]),
        lambda: (f"Tell me a fact about {shape}s.", SHAPE_FACTS[shape][0]),
        lambda: (f"Count from one to {NUMBER_WORDS[n]}.", counted),
        lambda: (f"Can you count to {NUMBER_WORDS[n]}?", counted),
        lambda: (f"Spell the word {colour}.", "-".join(colour) + "."),
        lambda: (f"Show me how to spell {colour}.", "-".join(colour) + "."),
        lambda: (f"Write the number {a} in words.", f"{a} is written {NUMBER_WORDS[a]}."),
        lambda: (
            f"Is {a} bigger than {b}?",
            f"Yes, {a} is bigger than {b}." if a > b else f"No, {a} is not bigger than {b}.",
        ),
        lambda: (f"Repeat the word {shape}.", f"{sentence_case(shape)}."),
        lambda: (f"Say {word}.", f"{sentence_case(word)}!"),
        lambda: (f"I'd like to know how many sides {article(shape)} {shape} has.", SHAPE_FACTS[shape][1]),
        lambda: ("List the shapes you know.", "Circle, square, triangle and star."),
        lambda: (f"What colour is {a_thing}?", f"{sentence_case(a_thing)} can have many colours."),
        lambda: (f"Tell me about {a_thing}.", f"{sentence_case(a_thing)} is not a shape I know."),
        lambda: ("Make a list of the shapes you know.", "Circle, square, triangle and star."),
        lambda: (f"Let me know what {a} plus {b} is.", f"{a} plus {b} is {a + b}."),
        lambda: (f"Generate a number bigger than {a}.", f"{a + 1} is bigger than {a}."),
        lambda: ("Thank you!", "You are welcome!"),
    ]
    return rng.choice(tasks)()


def _parse_image_caption(caption: str) -> tuple[str, str, str]:
    words = caption.split()  # "a red circle on a white background"
    return words[1], words[2], words[5]
