"""The checked-in generated code matches the protos (CI fails on a stale nextgpt/_proto)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_field_is_commented_or_self_evident():
    """Comment fields carrying units or shapes: every Tensor field has a shape comment above it."""
    for proto in (ROOT / "proto" / "nextgpt" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("Tensor "):
                assert "shape" in lines[i - 1] or "shape" in lines[i - 2], f"{proto.name}:{i + 1}"
