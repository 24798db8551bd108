"""`make train-world`: the whole `shapes` profile from one seed, then its evaluation (issue 12).

1. the world (`synthetic.make_world`, the train-demo's size) under OUT/world/;
2. the foundation components and the LLM, as jobs run `workers` at a time in worker processes (one
   thread each; every trainer is deterministic for its seed at one thread), each as soon as what it
   needs is done (`build_jobs`):
   - each pipeline's text encoder first (`<part>-text`: the trainers' `text_stage`, saved alone as
     OUT/<part>/text-pipeline), and the ImageBind encoder;
   - stage 0 on a random Llama of `foundation.llm_base.WORLD_LLM`'s size and the three NExT-GPT stages
     (`world_stages.train_llm_stages`) on the `shapes` profile as far as it is built then: the encoder
     and the three text encoders, all the stages read (stage 1 the encoder, stage 2's targets the
     decoders' own text encoders, loaded `text_only`); it trains while the pipelines' VAEs and UNets do;
   - the Stable-Diffusion image, Zeroscope video and AudioLDM audio pipelines (each resumes its text
     encoder from its state), each into OUT/<part>/ with its own report.json and samples;
3. installed where the `shapes` profile looks (MODELS/shapes/, `nextgpt.profiles._shapes`), with a
   manifest.json of what the trainers settled (decode defaults, conditioning widths), then the LLM's
   chat-tuned base and delta;
4. `nextgpt eval-world`'s evaluation, the span alignment check (`world_eval/alignment.py`: does each
   projected span land on the asked caption's decoder embedding?) and a grid of samples; OUT/report.json,
   OUT/report.md, OUT/eval-world.json and OUT/alignment.json.

Resumable: a part whose OUT/<part>/report.json holds the same config (and hash of the code that trains it,
blind to docstrings and comments) is not trained again, nor a text encoder whose text-report.json does,
and each trainer keeps its loop state under OUT/<part>/state, so a killed build continues where it
stopped. The LLM stages are skipped likewise when OUT/llm/build-config.json holds the same
`llm_build_config` (their plan, the world's files, the parts' build configs, their code); the evaluation
always runs.
`smoke=True` runs every step with the trainers' reduced settings (seconds each): `make test` uses it to
check the wiring, not the quality.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import shutil
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nextgpt.training.world_eval.end_to_end import EvalWorldConfig

logger = logging.getLogger(__name__)

PARTS = ("encoder", "image", "video", "audio")
"""Foundation parts (`build_jobs` orders their training)."""
FOLDERS = {"image": "stable-diffusion", "video": "zeroscope", "audio": "audioldm"}
"""Where the `shapes` profile reads each pipeline, under MODELS/shapes/."""
ENCODER_FILE = Path("imagebind") / "imagebind_shapes.pth"
TEXT_REPORT = "text-report.json"
"""OUT/<part>/: the report of a pipeline's text encoder, trained first (`train_text`)."""


@dataclass
class WorldBuildConfig:
    seed: int = 0
    """Seed of the world and of every trainer."""
    out: Path = Path("out/train-world")
    models_dir: Path = Path("models")
    workers: int = 2
    """Jobs run at once (`build_jobs`: processes of one thread each); 1 runs them here, one after another,
    on one thread. The evaluation that follows runs on as many threads. Every job computes on one
    thread, so the same seed gives the same files whatever `workers` is."""
    smoke: bool = False
    """Reduced settings everywhere: checks the wiring in about two minutes, learns nothing useful."""
    evaluation: EvalWorldConfig = field(default_factory=EvalWorldConfig)
    parts: tuple[str, ...] = PARTS


SHAPES_FILLER_RATE = 0.3
"""`WorldConfig.filler_rate` of the `shapes` build (since 2026-12-03; 0 keeps the generator's dialogues):
stray words around the captions, so the tiny LLM stops reading single tokens of unseen phrasings as
content (seed 2's "Please animate ..." drawn orange). Measured with zeroed unseen rows and stage 3's output
projectors at 1e-3 (`llm_plan`) at seeds 0, 1 and 2: docs/training.md, "When stage 3 aligns"."""


