"""Test-wide settings and the tiny profile fixture.

Every test process runs single-threaded (design section 4: with 2 threads on a busy 2-core box a 50 ms
tiny diffusion call becomes 10 s).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding a current tiny build: `make test` builds it first (NEXTGPT_MODELS_DIR);
    otherwise it is built once per session into a temporary directory."""
    from nextgpt.tiny.build import init_tiny, is_built

    configured = os.environ.get("NEXTGPT_MODELS_DIR")
    if configured and is_built(Path(configured)):
        return Path(configured)
    root = tmp_path_factory.mktemp("models")
    init_tiny(root, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_profile(tiny_models_dir: Path):
    from nextgpt.profiles import load_profile

    return load_profile("tiny", models_dir=tiny_models_dir, env={})


@pytest.fixture(scope="session")
def tiny_model(tiny_profile):
    """The whole tiny NExT-GPT, loaded once per test session."""
    from nextgpt.pipeline import NextGPT

    return NextGPT.from_profile(tiny_profile)
