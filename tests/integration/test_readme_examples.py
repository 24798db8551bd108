"""Every shell and Python example of README.md and docs/api.md runs as written against a live local cluster,
so that the documentation cannot rot.

The examples talk to the documented ports (localhost:8000, localhost:50051); the test's cluster runs on free
ports, so those addresses are rewritten, nothing else. Each example runs in a scratch directory that holds
the repository's `examples/`, `.venv` and `models` (as links), the way a user runs them from a checkout.
`make` lines (set-up, `make up`) are left out: the fixtures did that already. grpcurl examples
run when grpcurl is installed (it is not a Debian package) and are skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.launcher import LocalCluster
from tests.integration.clusters import local_cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "api.md")
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
NOT_RUN = ("make ",)  # set-up and the cluster itself: done by the fixtures


def examples() -> list[tuple[str, str, str]]:
    """(id, language, code) of every bash / python block of the documents."""
    found = []
    for doc in DOCS:
        for n, match in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{n}", match.group(1), match.group(2)))
    return found


@pytest.fixture(scope="module")
def cluster(tiny_models_dir, tmp_path_factory):
    with local_cluster(
        tiny_models_dir,
        tmp_path_factory,
        engine="hf",
    ) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path, tiny_models_dir: Path) -> Path:
    for name, target in (
        ("examples", ROOT / "examples"),
        (".venv", ROOT / ".venv"),
        ("models", tiny_models_dir),
    ):
        (tmp_path / name).symlink_to(target)
    return tmp_path


def localize(code: str, cluster: LocalCluster) -> str:
    """The documented addresses -> this cluster's; lines that would start another cluster dropped."""
    http, grpc_port = cluster.ports.gateway_http, cluster.ports.gateway_grpc
    code = re.sub(r"localhost:8000\b", f"localhost:{http}", code)
    code = re.sub(r"localhost:50051\b", f"localhost:{grpc_port}", code)
    return "\n".join(line for line in code.splitlines() if not line.strip().startswith(NOT_RUN))


@pytest.mark.parametrize(("where", "language", "code"), examples(), ids=[e[0] for e in examples()])
def test_documented_example_runs_as_written(where, language, code, cluster, workdir, tiny_models_dir):
    if "grpcurl " in code and shutil.which("grpcurl") is None:
        pytest.skip("grpcurl is not installed (it is not a Debian package; the docs say how to get it)")
    code = localize(code, cluster)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NEXTGPT_MODELS_DIR": str(tiny_models_dir),
        "NEXTGPT_SERVER": cluster.rest_url,  # `nextgpt generate` finds "the running cluster" here
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if language == "python":
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"{where} failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    for name in ("painting.png", "fox.png", "cat.mp4"):  # media an example says it writes are real files
        written = workdir / name
        if name in code:
            assert written.stat().st_size > 0, f"{where} wrote an empty {name}"