def world_config(cfg: WorldBuildConfig) -> Any:
    from nextgpt.training.data.world_media import WorldConfig
    from nextgpt.training.world_stages import N_INSTRUCTIONS

    if cfg.smoke:
        return WorldConfig(
            seed=cfg.seed,
            n_images=48,
            n_videos=16,
            n_audios=16,
            n_instructions=64,
            filler_rate=SHAPES_FILLER_RATE,
        )
    # Four times the generator's pictures and clips and 8 x 832 dialogues (was 240, 64 and 2 x 832): the LLM
    # then reads fresh pictures and clips better. Measured with the LLM stages alone on seed 1's parts
    # (docs/training.md, "More pictures, clips and dialogues for the LLM"): image->text 84 -> 90%,
    # video->text 70 -> 88%; more dialogues alone (at a quarter of the epochs) 82% and 78%.
    return WorldConfig(
        seed=cfg.seed,
        n_images=960,
        n_videos=256,
        n_instructions=8 * N_INSTRUCTIONS,
        filler_rate=SHAPES_FILLER_RATE,
    )


def part_config(part: str, seed: int, smoke: bool) -> Any:
    """The trainer config of `part`: its defaults (the profile's), or its reduced test settings."""
    if part == "encoder":
        from nextgpt.training.foundation.encoder import EncoderTrainConfig

        if smoke:  # tests/nextgpt/training/foundation/test_encoder.py's settings
            return EncoderTrainConfig(
                seed=seed,
                steps=8,
                batch_size=8,
                lr=3e-3,
                warmup_steps=2,
                novel_per_caption=1,
                rendered_sounds=1,
            )
        return EncoderTrainConfig(seed=seed)
    if part == "image":
        from nextgpt.training.foundation.image import ImageTrainConfig

        return ImageTrainConfig.reduced(seed) if smoke else ImageTrainConfig(seed=seed)
    if part == "video":
        from nextgpt.training.foundation.video import VideoTrainConfig

        return VideoTrainConfig.reduced(seed) if smoke else VideoTrainConfig(seed=seed)
    from nextgpt.training.foundation.audio_parts import AudioTrainConfig

    return AudioTrainConfig.reduced(seed) if smoke else AudioTrainConfig(seed=seed)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _done(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The report at `path` when it was trained already with this config (a resumed build skips it)."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("build_config") == config else None


TRAINER_MODULES = {
    "encoder": "nextgpt.training.foundation.encoder",
    "image": "nextgpt.training.foundation.image",
    "video": "nextgpt.training.foundation.video",
    "audio": "nextgpt.training.foundation.audio",
}
"""The module that trains each part: `train_part` calls its trainer from it, `trainer_code_hash` reads it."""


LLM_MODULES = ("nextgpt.training.world_stages", "nextgpt.training.foundation.llm_base")
"""What trains the LLM: its random base, stage 0 and the three stages (`code_hash` adds what they
import: the runner, the model, the served loaders the stages train through)."""
LLM_KEY = "build-config.json"
"""Beside the LLM stages' outputs (OUT/llm/): what they were trained from (`llm_build_config`)."""


def trainer_code_hash(part: str) -> str:
    """SHA-256 over the code that trains `part` (`code_hash` of its trainer module). Part of every part's
    build config, so a code change retrains the parts it can change instead of reusing weights that
    another version of the code trained, and leaves the others alone (an encoder change does not retrain
    the three pipelines)."""
    return code_hash(TRAINER_MODULES[part])


def code_hash(*modules: str) -> str:
    """SHA-256 over `modules` and every `nextgpt` module they import, directly or not (the world a
    trainer reads, the shared loop, the served loaders and preprocessing it trains through, the ImageBind
    arch table).

    It hashes each file's syntax tree without its docstrings (`code_fingerprint`), not its bytes: a
    docstring, comment or formatting edit would otherwise retrain parts (up to ~25 minutes) for weights
    that cannot differ."""
    import hashlib

    files: dict[str, Path] = {}
    for module in modules:
        files.update(nextgpt_imports(module))
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + code_fingerprint(path.read_text()).encode() + b"\0")
    return digest.hexdigest()


