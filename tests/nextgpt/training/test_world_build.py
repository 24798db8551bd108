"""`make train-world` reduced to its wiring (every trainer at its reduced test settings, stage 0 and the
three stages for a few steps): the `shapes` profile it installs loads through the real loading code and
answers every task of `eval-world`, and a second run resumes instead of retraining. Quality is not
checked here: each trainer's own test checks that it learns, and the full build reports its figures."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from nextgpt.profiles import SHAPES_MANIFEST, load_profile
from nextgpt.training.foundation.llm_base import WORLD_LLM
from nextgpt.training.world_build import (
    FOLDERS,
    TRAINER_MODULES,
    WorldBuildConfig,
    build_jobs,
    build_shapes,
    code_fingerprint,
    discard_stale_state,
    install,
    install_llm,
    llm_build_config,
    nextgpt_imports,
    run_jobs,
    train_llm,
    train_parts,
    trainer_code_hash,
    tree_hash,
)
from nextgpt.training.world_eval.end_to_end import TASKS


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorldBuildConfig, dict]:
    models = tmp_path_factory.mktemp("models")  # empty: the build needs nothing of the tiny profile
    cfg = WorldBuildConfig(
        out=tmp_path_factory.mktemp("train-world"), models_dir=models, workers=1, smoke=True
    )
    return cfg, build_shapes(cfg)


def test_the_build_installs_a_complete_shapes_profile(built: tuple[WorldBuildConfig, dict]) -> None:
    cfg, report = built
    profile = load_profile("shapes", models_dir=cfg.models_dir, env={})
    assert profile.missing_paths() == {}
    manifest = json.loads((cfg.models_dir / "shapes" / "manifest.json").read_text())
    assert set(manifest["built"]["parts"]) == {"encoder", *FOLDERS}
    image = json.loads((cfg.out / "image" / "report.json").read_text())
    assert profile.decoders["image"].defaults.height == image["decode_defaults"]["height"]
    assert profile.output_projectors["image"].out_dim == image["config"]["cond_dim"]
    assert profile.input_projector.in_dim == profile.encoder.embed_dim
    assert profile.llm.lora is not None and "gate_proj" in profile.llm.lora.target_modules
    base = json.loads((profile.llm.base_dir / "config.json").read_text())
    assert (base["hidden_size"], base["num_hidden_layers"]) == (WORLD_LLM["hidden"], WORLD_LLM["layers"])
    assert profile.input_projector.out_dim == WORLD_LLM["hidden"]
    assert {p.in_dim for p in profile.output_projectors.values()} == {WORLD_LLM["hidden"]}


def test_the_report_covers_every_task_and_the_samples(built: tuple[WorldBuildConfig, dict]) -> None:
    cfg, report = built
    assert set(report["evaluation"]) == set(TASKS)
    assert all(0.0 <= row["headline"] <= 1.0 for row in report["evaluation"].values())
    assert (cfg.out / "samples.png").stat().st_size > 0
    table = (cfg.out / "report.md").read_text()
    assert all(f"| {task} |" in table for task in TASKS)
    assert set(report["stages"]) == {"base_chat", "encoder", "decoder", "instruct"}
    assert set(report["alignment"]) == {"image", "video", "audio"}
    assert "Span alignment" in table and (cfg.out / "alignment.json").is_file()


def test_a_second_run_reuses_the_trained_parts(built: tuple[WorldBuildConfig, dict], tmp_path: Path) -> None:
    built_cfg, _ = built
    # two workers: the jobs in processes, each started once its needs are done; the jobs install what
    # the LLM reads, so into another folder than the fixture's
    cfg = replace(built_cfg, models_dir=tmp_path / "models", workers=2)
    outputs = [cfg.out / p / "report.json" for p in cfg.parts] + [cfg.out / "llm" / "build-config.json"]
    outputs += [cfg.out / p / "text-report.json" for p in FOLDERS]
    before = [path.stat().st_mtime_ns for path in outputs]
    results = run_jobs(cfg, cfg.out / "world")
    assert [path.stat().st_mtime_ns for path in outputs] == before
    assert {j.name for j in build_jobs(cfg.parts, llm=True)} | {"timeline"} == set(results)
    # the trainers' code is part of the key: another version of it would train the part again
    assert all(results[p]["build_config"]["code"] == trainer_code_hash(p) for p in cfg.parts)


def test_the_llm_starts_once_the_encoder_and_text_encoders_are_done(
    built: tuple[WorldBuildConfig, dict],
) -> None:
    """The LLM's stages read the encoder and the decoders' text encoders, nothing of the VAEs and UNets:
    it starts before the pipelines (and trains beside their UNets), against the text-only pipelines."""
    cfg, report = built
    jobs = {j.name: j for j in build_jobs(cfg.parts, llm=True)}
    assert set(jobs["llm"].needs) == {"encoder", "image-text", "video-text", "audio-text"}
    assert all(jobs[p].needs == (f"{p}-text",) for p in FOLDERS)
    timeline = report["timeline"]
    assert all(timeline[n]["end"] <= timeline["llm"]["start"] for n in jobs["llm"].needs)
    assert timeline["llm"]["end"] <= timeline["audio"]["start"]  # one worker: in the list's order
    text_only = cfg.out / "image" / "text-pipeline"
    assert sorted(p.name for p in text_only.iterdir()) == ["model_index.json", "text_encoder", "tokenizer"]
    targets = [json.loads(f.read_text()) for f in (cfg.out / "llm" / "targets").glob("*.json")]
    assert {t["modality"] for t in targets} == set(FOLDERS)  # stage 2's, from the text-only pipelines


def test_another_world_retrains_the_encoder_only(
    built: tuple[WorldBuildConfig, dict], tmp_path: Path
) -> None:
    """The encoder learns from the world's files, the pipelines from media they render themselves: a world
    of other sizes (more clips) retrains the encoder, where its code and settings alone would have kept
    the weights learnt from the old world."""
    cfg, _ = built
    again = replace(cfg, out=tmp_path / "out")
    shutil.copytree(cfg.out, again.out, ignore=shutil.ignore_patterns("llm"))
    world = json.loads((again.out / "world" / "world.json").read_text())
    world["config"]["n_videos"] += 1
    (again.out / "world" / "world.json").write_text(json.dumps(world))
    before = {p: (again.out / p / "report.json").stat().st_mtime_ns for p in cfg.parts}
    reports = train_parts(again, again.out / "world")
    after = {p: (again.out / p / "report.json").stat().st_mtime_ns for p in cfg.parts}
    assert [p for p in cfg.parts if after[p] != before[p]] == ["encoder"]
    assert reports["encoder"]["build_config"]["world"]["n_videos"] == world["config"]["n_videos"]


def test_a_second_run_reuses_the_llm_stages(built: tuple[WorldBuildConfig, dict], tmp_path: Path) -> None:
    """Nothing the LLM stages read changed: a resumed build installs their delta again instead of
    training it anew (~12 minutes for the same bytes); what they read is in their key."""
    cfg, _ = built
    world = cfg.out / "world"
    again = replace(cfg, models_dir=tmp_path / "models")
    shutil.copytree(cfg.models_dir / "shapes", again.models_dir / "shapes")
    reports = train_parts(cfg, world)
    delta = cfg.out / "llm" / "instruct" / "pytorch_model.pt"
    before = delta.stat().st_mtime_ns
    root = install(again, reports)  # removes the old LLM from the profile, as every build does
    key = llm_build_config(cfg, world, reports)
    summary = train_llm(again, world, key)
    install_llm(again, root)
    assert delta.stat().st_mtime_ns == before and set(summary["stages"]) >= {"base_chat", "instruct"}
    profile = load_profile("shapes", models_dir=again.models_dir, env={})
    assert profile.missing_paths() == {} and profile.llm.lora is not None
    assert (root / "nextgpt" / "pytorch_model.pt").read_bytes() == delta.read_bytes()
    image = reports["image"]
    retrained = {**reports, "image": {**image, "build_config": {**image["build_config"], "unet_steps": 1}}}
    assert llm_build_config(cfg, world, retrained) != key
    texts = {f"{p}-text" if p in FOLDERS else p: r for p, r in reports.items()}
    assert llm_build_config(cfg, world, texts) == key  # what the build keys it by: the text encoders' reports
    assert llm_build_config(replace(cfg, seed=1), world, reports) != key


def test_the_world_hash_sees_every_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(b"a")
    first = tree_hash(tmp_path)
    (tmp_path / "images" / "0.png").write_bytes(b"b")
    assert tree_hash(tmp_path) != first
    (tmp_path / "images" / "0.png").write_bytes(b"a")
    assert tree_hash(tmp_path) == first
    (tmp_path / "images" / "0.png").rename(tmp_path / "images" / "1.png")
    assert tree_hash(tmp_path) != first


def test_the_code_fingerprint_ignores_docs_but_not_code() -> None:
    """A docstring or comment edit must not retrain the four parts (~25 min); a code edit must."""
    source = 'def f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    documented = 'def f(x):\n    """Two times x, reworded."""\n\n    # a new comment\n    return 2 * x\n'
    undocumented = "def f(x):\n    return 2 * x\n"
    assert code_fingerprint(source) == code_fingerprint(documented) == code_fingerprint(undocumented)
    assert code_fingerprint(source) != code_fingerprint(source.replace("2 * x", "3 * x"))
    assert code_fingerprint('"""Module."""\n') == code_fingerprint("")  # a docstring-only body
    assert code_fingerprint('x = "text"\n') != code_fingerprint("x = 'other'\n")  # strings that are code
    field = 'class C:\n    steps: int = {}\n    """{}"""\n    lr: float = 1.0\n'
    # a field's docstring (the project's style for settings) is no code either; its value is
    assert code_fingerprint(field.format(3, "Steps.")) == code_fingerprint(field.format(3, "Steps, timed."))
    assert code_fingerprint(field.format(3, "Steps.")) != code_fingerprint(field.format(4, "Steps."))
    assert code_fingerprint("def f(x):\n    return x\n") != code_fingerprint("def f(x):\n    return 'x'\n")


def test_a_rebuild_starts_from_a_profile_without_the_old_llm(
    built: tuple[WorldBuildConfig, dict], tmp_path: Path
) -> None:
    """The LLM stages of a rebuild train on the installed profile: the LoRA shape a previous build wrote
    into its manifest gave stages 1 and 2 LoRA layers, and a rebuild differed from a clean build."""
    cfg, _ = built
    again = replace(cfg, models_dir=tmp_path / "models")
    shutil.copytree(cfg.models_dir / "shapes", again.models_dir / "shapes")
    assert "lora" in json.loads((again.models_dir / "shapes" / SHAPES_MANIFEST).read_text())["profile"]["llm"]
    root = install(again, train_parts(cfg, cfg.out / "world"))
    assert "llm" not in json.loads((root / SHAPES_MANIFEST).read_text())["profile"]
    assert not (root / "nextgpt").exists() and not (root / "vicuna").exists()
    assert (root / "stable-diffusion").is_dir()


def test_each_part_is_keyed_by_the_code_that_trains_it() -> None:
    """An encoder change retrains the encoder only; what a trainer reads through other modules (the
    served preprocessing, the ImageBind arch table, the shared diffusion code, the world's media) is
    part of its key; the LLM's dialogues are not (a change to them retrains the LLM only)."""
    encoder = nextgpt_imports(TRAINER_MODULES["encoder"])
    image = nextgpt_imports(TRAINER_MODULES["image"])
    assert {
        "nextgpt.encoders.imagebind",
        "nextgpt.encoders.preprocess",
        "nextgpt.training.data.world_media",
    } <= set(encoder)
    assert "nextgpt.training.foundation.diffusion" not in encoder
    assert {"nextgpt.training.foundation.diffusion", "nextgpt.training.foundation.loop"} <= set(image)
    assert "nextgpt.training.foundation.encoder" not in image
    assert "nextgpt.training.foundation.audio_parts" in nextgpt_imports(TRAINER_MODULES["audio"])
    assert len({trainer_code_hash(part) for part in TRAINER_MODULES}) == len(TRAINER_MODULES)
    assert not any("nextgpt.training.data.synthetic" in nextgpt_imports(m) for m in TRAINER_MODULES.values())


def test_a_loop_state_from_another_config_is_discarded(tmp_path: Path) -> None:
    """A part resumes from OUT/<part>/state only when that state was left by the same config: a state of
    other settings (another UNet) failed to load and stopped the build."""
    out = tmp_path / "video"
    (out / "state" / "unet").mkdir(parents=True)
    (out / "state" / "unet" / "step.pt").write_bytes(b"old")
    assert discard_stale_state(out, {"unet_channels": [16, 32]})  # no config recorded: not ours
    assert not (out / "state").exists()
    (out / "state").mkdir()
    assert not discard_stale_state(out, {"unet_channels": [16, 32]})  # same config: kept, resumed
    assert (out / "state").exists()
    assert discard_stale_state(out, {"unet_channels": [32, 64]})  # another config: removed
    assert not (out / "state").exists()
    assert not discard_stale_state(tmp_path / "fresh", {"a": 1})  # nothing to remove


def test_two_workers_build_the_same_files(built: tuple[WorldBuildConfig, dict], tmp_path: Path) -> None:
    """Every job computes on one thread, in a worker process or here: `workers` changes when things run,
    not what they compute (the LLM stages ran on `workers` threads once, and 1 and 2 round differently)."""
    cfg, _ = built
    two = replace(cfg, out=tmp_path / "out", models_dir=tmp_path / "models", workers=2)
    build_shapes(two)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one_files, two_files = files(cfg.models_dir / "shapes"), files(two.models_dir / "shapes")
    assert set(one_files) == set(two_files)
    assert [name for name in one_files if one_files[name] != two_files[name]] == []
