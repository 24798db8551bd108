"""The short CI load: 30 s of mixed REST + gRPC traffic against a real local cluster, zero failures.

Timing goals do not belong in tests: p50/p95 per request type are printed (and written to summary.json),
not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# the locustfile's request types (not imported: locust monkey-patches the importing process with gevent)
KINDS = ("text-chat", "image-understanding", "text-to-image", "audio-to-video", "all-modality")

pytestmark = pytest.mark.integration


def test_short_mixed_load_has_no_failures(tiny_models_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "load"
    script = Path(__file__).with_name("run_load.py")
    command = [sys.executable, str(script), "--out", str(out), "--run-time", "30s", "--users", "4"]
    command += ["--models-dir", str(tiny_models_dir), "--engine", "hf"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    with capsys.disabled():
        print("\n" + "\n".join(result.stdout.splitlines()[-14:]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((out / "summary.json").read_text())}
    for kind in KINDS:
        for api in ("REST", "gRPC"):
            assert rows[f"{api} {kind}"]["requests"] >= 1, f"no {api} {kind} request was sent"
    assert rows["Aggregated"]["failures"] == 0
    assert (out / "report.html").stat().st_size > 0 and (out / "locust_stats.csv").exists()