def tree_hash(folder: Path) -> str:
    """SHA-256 over every file under `folder`: its path there and its bytes (the world: ~6 MB)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def nextgpt_imports(module: str) -> dict[str, Path]:
    """`module` and every `nextgpt` module it imports, at any depth and from any scope (function-level
    imports too), by name -> source file; found by reading the sources, nothing is imported but the
    packages on the way."""
    import ast
    import importlib.util

    def source(name: str) -> Path | None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec else None
        return Path(origin) if origin and origin.endswith(".py") else None

    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = source(name)
        if name in found or path is None:
            continue
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                todo.append(base)
                todo += [f"{base}.{alias.name}" for alias in node.names]  # submodules; others drop out
        todo = [t for t in todo if t == "nextgpt" or t.startswith("nextgpt.")]
    return found


def code_fingerprint(source: str) -> str:
    """The Python `source`'s syntax tree as text, without its docstrings (a module's, class's and
    function's, and the string under each dataclass field) and `pass` statements: equal for two sources
    that differ only in those, comments, blank lines or layout. Neither kind of statement does anything
    when run, so no trainer can learn differently for them."""
    import ast

    class DropInert(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
            inert = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            return None if inert else node

        def visit_Pass(self, node: ast.Pass) -> None:
            return None

    return ast.dump(DropInert().visit(ast.parse(source)))


STATE_CONFIG = "state-config.json"
"""Beside a part's loop state (OUT/<part>/state/): the config that state belongs to."""


def discard_stale_state(out: Path, config: dict[str, Any]) -> bool:
    """Make `out/state` (every trainer's resumable loop state) belong to `config`: remove it when it was
    left by another config, or by a build that did not record one, and record `config`. Returns whether
    a state was removed.

    A trainer resumes from whatever state it finds, so a state from other settings (another UNet, other
    widths) would fail to load, or silently continue another run."""
    marker, state = out / STATE_CONFIG, out / "state"
    recorded = json.loads(marker.read_text()) if marker.is_file() else None
    stale = state.exists() and recorded != config
    if stale:
        shutil.rmtree(state)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(config, indent=1) + "\n")
    return stale


def part_build_config(part: str, world_dir: Path, seed: int, smoke: bool) -> tuple[Any, dict[str, Any]]:
    """`part`'s trainer config and the build config that keys its outputs: the config, the hash of the
    code that trains it and, for the encoder (the one part that learns from the world's files: their
    sizes are its data), the world's config. A pipeline's text encoder has the same key."""
    cfg = part_config(part, seed, smoke)
    config = {**_jsonable(asdict(cfg)), "code": trainer_code_hash(part)}
    if part == "encoder":
        config["world"] = json.loads((world_dir / "world.json").read_text())["config"]
    return cfg, config


