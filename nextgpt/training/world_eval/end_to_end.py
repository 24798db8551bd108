"""The whole model on the shapes world, as a user sees it: held-out phrasings in, media and text out,
scored by the independent classifiers of this package (`nextgpt eval-world`, `make train-world`).

Six tasks, each asked in phrasings that no training template uses (`SHOW_PHRASINGS`,
`DESCRIBE_PHRASINGS`; the world's own are `synthetic.SHOW_PROMPTS` / `DESCRIBE_PROMPTS`), over several
sampling / diffusion seeds, nothing forced (a reply without the asked medium scores as wrong; with
`ask_media` the medium is also named through the API, as a client may):

| task | asked | scored (headline in bold) |
|---|---|---|
| text->image | a world picture caption, held-out combinations first | **colour + shape**, background |
| image->text | a freshly drawn world picture (new positions and sizes) | **colour + shape** |
| text->audio | low / high tones, rising / falling sweeps | **pitch** (tones), **sweep** (sweeps) |
| text->video | a moving shape | **colour + direction**, shape |
| audio->text | a freshly synthesised world sound | **sound** and its pitch / sweep / chord |
| video->text | a freshly drawn world clip | **colour + shape + direction** |

The headline of a task is the share of prompts whose headline attributes are all right; the issue's
goals (`GOALS`) are 90% for the first three and 80% for the rest.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from nextgpt.config import GenerationOptions
from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.training.data.world_media import (
    SOUNDS,
    WorldConfig,
    heldout_image_combos,
    image_caption,
    image_combos,
    render_audio,
    render_image,
    render_video,
    video_caption,
    video_combos,
    world_captions,
)
from nextgpt.training.world_eval.score import WorldReport, evaluate_world_media
from nextgpt.training.world_eval.text import caption_attributes
from nextgpt.types import MediaItem, Message, Modality

if TYPE_CHECKING:
    from nextgpt.pipeline import NextGPT

logger = logging.getLogger(__name__)

SHOW_PHRASINGS: dict[Modality, tuple[str, ...]] = {
    "image": ("Please draw {}.", "Could you create an image with {}?"),
    "video": ("Please animate {}.", "Could you create a video with {}?"),
    "audio": ("Please produce {}.", "Could you create a sound of {}?"),
}
"""Requests for a medium in words no training dialogue uses."""
DESCRIBE_PHRASINGS: dict[Modality, tuple[str, ...]] = {
    "image": ("What does this image show?", "Tell me what you see in this picture."),
    "video": ("What is going on in this clip?", "Tell me what this video shows."),
    "audio": ("What is this sound?", "Tell me what you can hear."),
}
"""Questions about an input medium in words no training dialogue uses."""
HEADLINES: dict[str, tuple[str, ...]] = {
    "text->image": ("colour", "shape"),
    "image->text": ("colour", "shape"),
    "text->audio": ("pitch", "sweep"),
    "text->video": ("colour", "direction"),
    "audio->text": ("sound", "pitch", "sweep", "chord"),
    "video->text": ("colour", "shape", "direction"),
}
"""Per task, the attributes that must all be right (those an item expects) for it to count."""
GOALS = {
    "text->image": 0.9,
    "image->text": 0.9,
    "text->audio": 0.9,
    "text->video": 0.8,
    "audio->text": 0.8,
    "video->text": 0.8,
}
"""Issue 12's acceptance, per task."""
TASKS = tuple(HEADLINES)


@dataclass
class EvalWorldConfig:
    """What `evaluate_world` asks; the defaults take ~2-4 minutes on one CPU core with the `shapes`
    profile."""

    seeds: tuple[int, ...] = (0, 1)
    """Passes: each draws its own cases, and each case gets its own sampling and diffusion seed from the
    pass's (`case_seed`)."""
    items: int = 12
    """Prompts per text->medium task and seed (each makes a picture, a clip or a sound: ~1 s of CPU)."""
    describe_items: int = 48
    """Input media per medium->text task and seed. They cost milliseconds each, and the replies of two
    LLM seeds differ by up to 25 points on these tasks, so 24 items could not tell a change apart."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world the model was trained on (its held-out picture combinations are asked first)."""
    tasks: tuple[str, ...] = TASKS
    max_new_tokens: int = 48
    """Enough for any world reply (the longest, a video's caption with a preamble, is ~25 tokens)."""
    ask_media: bool = False
    """Also ask for the medium through the API (`GenerationOptions.modalities`, so the reply completes a
    span of it if the model does not start one): what a client that names the output medium gets. The
    issue's goals are for False, the model deciding from the words alone."""


