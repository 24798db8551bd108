"""`nextgpt init-tiny`: write every model directory of the tiny profile, in the real formats.

Each component is built by its own builder (seeded), then the NExT-GPT delta is made against the tiny
base LLM. A stamp file records what was built so that setup can skip a complete, current build.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from nextgpt import tiny_profile as dims
from nextgpt.profiles import load_profile

logger = logging.getLogger(__name__)

TINY_VERSION = "1"
"""Bump when any tiny builder changes, so existing builds are redone."""
STAMP = "tiny-build.json"


def is_built(models_dir: Path) -> bool:
    stamp = models_dir / "tiny" / STAMP
    if not stamp.is_file():
        return False
    return json.loads(stamp.read_text()).get("version") == TINY_VERSION


def init_tiny(models_dir: Path, *, force: bool = False, seed: int = dims.SEED, progress: bool = True) -> Path:
    """Build the tiny profile under `models_dir/tiny` (skipped when already built, unless `force`)."""
    from nextgpt.tiny.checkpoint import build_tiny_delta
    from nextgpt.tiny.diffusion import (
        build_tiny_audioldm,
        build_tiny_stable_diffusion,
        build_tiny_zeroscope,
    )
    from nextgpt.tiny.imagebind import build_tiny_imagebind
    from nextgpt.tiny.llama import build_tiny_llama

    models_dir = Path(models_dir)
    root = models_dir / "tiny"
    if is_built(models_dir) and not force:
        logger.info("tiny profile already built at %s", root)
        return root
    if root.exists():
        shutil.rmtree(root)
    profile = load_profile("tiny", models_dir=models_dir, env={})
    delta_checkpoint = profile.delta_checkpoint
    assert delta_checkpoint is not None, "the tiny profile always names its delta checkpoint"
    steps: list[tuple[str, Callable[[], object]]] = [
        ("llm", lambda: build_tiny_llama(profile.llm.base_dir, seed)),
        ("imagebind", lambda: build_tiny_imagebind(profile.encoder.checkpoint.parent, seed)),
        (
            "stable-diffusion",
            lambda: build_tiny_stable_diffusion(profile.decoders["image"].pipeline_dir, seed),
        ),
        ("zeroscope", lambda: build_tiny_zeroscope(profile.decoders["video"].pipeline_dir, seed)),
        ("audioldm", lambda: build_tiny_audioldm(profile.decoders["audio"].pipeline_dir, seed)),
        (
            "nextgpt delta",
            lambda: build_tiny_delta(profile.llm.base_dir, delta_checkpoint, profile, seed),
        ),
    ]
    _run_steps(steps, progress)
    (root / STAMP).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}, indent=2) + "\n")
    return root


def _run_steps(steps: list[tuple[str, Callable[[], object]]], progress: bool) -> None:
    if not progress:
        for _, build in steps:
            build()
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("building tiny profile", total=len(steps))
        for name, build in steps:
            bar.update(task, description=f"building {name}")
            build()
            bar.advance(task)