def _one_thread() -> None:
    """A job's process computes on one thread (the jobs run side by side, one per core)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _start(
    what: str, part: str, world_dir: Path, out: Path, report_path: Path, seed: int, smoke: bool
) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """The first steps of a part's job (`what`: its name in the log): one thread, its trainer config and
    build config, and the report at `report_path` when it belongs to that build config (the job is done);
    otherwise a loop state left under `out` by another config is discarded."""
    _one_thread()
    cfg, config = part_build_config(part, world_dir, seed, smoke)
    if (report := _done(report_path, config)) is not None:
        logger.info("%s: trained already (%s), skipped", what, report_path)
        return cfg, config, report
    if discard_stale_state(out, config):
        logger.warning("%s: the loop state under %s was left by another config; starting over", what, out)
    return cfg, config, None


def train_text(part: str, world_dir: Path, out: Path, seed: int, smoke: bool) -> dict[str, Any]:
    """The text encoder of pipeline `part` alone (its trainer's `text_stage`), saved as
    out/text-pipeline; returns its report (also out/text-report.json). The part's own run later reads
    it back from the shared loop state."""
    from nextgpt.training.foundation.diffusion import TEXT_PIPELINE

    path = out / TEXT_REPORT
    cfg, config, report = _start(f"{part} text encoder", part, world_dir, out, path, seed, smoke)
    if report is not None:
        return report
    trainer: Any = importlib.import_module(TRAINER_MODULES[part])
    _, _, result = trainer.text_stage(out, cfg)
    report = {
        "pipeline_dir": str(out / TEXT_PIPELINE),
        "text_encoder": _jsonable(asdict(result)),
        "config": _jsonable(asdict(cfg)),
        "build_config": config,
    }
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def train_part(part: str, world_dir: Path, out: Path, seed: int, smoke: bool) -> dict[str, Any]:
    """Train one foundation part into `out` (run in a worker process); returns its report."""
    cfg, config, report = _start(part, part, world_dir, out, out / "report.json", seed, smoke)
    if report is not None:
        return report
    trainer: Any = importlib.import_module(TRAINER_MODULES[part])  # the module its code hash reads
    if part == "encoder":
        report = trainer.train_encoder(world_dir, out / "imagebind_shapes.pth", cfg, state_dir=out / "state")
    elif part == "image":
        report = trainer.train_image_pipeline(out, cfg)
    elif part == "video":
        report = trainer.train_video_pipeline(out, cfg)
    else:
        report = trainer.train_audio_pipeline(out, cfg)
    report = {**_jsonable(report), "build_config": config}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


@dataclass(frozen=True)
class Job:
    """One unit of a build, run in a worker process once every job it `needs` is done."""

    name: str
    """A part ("video"), a pipeline's text encoder ("video-text") or "llm"."""
    needs: tuple[str, ...] = ()


def build_jobs(parts: tuple[str, ...], llm: bool) -> list[Job]:
    """The build's jobs in the order they start when a worker is free: the short text encoders first, the
    encoder, the two long pipelines (image ~22 min beside another job, video ~19), the LLM (~16, once the
    encoder and the text encoders are done), audio (~9) last. With two workers: image then the LLM on
    one core, encoder, video and audio on the other (~40 min each).

    Measured (seed 0 from scratch, 2026-12-02): the video part before the image part put the two on one
    core and the build took ~44 min; before the LLM ran as a job (seed 2), the parts took 34.3 min two at
    a time and the LLM 14.3 min after them on two threads, which it hardly uses (its instruction stage
    took 614-731 s alone at 2 threads, 645-689 s at 1 beside another run)."""
    pipelines = [p for p in ("image", "video", "audio") if p in parts]
    texts = [Job(f"{p}-text") for p in pipelines]
    jobs = texts + ([Job("encoder")] if "encoder" in parts else [])
    trained = [Job(p, needs=(f"{p}-text",)) for p in pipelines if p != "audio"]
    if llm:
        trained.append(Job("llm", needs=tuple(j.name for j in jobs)))
    if "audio" in parts:
        trained.append(Job("audio", needs=("audio-text",)))
    return jobs + trained


def run_jobs(cfg: WorldBuildConfig, world_dir: Path, *, llm: bool = True) -> dict[str, Any]:
    """Every job of `build_jobs`, `cfg.workers` at a time; returns each job's result by name (the parts'
    reports, the text encoders' under "<part>-text", the LLM stages' summary under "llm") and under
    "timeline" when each started and ended (seconds from the start). Before the LLM starts, what it
    trains against is installed (`install`: the encoder and the text-only pipelines)."""
    jobs = build_jobs(cfg.parts, llm)
    done: dict[str, Any] = {}
    timeline: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()

    def call(job: Job) -> tuple[Any, tuple[Any, ...]]:
        timeline[job.name] = {"start": round(time.perf_counter() - t0, 1)}
        logger.info("build: %s starts", job.name)
        if job.name == "llm":
            install(cfg, {n: done[n] for n in job.needs})
            return train_llm, (
                cfg,
                world_dir,
                llm_build_config(cfg, world_dir, {n: done[n] for n in job.needs}),
            )
        part = job.name.removesuffix("-text")
        return (train_text if job.name.endswith("-text") else train_part), (
            part,
            world_dir,
            cfg.out / part,
            cfg.seed,
            cfg.smoke,
        )

    def finish(name: str, result: Any) -> None:
        done[name] = result
        timeline[name]["end"] = round(time.perf_counter() - t0, 1)
        logger.info("build: %s done (%.0f s)", name, timeline[name]["end"] - timeline[name]["start"])

    if cfg.workers <= 1:
        for job in jobs:  # in order: every job's needs come before it
            fn, args = call(job)
            finish(job.name, fn(*args))
        return {**done, "timeline": timeline}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=context) as pool:
        running: dict[Future[Any], str] = {}
        pending = list(jobs)
        while pending or running:
            for job in [j for j in pending if all(n in done for n in j.needs)][: cfg.workers - len(running)]:
                pending.remove(job)
                fn, args = call(job)
                running[pool.submit(fn, *args)] = job.name
            if not running:
                raise RuntimeError(f"build: jobs {[j.name for j in pending]} wait for jobs that never run")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                if (error := future.exception()) is not None:
                    # The running jobs finish (their work is kept for the next run); nothing new starts.
                    waiting = sorted(running.values())
                    logger.error("build: %s failed (%s); waiting for %s to finish", name, error, waiting)
                    raise error
                finish(name, future.result())
    return {**done, "timeline": timeline}


