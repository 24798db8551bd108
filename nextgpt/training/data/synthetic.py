"""The "shapes world": a tiny synthetic data set on which every training stage can show that it learns.

Images of coloured shapes, videos of a shape moving in one direction, and sounds (tones, chords, sweeps),
each captioned from the attributes that made it ("a red circle on a white background", "a blue square
moving right", "a high tone"); what they are and how they are drawn is `world_media`, this module adds
the dialogues and writes the files. They are written in the community layouts, so the same readers
serve the synthetic world and the real data sets:

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
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.training.data.world_media import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SOUNDS,
    WorldConfig,
    article,
    heldout_image_combos,
    image_caption,
    image_combos,
    render_audio,
    render_image,
    render_video,
    sentence_case,
    video_caption,
    video_combos,
    world_rng,
)

logger = logging.getLogger(__name__)

WORLD_VERSION = 10
"""Bump when the same seed would give different files or captions."""


REQUEST_FRAMES = ("{}.", "Can you {}?", "Would you {}?", "I'd like you to {}.", "Now {}.")
"""Wrappers of an imperative request, the same for every kind of request (describe, show, plain text), so
that the wrapper says nothing about the reply (since world version 7). Alone they did not teach the
tiny LLM to route unseen requests (`NEUTRAL_SHOW_PROMPTS` did; docs/training.md). `nextgpt eval-world`
asks in wrappers that are not among these ("Please ...", "Could you ...?")."""
DESCRIBE_PROMPTS = {
    "image": (
        "describe this image",
        "What is in this picture?",
        "What do you see?",
        "What is shown here?",
        "describe this picture",
        "What is this?",
        "tell me about this image",
        "What can you see in the image?",
        "explain the picture",
    ),
    "video": (
        "describe this video",
        "What happens in this video?",
        "What do you see in this video?",
        "describe the clip",
        "What is in this video?",
        "tell me about this video",
        "What moves in the clip, and where to?",
        "explain the video",
        "What does the video contain?",
    ),
    "audio": (
        "describe this sound",
        "What do you hear?",
        "Which sound is playing?",
        "describe what you hear",
        "What kind of sound is this?",
        "tell me about this recording",
        "name the sound",
        "What can be heard here?",
    ),
}
"""Requests to describe an input medium: a sentence as is, or an imperative (no final stop) in one of
`REQUEST_FRAMES`. `nextgpt eval-world` asks in other words (`end_to_end.py`). Version 8 of the world
added four or five phrasings per medium (and asks about an input twice as often, `make_instructions`):
with four or five, the LLM read the colour of its own training clips in 97% of replies to a training
phrasing and in 69% to an unseen one; the replies to unseen questions about fresh clips named colour,
shape and direction in 86% / 84% of 288 (two LLM seeds) instead of 44% / 67% (docs/training.md)."""
SHOW_PROMPTS = {
    "image": (
        "show me a picture of {}",
        "draw {}",
        "generate an image of {}",
        "I'd like to see a picture of {}.",
    ),
    "video": (
        "show me a video of {}",
        "make a clip of {}",
        "generate a video of {}",
        "I'd like a clip of {}.",
    ),
    "audio": ("play me {}", "let me hear {}", "generate the sound of {}", "play {}"),
}
"""Requests for a medium, written like `DESCRIBE_PROMPTS`. Version 4 of the world doubled the video and
audio phrasings (with two each, a trained tiny LLM answered an unseen request for a sound with a picture
or with text)."""
NEUTRAL_SHOW_PROMPTS = (
    "generate {}",
    "make {}",
    "give me {}",
    "come up with {}",
    "compose {}",
    "put together {}",
    "output {}",
    "I want {}.",
)
"""Requests that name no medium, asked for a world caption: "Generate a high tone." wants a sound, "Make a
red circle moving left." a clip, so the caption decides the medium as much as the verb (since world
version 7). With only a medium's own verbs, the tiny LLM routed an unseen verb by its likeness to the
seen ones: version 6's build answered all 12 "Please produce ..." (a tone or a sweep) with text; with
`REQUEST_FRAMES` alone 23 of 32 got a picture and 31 of 32 "Please animate ..." text. With these verbs
every request for a medium got it (LLM stages on version 6's parts, world seed 0).
Version 9 has eight such verbs instead of three and asks half of the requests for a world caption with
them instead of a third: 360 requests in five unseen verbs ("Please render a low tone.") got the asked
medium in 346 / 356 of 360 (LLM seeds 0 / 1) instead of 283 / 355 (docs/training.md).
The same verbs ask for text too ("Make a list of ...", "Generate a number ..."); there the object
decides as well."""
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


def is_imperative(prompt: str) -> bool:
    """A prompt without a final stop or question mark is an imperative to wrap in a request frame."""
    return not prompt.endswith((".", "?", "!"))


def in_frame(prompt: str, frame: str) -> str:
    """`prompt` put into `frame` ("Can you {}?"), capitalised; a sentence in the bare frame "{}" is itself."""
    return sentence_case(frame.format(prompt))


FILLER_WORDS = ("an", "a", "the", "on", "in", "of", "with", "and", "it", "so", "just", "now")
"""Half of the stray words of `WorldConfig.filler_rate`; the other half are made up (`filler_word`)."""


def filler_word(rng: random.Random) -> str:
    """A `FILLER_WORDS` word or, as often, a made-up lower-case word of 3 to 8 letters."""
    if rng.random() < 0.5:
        return rng.choice(FILLER_WORDS)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))


def with_filler(text: str, keep: str, rng: random.Random, rate: float) -> str:
    """`text` with, at `rate` (`WorldConfig.filler_rate`), one `filler_word` put between two of its words
    (or first or last), never inside `keep` (the caption, "" for none)."""
    if rate <= 0 or rng.random() >= rate:
        return text
    start = text.find(keep) if keep else -1
    inside = range(start + 1, start + len(keep)) if start >= 0 else range(0)
    cuts = [
        i for i in [0, *(i + 1 for i, c in enumerate(text) if c == " "), len(text) + 1] if i not in inside
    ]
    cut = rng.choice(cuts)
    word = filler_word(rng)
    if cut > len(text):
        return f"{text} {word}"
    return f"{text[:cut]}{word} {text[cut:]}"


def ask(prompt: str, rng: random.Random) -> str:
    """The prompt as a user would type it: an imperative in a random `REQUEST_FRAMES` wrapper."""
    return in_frame(prompt, rng.choice(REQUEST_FRAMES)) if is_imperative(prompt) else prompt


def prompt_sentences(prompts: tuple[str, ...]) -> list[str]:
    """Every sentence `ask` can make of these prompts; the first is the first prompt said plainly."""
    return [
        in_frame(prompt, frame)
        for prompt in prompts
        for frame in (REQUEST_FRAMES if is_imperative(prompt) else ("{}",))
    ]


# --- the world's files -----------------------------------------------------------------------------


def make_world(out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Any]:
    """Write the shapes world into `out_dir` and return its summary (also saved as world.json)."""
    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    for sub in ("images", "videos", "audios"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    heldout = heldout_image_combos(cfg)
    held_combos = set(heldout)
    train_combos = [combo for combo in image_combos() if combo not in held_combos]

    # 1. images: every training combination in turn, so small worlds still cover the attribute space.
    rng = world_rng(cfg.seed, "images")
    order = rng.sample(train_combos, len(train_combos))
    images = []
    for i in range(cfg.n_images):
        colour, shape, background = order[i % len(order)]
        name = f"img_{i:05d}.png"
        pixels = render_image(colour, shape, background, cfg.image_size, rng)
        (out / "images" / name).write_bytes(encode_png(pixels))
        images.append({"caption": image_caption(colour, shape, background), "image_name": name})

    # 2. videos.
    rng = world_rng(cfg.seed, "videos")
    clip_combos = video_combos()
    order_v = rng.sample(clip_combos, len(clip_combos))
    videos = []
    for i in range(cfg.n_videos):
        colour, shape, direction = order_v[i % len(order_v)]
        name = f"vid_{i:05d}.mp4"
        frames = render_video(colour, shape, direction, cfg, rng)
        (out / "videos" / name).write_bytes(encode_mp4(frames, fps=cfg.video_fps))
        videos.append({"caption": video_caption(colour, shape, direction), "video_name": name})

    # 3. audio.
    rng = world_rng(cfg.seed, "audios")
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
            "prompt": prompt_sentences(SHOW_PROMPTS["image"])[0].format(image_caption(*combo)),
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


def _show(
    modality: str,
    caption: str,
    rng: random.Random,
    fillers: random.Random,
    filler_rate: float,
    *,
    world: bool = True,
) -> list[dict[str, Any]]:
    """Human asks for a medium; gpt answers with its placeholder, the caption as the alignment target.
    Half of the requests for a `world` caption (one only a medium of `modality` has) use a verb that
    names no medium (`NEUTRAL_SHOW_PROMPTS`); `fillers` draws the stray words (`with_filler`)."""
    prompts = NEUTRAL_SHOW_PROMPTS if world and rng.random() < 1 / 2 else SHOW_PROMPTS[modality]
    prompt = with_filler(ask(rng.choice(prompts), rng).format(caption), caption, fillers, filler_rate)
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
    chat that describes an image and then draws a variant of it. A text reply (plain text 3 dialogues in
    9, a description 2 in 9; version 7 had 4 and 1) ends 5 dialogues in 9 and a reply with a medium 4
    replies in 10, so that a reply's prior does not lean towards a medium (with text at 2 in 7, short
    unfamiliar requests were often answered with a picture). Since version 5 each medium has its own
    request in every 9 dialogues (a picture also in the chat's second round): version 4 asked for a
    picture in 3 of 9 and for a clip or a sound in 1 of 18 each, and the tiny LLM answered most unseen
    requests for a sound with a picture or text (docs/training.md has both builds). A request or question
    for a medium may hold a stray word (`WorldConfig.filler_rate`)."""
    rng = world_rng(cfg.seed, "instructions")
    fillers = world_rng(cfg.seed, "fillers")
    pairs = {"image": images, "video": videos, "audio": audios}
    kinds = ["describe", "show_image", "show_video", "show_audio", "text", "describe", "text", "text", "chat"]
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
                prompt = with_filler(
                    ask(rng.choice(DESCRIBE_PROMPTS[modality]), rng), "", fillers, cfg.filler_rate
                )
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
                caption, world = f"{article(thing)} {thing}", False
            else:
                caption, world = image_caption(*rng.choice(train_combos)), True
            records.append(
                {
                    "image_captions": [caption],
                    "conversations": _show("image", caption, rng, fillers, cfg.filler_rate, world=world),
                }
            )
        elif kind in ("show_video", "show_audio"):
            modality = kind.removeprefix("show_")
            if modality == "video":
                caption = video_caption(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(DIRECTIONS))
            else:
                caption = rng.choice(SOUNDS)
            records.append(
                {
                    f"{modality}_captions": [caption],
                    "conversations": _show(modality, caption, rng, fillers, cfg.filler_rate),
                }
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
                        _turn("human", f"<image>\n{ask(rng.choice(DESCRIBE_PROMPTS['image']), rng)}"),
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
    to four.", "Say thanks.") in the same `REQUEST_FRAMES` as the media requests, and for each show
    prompt's verb a text request with it ("Show me how to spell red.", "Make a list of ...", "Let me know
    ..."), so that a request means "make a medium" only when it asks for a picture, a video or a
    sound. Text replies never use the show replies' openers, so a reply's first token already says
    whether a medium follows. Held-out prompts (HELDOUT_TEXT_QA) are not used."""
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
        lambda: (ask(f"tell me a fact about {shape}s", rng), SHAPE_FACTS[shape][0]),
        lambda: (ask(f"count from one to {NUMBER_WORDS[n]}", rng), counted),
        lambda: (ask(f"count to {NUMBER_WORDS[n]}", rng), counted),
        lambda: (ask(f"spell the word {colour}", rng), "-".join(colour) + "."),
        lambda: (ask(f"show me how to spell {colour}", rng), "-".join(colour) + "."),
        lambda: (ask(f"write the number {a} in words", rng), f"{a} is written {NUMBER_WORDS[a]}."),
        lambda: (
            f"Is {a} bigger than {b}?",
            f"Yes, {a} is bigger than {b}." if a > b else f"No, {a} is not bigger than {b}.",
        ),
        lambda: (ask(f"repeat the word {shape}", rng), f"{sentence_case(shape)}."),
        lambda: (ask(f"say {word}", rng), f"{sentence_case(word)}!"),
        lambda: (f"I'd like to know how many sides {article(shape)} {shape} has.", SHAPE_FACTS[shape][1]),
        lambda: (ask("list the shapes you know", rng), "Circle, square, triangle and star."),
        lambda: (f"What colour is {a_thing}?", f"{sentence_case(a_thing)} can have many colours."),
        lambda: (ask(f"tell me about {a_thing}", rng), f"{sentence_case(a_thing)} is not a shape I know."),
        lambda: (ask("make a list of the shapes you know", rng), "Circle, square, triangle and star."),
        lambda: (ask(f"let me know what {a} plus {b} is", rng), f"{a} plus {b} is {a + b}."),
        lambda: (ask(f"generate a number bigger than {a}", rng), f"{a + 1} is bigger than {a}."),
        lambda: (ask(f"come up with a number bigger than {a}", rng), f"{a + 1} is bigger than {a}."),
        lambda: (ask("compose a list of the shapes you know", rng), "Circle, square, triangle and star."),
        lambda: (
            ask("put together a list of the shapes you know", rng),
            "Circle, square, triangle and star.",
        ),
        lambda: (ask(f"output the sum of {a} and {b}", rng), f"{a} plus {b} is {a + b}."),
        lambda: (f"I want to know how many sides {article(shape)} {shape} has.", SHAPE_FACTS[shape][1]),
        lambda: (ask(f"give me a fact about {shape}s", rng), SHAPE_FACTS[shape][0]),
        lambda: ("Thank you!", "You are welcome!"),
    ]
    return rng.choice(tasks)()


def _parse_image_caption(caption: str) -> tuple[str, str, str]:
    words = caption.split()  # "a red circle on a white background"
    return words[1], words[2], words[5]