@dataclass
class Case:
    """One request of a task: the user turn and what a right answer holds."""

    task: str
    prompt: str
    expected: dict[str, str]
    media: list[MediaItem] = field(default_factory=list)
    seed: int = 0
    """The sampling and diffusion seed it is asked with (`case_seed`)."""

    @property
    def target(self) -> str:
        """What the task asks for: "text", or the medium the reply must hold."""
        return self.task.split("->")[1]


def _cycle(values: list[Any], n: int, rng: random.Random) -> list[Any]:
    """n values: every one in turn (shuffled), so small n still covers the range."""
    out: list[Any] = []
    while len(out) < n:
        batch = list(values)
        rng.shuffle(batch)
        out += batch
    return out[:n]


def show_cases(modality: Modality, cfg: EvalWorldConfig, rng: random.Random) -> list[Case]:
    """text -> medium requests: held-out picture combinations first, then random ones."""
    captions: list[str]
    if modality == "image":
        held = [image_caption(*c) for c in heldout_image_combos(cfg.world)]
        captions = (held + _cycle(world_captions("image"), cfg.items, rng))[: cfg.items]
    elif modality == "video":
        captions = _cycle(world_captions("video"), cfg.items, rng)
    else:
        captions = _cycle(["a low tone", "a high tone", "a rising sweep", "a falling sweep"], cfg.items, rng)
    task = f"text->{modality}"
    cases = []
    for i, caption in enumerate(captions):
        phrasing = SHOW_PHRASINGS[modality][i % len(SHOW_PHRASINGS[modality])]
        expected = caption_attributes(caption)
        if modality == "audio":  # the goal: pitch for tones, direction for sweeps
            expected = {k: v for k, v in expected.items() if k in ("pitch", "sweep")}
        cases.append(Case(task, phrasing.format(caption), expected))
    return cases


def describe_cases(modality: Modality, cfg: EvalWorldConfig, rng: random.Random) -> list[Case]:
    """medium -> text questions about freshly rendered world media, every combination in turn (no
    repeats before all have come, so a few items are not dominated by one misread combination)."""
    world = cfg.world
    chosen: list[tuple[str, ...]]
    if modality == "image":
        chosen = _cycle(image_combos(), cfg.describe_items, rng)
    elif modality == "video":
        chosen = _cycle(video_combos(), cfg.describe_items, rng)
    else:
        chosen = [(SOUNDS[i % len(SOUNDS)],) for i in range(cfg.describe_items)]
    cases = []
    for i, combo in enumerate(chosen):
        item: MediaItem
        if modality == "image":
            colour, shape, background = combo
            caption = image_caption(colour, shape, background)
            picture = render_image(colour, shape, background, world.image_size, rng)
            item = MediaItem("image", encode_png(picture), "image/png")
        elif modality == "video":
            colour, shape, direction = combo
            caption = video_caption(colour, shape, direction)
            frames = render_video(colour, shape, direction, world, rng)
            item = MediaItem("video", encode_mp4(frames, fps=world.video_fps), "video/mp4")
        else:
            (caption,) = combo
            item = MediaItem(
                "audio", encode_wav(render_audio(caption, world, rng), world.sample_rate), "audio/wav"
            )
        expected = caption_attributes(caption)
        if modality == "image":
            expected.pop("background")  # the goal: colour and shape
        if modality == "audio":
            expected.pop("beeping", None)
        # Sounds come in a fixed order, so sound i % 8 would always get phrasing i % 2: every pass over
        # them shifts the phrasings by one (pictures and clips come shuffled).
        turn = i // len(SOUNDS) if modality == "audio" else 0
        phrasings = DESCRIBE_PHRASINGS[modality]
        cases.append(Case(f"{modality}->text", phrasings[(i + turn) % len(phrasings)], expected, [item]))
    return cases


def task_items(cfg: EvalWorldConfig, task: str) -> int:
    """How many cases a task has per seed."""
    return cfg.items if task.startswith("text->") else cfg.describe_items


def case_seed(seed: int, index: int) -> int:
    """The seed of a task's `index`-th case in the pass of `seed`: every case its own. With one seed for
    a whole pass every picture of it started from the same noise, and the decoders' colours depend on
    the noise (world version 10's seed-0 image decoder drew "a green ... on a black background" blue
    from the noise of seeds 0 and 2 and green from that of 1 and 3, for all four shapes), so a pass
    measured one draw of the noise, not the decoder."""
    return seed * 1000 + index