def train_parts(cfg: WorldBuildConfig, world_dir: Path) -> dict[str, dict[str, Any]]:
    """The foundation parts alone (their text encoders first), `cfg.workers` at a time: their reports."""
    results = run_jobs(cfg, world_dir, llm=False)
    return {p: results[p] for p in cfg.parts}


def install(cfg: WorldBuildConfig, reports: dict[str, dict[str, Any]]) -> Path:
    """Copy the trained parts where the `shapes` profile reads them; write its manifest anew, with the
    widths where the projectors meet the LLM. Returns MODELS/shapes.

    `reports` holds the parts' reports, or (before the LLM starts, `run_jobs`) the encoder's and the
    pipelines' text encoders' (keyed "<part>-text"): a pipeline is then installed text-only, enough for
    the LLM's stages (decoders load `text_only` for stage 2's targets) and replaced by the whole
    pipeline once its part is done.

    What an earlier build left of the LLM (the chat-tuned base, the delta and the LoRA shape in the
    manifest) is removed first: the LLM stages train on this profile, and a LoRA left in its manifest
    gave stages 1 and 2 LoRA layers (with dropout) that a build into an empty folder does not have, so a
    rebuild differed from a clean one. `install_llm` installs the new LLM."""
    from nextgpt.profiles import SHAPES_MANIFEST
    from nextgpt.training.foundation.llm_base import WORLD_LLM

    root = cfg.models_dir / "shapes"
    root.mkdir(parents=True, exist_ok=True)
    for stale in (root / "vicuna", root / "nextgpt"):
        if stale.exists():
            shutil.rmtree(stale)
    (root / SHAPES_MANIFEST).unlink(missing_ok=True)
    hidden = WORLD_LLM["hidden"]  # the projectors' sides that meet the LLM
    profile: dict[str, Any] = {
        "decoders": {},
        "output_projectors": {},
        "input_projector": {"out_dim": hidden},
    }
    if "encoder" in reports:
        target = root / ENCODER_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(reports["encoder"]["checkpoint"], target)
        dim = int(reports["encoder"]["embed_dim"])
        profile["encoder"] = {"embed_dim": dim, "model_id": f"imagebind-shapes-seed{cfg.seed}"}
        profile["input_projector"]["in_dim"] = dim
    for modality, folder in FOLDERS.items():
        report = reports.get(modality) or reports.get(f"{modality}-text")
        if report is None:
            continue
        target = root / folder
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(report["pipeline_dir"], target)
        if "decode_defaults" in report:
            profile["decoders"][modality] = {"defaults": report["decode_defaults"]}
        profile["output_projectors"][modality] = {
            "out_dim": int(report["config"]["cond_dim"]),
            "in_dim": hidden,
        }
    built = {"seed": cfg.seed, "smoke": cfg.smoke, "parts": sorted(p for p in reports if p in PARTS)}
    write_manifest(root / SHAPES_MANIFEST, {"profile": profile, "built": built})
    return root


