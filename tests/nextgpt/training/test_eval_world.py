"""`nextgpt eval-world`'s harness: held-out phrasings, deterministic cases, and a scorer that gives a
perfect model 100% and a silent one 0% (the classifiers themselves are validated in test_world_eval)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace

import pytest
from typer.testing import CliRunner

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.profiles import SHAPES_MANIFEST, shapes_built
from nextgpt.training.data.synthetic import (
    DESCRIBE_PROMPTS,
    NEUTRAL_SHOW_PROMPTS,
    SHOW_PROMPTS,
    prompt_sentences,
)
from nextgpt.training.data.world_media import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SOUNDS,
    WorldConfig,
    heldout_image_combos,
    render_audio,
    render_image,
    render_video,
)
from nextgpt.training.world_eval.end_to_end import (
    DESCRIBE_PHRASINGS,
    SHOW_PHRASINGS,
    TASKS,
    EvalWorldConfig,
    build_cases,
    evaluate_world,
    markdown_table,
    task_items,
)
from nextgpt.training.world_eval.text import caption_attributes
from nextgpt.types import GenerateResult, MediaItem, Message
from nextgpt_serve.cli import app

CFG = EvalWorldConfig(seeds=(0, 1), items=4, describe_items=6)


def test_phrasings_are_not_the_training_ones():
    for modality, phrasings in SHOW_PHRASINGS.items():
        assert not set(phrasings) & set(prompt_sentences(SHOW_PROMPTS[modality] + NEUTRAL_SHOW_PROMPTS))
    for modality, phrasings in DESCRIBE_PHRASINGS.items():
        assert not set(phrasings) & set(prompt_sentences(DESCRIBE_PROMPTS[modality]))


def test_cases_are_deterministic_per_seed_and_cover_every_task():
    first, again, other = build_cases(CFG, 0), build_cases(CFG, 0), build_cases(CFG, 1)
    assert [(c.prompt, c.expected, [m.data for m in c.media]) for c in first] == [
        (c.prompt, c.expected, [m.data for m in c.media]) for c in again
    ]
    assert [c.media[0].data for c in first if c.media] != [c.media[0].data for c in other if c.media]
    assert [c.task for c in first] == [t for t in TASKS for _ in range(task_items(CFG, t))]
    held = [c for c in first if c.task == "text->image"]
    assert all(set(c.expected) == {"colour", "shape", "background"} for c in held)
    assert {tuple(sorted(c.expected)) for c in first if c.task == "text->audio"} <= {("pitch",), ("sweep",)}


def test_describe_cases_take_every_combination_before_repeating_one():
    cfg = replace(CFG, describe_items=len(COLOURS) * len(SHAPES) * len(DIRECTIONS))
    clips = [tuple(c.expected.values()) for c in build_cases(cfg, 0) if c.task == "video->text"]
    assert len(set(clips)) == cfg.describe_items


def test_every_sound_is_asked_in_every_phrasing():
    """Sounds come in a fixed order; a phrasing locked to the sound would score one phrasing per sound."""
    cfg = replace(CFG, describe_items=2 * len(SOUNDS) * len(DESCRIBE_PHRASINGS["audio"]))
    asked = {(c.prompt, tuple(c.expected.values())) for c in build_cases(cfg, 0) if c.task == "audio->text"}
    sounds = {expected for _, expected in asked}  # beeping is not scored: 6 kinds of 8 sounds
    assert len(sounds) == 6 and len(asked) == len(sounds) * len(DESCRIBE_PHRASINGS["audio"])


@dataclass
class Oracle:
    """A stand-in model that answers every case right (or says nothing): it looks the case up."""

    cfg: EvalWorldConfig
    silent: bool = False

    def __post_init__(self) -> None:
        self.answers: dict[tuple[str, bytes], dict[str, str]] = {}
        for seed in self.cfg.seeds:
            for case in build_cases(self.cfg, seed):
                key = (case.prompt, case.media[0].data if case.media else b"")
                self.answers[key] = case.expected

    def generate(self, messages: list[Message], options: object) -> GenerateResult:
        turn = messages[-1]
        want = self.answers[(turn.text, turn.media[0].data if turn.media else b"")]
        if self.silent:
            return GenerateResult(text="Hello.", raw_text="Hello.", media=[])
        if turn.media:  # describe: name the attributes
            words = " ".join(v for k, v in want.items() if k != "background")
            return GenerateResult(text=f"A {words}.", raw_text="", media=[])
        rng = random.Random(0)
        world = WorldConfig()
        if "direction" in want:
            frames = render_video(want["colour"], want["shape"], want["direction"], world, rng)
            return GenerateResult("", "", [MediaItem("video", encode_mp4(frames, fps=4), "video/mp4")])
        if "colour" in want:
            picture = render_image(want["colour"], want["shape"], want["background"], 64, rng)
            return GenerateResult("", "", [MediaItem("image", encode_png(picture), "image/png")])
        caption = {"low": "a low tone", "high": "a high tone"}.get(want.get("pitch", ""))
        caption = caption or f"a {want['sweep']} sweep"
        assert set(want.items()) <= set(caption_attributes(caption).items())
        wave = render_audio(caption, world, rng)
        return GenerateResult("", "", [MediaItem("audio", encode_wav(wave, 16000), "audio/wav")])


def test_a_perfect_model_scores_every_task_full_and_a_silent_one_zero():
    perfect = evaluate_world(Oracle(CFG), CFG, progress=False)  # type: ignore[arg-type]
    assert {t: r["headline"] for t, r in perfect["tasks"].items()} == dict.fromkeys(TASKS, 1.0)
    assert all(r["n"] == task_items(CFG, t) * len(CFG.seeds) for t, r in perfect["tasks"].items())
    silent = evaluate_world(Oracle(CFG, silent=True), CFG, progress=False)  # type: ignore[arg-type]
    assert {t: r["headline"] for t, r in silent["tasks"].items()} == dict.fromkeys(TASKS, 0.0)
    assert all(item["no_medium"] for item in silent["tasks"]["text->image"]["items"])
    table = markdown_table(perfect)
    assert table.count("\n") == len(TASKS) + 1 and "| text->image | 100% | 90% |" in table


def test_eval_world_refuses_a_profile_without_its_files(tmp_path):
    result = CliRunner().invoke(
        app, ["eval-world", "--models-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "make train-world" in result.output


@pytest.mark.parametrize(
    "args", [["--tasks", "text->smell"], ["--seeds", "x"], ["--items", "0"], ["--describe-items", "0"]]
)
def test_eval_world_rejects_bad_options(tmp_path, args):
    result = CliRunner().invoke(app, ["eval-world", "--models-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and "error" in result.output


def test_ask_media_names_the_output_medium_of_show_tasks_only():
    """`ask_media` asks for the case's medium through `GenerationOptions.modalities`; describe tasks and
    the default run ask for nothing beyond the model's own choice."""
    asked: dict[str, set[tuple[str, ...]]] = {}

    class Recorder(Oracle):
        def generate(self, messages, options):
            cases = [c for s in self.cfg.seeds for c in build_cases(self.cfg, s)]
            task = next(c.task for c in cases if c.prompt == messages[-1].text)
            asked.setdefault(task, set()).add(tuple(options.modalities))
            return super().generate(messages, options)

    result = evaluate_world(Recorder(CFG), replace(CFG, ask_media=True), progress=False)  # type: ignore[arg-type]
    assert result["ask_media"] is True
    assert asked == {
        t: {("text", t.split("->")[1])} if t.startswith("text->") else {("text",)} for t in TASKS
    }
    asked.clear()
    evaluate_world(Recorder(CFG), CFG, progress=False)  # type: ignore[arg-type]
    assert all(modalities == {("text",)} for modalities in asked.values())


