"""The `shapes` LLM's stages alone, on the parts of an earlier `make train-world`, with another world size
or stage plan; then `nextgpt eval-world` (issue 12: what the LLM's data does, without retraining the
parts).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/llm_stages_alone.py --build out/train-world \\
        --out out/llm-alone --seed 1 --n-images 960 --n-videos 256 --n-instructions 6656 --instruct-epochs 8

Writes the world (`--n-*`: the world's sizes; its pictures, clips and sounds are drawn from their own
streams, so the first of them are the build's), installs the build's encoder and text-only pipelines
into OUT/models/shapes, trains stage 0 and the three stages on one thread (as the build does), waits
for the build's whole pipelines where they are not done yet, installs them with the new LLM and scores
the six tasks (`--describe-only`: the three medium->text tasks, no decoders needed, right after the
stages). OUT/report.md has the table, OUT/eval-world.json every reply. The build's own files are only
read."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

DESCRIBE_TASKS = ("image->text", "video->text", "audio->text")


def build_reports(build: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The reports of `names` ("encoder", "image", "image-text", ...) under the build's folder, once they
    are all written (a running build may still train some)."""
    from nextgpt.training.world_build import TEXT_REPORT

    paths = {
        name: build / name.removesuffix("-text") / (TEXT_REPORT if name.endswith("-text") else "report.json")
        for name in names
    }
    while not all(path.is_file() for path in paths.values()):
        time.sleep(30)
    return {name: json.loads(path.read_text()) for name, path in paths.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, required=True, help="an earlier build's --out folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="the build's (world) seed")
    parser.add_argument("--llm-seed", type=int, default=None, help="the random base's seed (default: --seed)")
    parser.add_argument("--n-images", type=int, default=960)
    parser.add_argument("--n-videos", type=int, default=256)
    parser.add_argument("--n-audios", type=int, default=64)
    parser.add_argument("--n-instructions", type=int, default=6656)
    parser.add_argument("--instruct-epochs", type=int, default=None, help="default: the build's plan")
    parser.add_argument("--decoder-epochs", type=int, default=None, help="default: the build's plan")
    parser.add_argument("--instruct-lr", type=float, default=None, help="default: the build's plan")
    parser.add_argument(
        "--projector-lr",
        type=float,
        default=None,
        help="stage 3's output projectors' peak (default: the build)",
    )
    parser.add_argument("--align-weight", type=float, default=None, help="stage 3's alignment loss weight")
    parser.add_argument(
        "--filler-rate", type=float, default=None, help="WorldConfig.filler_rate (default: the build)"
    )
    parser.add_argument(
        "--zero-unseen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage 0 zeroes never-seen token rows (default: the build's)",
    )
    parser.add_argument("--describe-only", action="store_true", help="score the medium->text tasks only")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from nextgpt.pipeline import NextGPT
    from nextgpt.profiles import load_profile
    from nextgpt.training.data.synthetic import make_world
    from nextgpt.training.data.world_media import WorldConfig
    from nextgpt.training.foundation.llm_base import build_world_llm_base
    from nextgpt.training.world_build import (
        SHAPES_FILLER_RATE,
        WorldBuildConfig,
        install,
        install_llm,
        llm_plan,
    )
    from nextgpt.training.world_eval.end_to_end import EvalWorldConfig, evaluate_world, markdown_table
    from nextgpt.training.world_stages import train_llm_stages

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    world = WorldConfig(
        seed=args.seed,
        n_images=args.n_images,
        n_videos=args.n_videos,
        n_audios=args.n_audios,
        n_instructions=args.n_instructions,
        filler_rate=SHAPES_FILLER_RATE if args.filler_rate is None else args.filler_rate,
    )
    make_world(args.out / "world", world)
    llm_seed = args.seed if args.llm_seed is None else args.llm_seed
    cfg = WorldBuildConfig(out=args.out, models_dir=args.out / "models", seed=llm_seed)
    install(cfg, build_reports(args.build, ["encoder", "image-text", "video-text", "audio-text"]))
    plan = llm_plan(False)
    plan = replace(
        plan,
        instruct_epochs=args.instruct_epochs or plan.instruct_epochs,
        decoder_epochs=args.decoder_epochs or plan.decoder_epochs,
        instruct_lr=args.instruct_lr or plan.instruct_lr,
        zero_unseen_embeddings=plan.zero_unseen_embeddings if args.zero_unseen is None else args.zero_unseen,
        instruct_projector_lr=args.projector_lr or plan.instruct_projector_lr,
        instruct_align_weight=args.align_weight or plan.instruct_align_weight,
    )
    base = build_world_llm_base(args.out / "llm" / "random-base", llm_seed)
    start = {"profile": "shapes", "llm": {"base_dir": str(base.resolve())}}
    train_llm_stages(args.out / "llm", args.out / "world", start, plan, models_dir=cfg.models_dir)
    llm_seconds = time.perf_counter() - t0
    tasks = DESCRIBE_TASKS if args.describe_only else EvalWorldConfig().tasks
    if not args.describe_only:
        install(cfg, build_reports(args.build, ["encoder", "image", "video", "audio"]))
    install_llm(cfg, cfg.models_dir / "shapes")
    t1 = time.perf_counter()
    profile = load_profile("shapes", models_dir=cfg.models_dir, env={})
    model = NextGPT.from_profile(profile, decoders=() if args.describe_only else ("image", "video", "audio"))
    result = evaluate_world(model, EvalWorldConfig(world=world, tasks=tasks))
    (args.out / "eval-world.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown_table(result)
    settings = {k: str(v) for k, v in vars(args).items()}
    seconds = f"LLM stages {llm_seconds:.0f} s, evaluation {time.perf_counter() - t1:.0f} s"
    (args.out / "report.md").write_text(f"{settings}\n\n{seconds}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