def write_manifest(path: Path, updates: dict[str, Any]) -> None:
    """Merge `updates` into the manifest at `path` (steps of a build add to it)."""
    from nextgpt.profiles import merge_into

    current = json.loads(path.read_text()) if path.is_file() else {}
    merge_into(current, updates)
    path.write_text(json.dumps(current, indent=1) + "\n")


def llm_plan(smoke: bool) -> Any:
    """The stage budgets of the `shapes` LLM (`world_stages.StagePlan`), or the smoke build's few steps."""
    from nextgpt.training.world_stages import StagePlan

    if smoke:
        return StagePlan(
            base_steps=4,
            encoder_epochs=1,
            decoder_epochs=1,
            instruct_epochs=1,
            instruct_projector_lr=1e-3,
            zero_unseen_embeddings=True,
        )
    # Against train-demo's plan (tuned for span rates on random decoders), stages 2 and 3 run at 2e-3:
    # at 1e-2 / 5e-3 the image alignment stalled at an L2 distance of ~4-5 per token (colour and background
    # at chance through the real decoder); at 2e-3 it fell to ~0.6 and the nearest caption to every
    # projected span was the one asked for (72 of 72). Stage 2's 40 epochs cost ~2 minutes.
    # Stage 3 sees each of the world's 6656 dialogues 8 times (~6650 steps, as 31 times 1664 did).
    # Its output projectors peak at 1e-3 (the LoRA at 2e-3): the spans then start to align within the
    # first third of the stage at every seed (at 2e-3 seed 0's turned after 60% and its red and blue clips
    # ended merged), while the replies keep the LoRA's rate (all at 1e-3: seed 1's image->text 86%).
    # Stage 0 zeroes the rows of tokens no dialogue holds, so an unseen word is close to absent.
    return StagePlan(
        decoder_epochs=40,
        decoder_lr=2e-3,
        instruct_epochs=8,
        instruct_lr=2e-3,
        instruct_projector_lr=1e-3,
        zero_unseen_embeddings=True,
    )