def build_cases(cfg: EvalWorldConfig, seed: int) -> list[Case]:
    """Every task's cases for one pass (the media, the choices and the cases' seeds depend on `seed`)."""
    cases: list[Case] = []
    for task in cfg.tasks:
        source, target = task.split("->")
        rng = random.Random(f"eval-world:{task}:{seed}")
        if source == "text":
            made = show_cases(target, cfg, rng)  # type: ignore[arg-type]  # task names hold modalities
        else:
            made = describe_cases(source, cfg, rng)  # type: ignore[arg-type]
        cases += [replace(case, seed=case_seed(seed, i)) for i, case in enumerate(made)]
    return cases


def _produced(case: Case, result: Any) -> Any:
    """What the case scores: the reply's text, or its first medium of the asked modality (None when
    the reply has none: every attribute is then wrong)."""
    if case.target == "text":
        return result.text
    return next((m for m in result.media if m.modality == case.target), None)


def headline(report: WorldReport, task: str) -> float:
    """Share of a task's items whose headline attributes (those they expect) are all right."""
    keys = HEADLINES[task]
    rows = [all(ok for name, ok in item.correct.items() if name in keys) for item in report.items]
    return sum(rows) / len(rows) if rows else 0.0


def case_options(case: Case, options: GenerationOptions, ask_media: bool) -> GenerationOptions:
    """`options` with the case's seed, and its medium asked for when `ask_media` and the task makes
    one."""
    options = replace(options, seed=case.seed)
    if not ask_media or case.target == "text":
        return options
    return replace(options, modalities=("text", case.target))


def run_cases(
    model: NextGPT,
    cases: list[Case],
    options: GenerationOptions,
    progress: Callable[[], object] | None = None,
    ask_media: bool = False,
) -> Iterator[tuple[Case, Any, str]]:
    """Each case through `model.generate` (nothing forced unless `ask_media`); yields (case, produced,
    raw reply)."""
    for case in cases:
        result = model.generate(
            [Message("user", case.prompt, case.media)], case_options(case, options, ask_media)
        )
        if progress:
            progress()
        yield case, _produced(case, result), result.raw_text


def evaluate_world(
    model: NextGPT, cfg: EvalWorldConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Ask every task's held-out prompts over the seeds; return per task the headline, the per-attribute
    accuracies, the goal and every item (prompt, expected, found, reply)."""
    cfg = cfg or EvalWorldConfig()
    by_task: dict[str, list[tuple[dict[str, str], Any]]] = {t: [] for t in cfg.tasks}
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in cfg.tasks}
    bar = tqdm(
        total=sum(task_items(cfg, t) for t in cfg.tasks) * len(cfg.seeds),
        desc="eval-world",
        unit="req",
        disable=not progress,
    )
    for seed in cfg.seeds:
        options = GenerationOptions(max_new_tokens=cfg.max_new_tokens)
        cases = build_cases(cfg, seed)
        for case, produced, raw in run_cases(model, cases, options, lambda: bar.update(), cfg.ask_media):
            missing = produced is None
            by_task[case.task].append((case.expected, "" if missing else produced))
            rows[case.task].append(
                {
                    "seed": seed,
                    "case_seed": case.seed,
                    "prompt": case.prompt,
                    "reply": raw,
                    "no_medium": missing,
                }
            )
    bar.close()
    tasks: dict[str, Any] = {}
    for task, pairs in by_task.items():
        report = evaluate_world_media((exp, got) for exp, got in pairs)
        for row, item in zip(rows[task], report.items, strict=True):
            row.update(expected=item.expected, found=item.found, correct=item.correct)
        tasks[task] = {
            "headline": headline(report, task),
            "goal": GOALS[task],
            "accuracy": report.accuracy(),
            "n": len(pairs),
            "items": rows[task],
        }
    return {"seeds": list(cfg.seeds), "ask_media": cfg.ask_media, "tasks": tasks}


def markdown_table(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table: task, headline vs goal, per-attribute accuracy."""
    lines = [
        "| task | right (headline attributes) | goal | per attribute | prompts |",
        "|---|---|---|---|---|",
    ]
    for task, row in result["tasks"].items():
        attrs = ", ".join(f"{k} {v:.0%}" for k, v in row["accuracy"].items() if k != "all")
        lines.append(f"| {task} | {row['headline']:.0%} | {row['goal']:.0%} | {attrs} | {row['n']} |")
    return "\n".join(lines)