def test_every_case_is_asked_with_its_own_seed():
    """One seed for a whole pass started every picture of it from the same noise, and the decoders'
    colours depend on the noise: a pass then measured one draw of it."""
    seen: list[tuple[str, int]] = []

    class Recorder(Oracle):
        def generate(self, messages, options):
            seen.append((messages[-1].text, options.seed))
            return super().generate(messages, options)

    evaluate_world(Recorder(CFG), CFG, progress=False)  # type: ignore[arg-type]
    cases = [c for s in CFG.seeds for c in build_cases(CFG, s)]
    assert [seed for _, seed in seen] == [c.seed for c in cases]
    for task in TASKS:
        seeds = [c.seed for c in cases if c.task == task]
        assert len(set(seeds)) == len(seeds) == task_items(CFG, task) * len(CFG.seeds)


def test_eval_world_asks_the_held_out_combinations_of_the_installed_build(tmp_path):
    """A seed-1 build holds out other picture combinations than seed 0's: asked seed 0's, its image
    decoder was scored on combinations it had trained on."""
    assert shapes_built(tmp_path) == {}
    (tmp_path / "shapes").mkdir()
    manifest = {"profile": {}, "built": {"seed": 1, "smoke": False, "parts": ["image"]}}
    (tmp_path / "shapes" / SHAPES_MANIFEST).write_text(json.dumps(manifest))
    assert shapes_built(tmp_path)["seed"] == 1
    one, zero = WorldConfig(seed=1), WorldConfig(seed=0)
    assert heldout_image_combos(one) != heldout_image_combos(zero)
