"""Smoke test of the serving benchmark: `bench/serve.py --quick` with very few requests on the HF engine.

It checks the shape of the JSON and that the plots are written; timing goals never go in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- bench/serve.py: begin (generated; do not edit by hand) -->", "<!-- bench/serve.py: end -->"
KINDS = {"text->text", "image->text", "text->image", "audio->video", "text->audio"}
LEVEL_KEYS = {"concurrency", "requests", "ok", "errors", "requests_per_s", "latency_ms", "ttft_ms", "ttfm_ms"}

pytestmark = pytest.mark.integration


def test_quick_run_writes_json_table_and_plots(tiny_models_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "serve.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "serve.py"),
        "--quick",
        "--requests",
        "5",
        "--warmup",
        "0",
    ]
    command += ["--out", str(out), "--models-dir", str(tiny_models_dir), "--log-dir", str(tmp_path / "logs")]
    full, short = tmp_path / "benchmarks.md", tmp_path / "README.md"
    for doc in (full, short):
        doc.write_text(f"# {doc.stem}\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    command += ["--readme", str(full), "--summary", str(short)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    with capsys.disabled():
        print("\n" + "\n".join(result.stdout.splitlines()[-12:]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["settings"]["concurrency"] == [1, 4] and report["settings"]["engines"] == ["hf"]
    assert {"cpu_count", "cpu_model", "date", "git_commit", "load_average_start"} <= report["machine"].keys()
    serial = report["serial"]["levels"][0]
    assert LEVEL_KEYS <= serial.keys() and serial["requests"] == 5
    [cluster] = report["configurations"]
    assert cluster["name"] == "cluster-hf" and cluster["status"] == "ok", cluster.get("error")
    assert [lv["concurrency"] for lv in cluster["levels"]] == [1, 4]
    for level in cluster["levels"]:
        assert LEVEL_KEYS <= level.keys() and level["requests"] == 5 and level["errors"] == 0
        assert set(level["per_type"]) == KINDS
        assert level["per_type"]["text->image"]["ttfm_ms"]["p50"] > 0
        assert set(level["decoder_batch_size"]) == {"image", "video", "audio"}
        assert level["decoder_batch_size"]["image"]["items"] == 1  # one text->image in 5 requests
        assert {"before", "after"} == level["load_average"].keys()
    assert set(cluster["overhead_c1_ms"]) == KINDS
    assert set(cluster["overhead_c1_interleaved_ms"]) == KINDS  # one interleaved round under --quick
    assert all(isinstance(v, float) for v in cluster["overhead_c1_interleaved_ms"].values())
    assert {"gateway", "llm", "decoder-video"} <= set(cluster["levels"][-1]["cpu_ms_per_request"])
    wire = cluster["levels"][-1]["wire_kb_per_request"]  # every backend read and wrote something
    assert set(wire) == {"encoder", "llm", "decoder-image", "decoder-video", "decoder-audio"}
    assert all(w["received"] > 0 and w["sent"] > 0 for w in wire.values()), wire

    for name in report["plots"] + ["serve.md"]:
        assert (out.parent / name).stat().st_size > 0
    assert {"serve_throughput.png", "serve_latency.png"} == set(report["plots"])
    assert "| cluster-hf | 4 |" in result.stdout

    # the documents' generated blocks: the full tables, and the short version for the README
    assert "CPU ms per request" in full.read_text() and "old" not in full.read_text()
    assert "gRPC kB per request by backend" in full.read_text()
    text = short.read_text()
    assert "| cluster-hf |" in text and "interleaved" in text and "CPU ms per request" not in text
    assert "(serve_throughput.png)" in text and text.endswith("\n\nafter\n")
    # a stored run re-renders to the same blocks
    again = tmp_path / "again.md"
    again.write_text(f"{BEGIN}\n{END}\n")
    render = [sys.executable, str(ROOT / "bench" / "serve_report.py"), str(out), "--summary", str(again)]
    subprocess.run(render, check=True, capture_output=True, timeout=120, cwd=ROOT)
    assert again.read_text().split(BEGIN)[1] == text.split(BEGIN)[1].replace("\n\nafter\n", "\n")
