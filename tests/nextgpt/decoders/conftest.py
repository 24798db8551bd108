"""The three tiny diffusion pipelines, built once per test session into a temporary models directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt import tiny_profile as dims
from nextgpt.config import ProfileConfig
from nextgpt.profiles import load_profile
from nextgpt.tiny.diffusion import build_all


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_all(root / "tiny", seed=dims.SEED)
    return root


@pytest.fixture(scope="session")
def tiny_pipelines(tiny_models_dir: Path) -> dict[str, Path]:
    base = tiny_models_dir / "tiny"
    return {"image": base / "stable-diffusion", "video": base / "zeroscope", "audio": base / "audioldm"}


@pytest.fixture(scope="session")
def tiny_profile(tiny_models_dir: Path) -> ProfileConfig:
    """The real `tiny` profile pointed at the freshly built pipelines (its decode defaults included)."""
    return load_profile("tiny", models_dir=tiny_models_dir, env={})