def llm_build_config(
    cfg: WorldBuildConfig, world_dir: Path, reports: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Everything the LLM stages' result depends on: the seed, their plan (always at one thread: 1 and 2
    threads round differently), the world's files, the parts they train against (stage 1 reads the
    encoder, stage 2's targets are the decoders' text encoders: each part's build config names its
    weights; a text encoder's report, "<part>-text", carries its part's) and the code. A resumed build
    whose OUT/llm/ records the same skips the ~12 minutes of LLM training: a change to the evaluation
    alone then costs a re-evaluation."""
    parts = {name.removesuffix("-text"): report["build_config"] for name, report in reports.items()}
    return {
        "seed": cfg.seed,
        "plan": _jsonable(asdict(llm_plan(cfg.smoke))),
        "world": tree_hash(world_dir),
        "parts": dict(sorted(parts.items())),
        "code": code_hash(*LLM_MODULES),
    }


def train_llm(cfg: WorldBuildConfig, world_dir: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Stage 0 on a random Llama of `WORLD_LLM`'s size (the tiny profile's tokenizer), the three stages on
    the `shapes` profile as installed (run in a worker process, one thread); returns the stages' summary.
    Skipped when OUT/llm/ was trained from the same `key` (`llm_build_config`)."""
    from nextgpt.training.foundation.llm_base import build_world_llm_base
    from nextgpt.training.world_stages import train_llm_stages

    _one_thread()
    out = cfg.out / "llm"
    marker, stages = out / LLM_KEY, out / "stages.json"
    if marker.is_file() and stages.is_file() and json.loads(marker.read_text()) == key:
        logger.info("llm: trained already (%s), skipped", marker)
        summary: dict[str, Any] = json.loads(stages.read_text())
        return summary
    marker.unlink(missing_ok=True)  # written back only once the stages have finished
    random_base = build_world_llm_base(out / "random-base", cfg.seed)
    start = {"profile": "shapes", "llm": {"base_dir": str(random_base.resolve())}}
    summary, _ = train_llm_stages(out, world_dir, start, llm_plan(cfg.smoke), models_dir=cfg.models_dir)
    marker.write_text(json.dumps(key, indent=1) + "\n")
    return summary


def install_llm(cfg: WorldBuildConfig, root: Path) -> None:
    """The chat-tuned base and the delta of OUT/llm/ into the profile at `root`, the LoRA shape into its
    manifest."""
    from nextgpt.profiles import SHAPES_MANIFEST

    out = cfg.out / "llm"
    base = root / "vicuna"
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(out / "base", base)
    (root / "nextgpt").mkdir(exist_ok=True)
    shutil.copy2(out / "instruct" / "pytorch_model.pt", root / "nextgpt" / "pytorch_model.pt")
    write_manifest(root / SHAPES_MANIFEST, {"profile": {"llm": {"lora": llm_plan(cfg.smoke).lora}}})


