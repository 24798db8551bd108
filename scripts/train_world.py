"""`make train-world`: train every component of the `shapes` profile on the shapes world, install it under
models/shapes/, evaluate it; report in out/train-world/ (`nextgpt.training.world_build` says how)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and every trainer")
    parser.add_argument("--out", type=Path, default=Path("out/train-world"), help="reports and samples")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="installs MODELS/shapes/")
    parser.add_argument("--workers", type=int, default=2, help="parts trained at once (one core each)")
    parser.add_argument("--smoke", action="store_true", help="reduced settings: checks the wiring only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nextgpt.training.world_build import WorldBuildConfig, build_shapes

    cfg = WorldBuildConfig(
        seed=args.seed, out=args.out, models_dir=args.models_dir, workers=args.workers, smoke=args.smoke
    )
    report = build_shapes(cfg)
    print((args.out / "report.md").read_text())
    print(json.dumps(report["seconds"]))


if __name__ == "__main__":
    main()