def draw_samples(model: Any, path: Path, seed: int) -> Path:
    """A PNG grid: per prompt, what the served model drew (pictures; a video's frames; a sound's log
    spectrogram), the prompt written beside it."""
    from nextgpt.config import GenerationOptions
    from nextgpt.media.decode import read_audio, read_image, read_video
    from nextgpt.types import Message

    prompts = [
        "Show me a green triangle on a black background.",
        "Show me a picture of a red circle on a white background.",
        "Can you draw a yellow star on a gray background?",
        "Show me a video of a blue square moving left.",
        "Show me a video of a purple circle moving up.",
        "Play me a high tone.",
        "Play me a falling sweep.",
    ]
    rows: list[tuple[str, list[np.ndarray]]] = []
    for prompt in prompts:
        result = model.generate([Message("user", prompt)], GenerationOptions(seed=seed, max_new_tokens=48))
        tiles: list[np.ndarray] = []
        for item in result.media[:1]:
            if item.modality == "image":
                tiles = [np.asarray(read_image(item.data))]
            elif item.modality == "video":
                tiles = list(read_video(item.data).frames)
            else:
                wave, _ = read_audio(item.data, sample_rate=16000)  # (channels, samples)
                tiles = [_spectrogram_tile(wave.mean(axis=0))]
        rows.append((f"{prompt} -> {result.text[:60]}", tiles))
    side, pad, label = 64, 4, 300
    columns = max((len(tiles) for _, tiles in rows), default=1)  # a clip's frames, else one tile
    width = label + columns * (side + pad) + pad
    grid = Image.new("RGB", (width, len(rows) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, (text, tiles) in enumerate(rows):
        top = pad + r * (side + pad)
        lines = textwrap.wrap(text, 48)[:5]  # the prompt and the reply, up to five lines of ~11 px
        draw.multiline_text((pad, top + side // 2 - 6 * len(lines)), "\n".join(lines), fill="black")
        for k, tile in enumerate(tiles):
            picture = Image.fromarray(np.asarray(tile, dtype=np.uint8)).resize(
                (side, side), Image.Resampling.NEAREST
            )
            grid.paste(picture, (label + k * (side + pad), top))
    grid.save(path)
    return path


def _spectrogram_tile(wave: np.ndarray) -> np.ndarray:
    """(64, 64, 3) uint8 log spectrogram, low frequencies at the bottom."""
    from nextgpt.training.world_eval.audio import spectrogram

    spec = np.log1p(spectrogram(np.asarray(wave, dtype=np.float64), 512, 256))  # (frames, bins)
    spec = spec[:, : spec.shape[1] // 2]  # up to 4 kHz
    spec = (255 * spec / max(float(spec.max()), 1e-9)).T[::-1]  # (bins, frames)
    tile = np.asarray(Image.fromarray(spec.astype(np.uint8)).resize((64, 64)))
    return np.repeat(tile[..., None], 3, axis=2)


def build_shapes(cfg: WorldBuildConfig | None = None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the report (also OUT/report.json)."""
    import torch

    from nextgpt.pipeline import NextGPT
    from nextgpt.profiles import load_profile
    from nextgpt.training.data.synthetic import make_world
    from nextgpt.training.world_eval.alignment import markdown_lines, span_alignment
    from nextgpt.training.world_eval.end_to_end import evaluate_world, markdown_table

    cfg = cfg or WorldBuildConfig()
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    world_dir = cfg.out / "world"
    world = world_config(cfg)
    make_world(world_dir, world)
    results = run_jobs(cfg, world_dir)
    reports = {p: results[p] for p in cfg.parts}
    stages = results["llm"]
    seconds: dict[str, float] = {"jobs": time.perf_counter() - t0}
    root = install(cfg, reports)
    install_llm(cfg, root)
    t1 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.workers))  # the evaluation has the cores to itself
    model = NextGPT.from_profile(load_profile("shapes", models_dir=cfg.models_dir, env={}))
    evaluation = cfg.evaluation if not cfg.smoke else EvalWorldConfig(seeds=(0,), items=1, describe_items=1)
    evaluation.world = world
    result = evaluate_world(model, evaluation)
    alignment = span_alignment(model, per_modality=2 if cfg.smoke else 24, seed=cfg.seed)
    grid = draw_samples(model, cfg.out / "samples.png", cfg.seed)
    seconds["evaluate"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    report = {
        "seed": cfg.seed,
        "smoke": cfg.smoke,
        "profile_dir": str(root),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "timeline": results["timeline"],
        "foundation": {p: _summary(r) for p, r in reports.items()},
        "stages": stages["stages"],
        "evaluation": {t: {k: v for k, v in r.items() if k != "items"} for t, r in result["tasks"].items()},
        "alignment": {m: {k: v for k, v in r.items() if k != "items"} for m, r in alignment.items()},
        "samples": str(grid),
    }
    (cfg.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (cfg.out / "eval-world.json").write_text(json.dumps(result, indent=1) + "\n")
    (cfg.out / "alignment.json").write_text(json.dumps(alignment, indent=1) + "\n")
    (cfg.out / "report.md").write_text(
        f"shapes profile, seed {cfg.seed}, built in {seconds['total'] / 60:.1f} min\n\n"
        + markdown_table(result)
        + "\n\nSpan alignment (training phrasing, span forced; `world_eval/alignment.py`):\n\n"
        + markdown_lines(alignment)
        + "\n"
    )
    return report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """A part's report without its long lists (every step's loss, every item)."""
    keep = ("heldout", "novel", "parts", "loss_first", "loss_last", "seconds", "train_cpu_seconds", "samples")
    return {k: _trim(report[k]) for k in keep if k in report}


def _trim(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items() if not (isinstance(v, list) and len(v) > 16)}
    return value
