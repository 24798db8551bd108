"""`make demo`: the cluster demo starts the cluster, sends requests over REST and gRPC, saves media."""

import json

import pytest

from nextgpt_serve.demo import REQUESTS, run_demo

pytestmark = pytest.mark.integration


def test_cluster_demo_writes_png_mp4_and_wav(tiny_models_dir, tmp_path):
    written = run_demo(tmp_path / "demo", models_dir=tiny_models_dir, engine="hf")
    assert sorted({p.suffix for p in written}) == [".mp4", ".png", ".wav"]
    assert all(p.stat().st_size > 0 for p in written)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [s["request"] for s in summary] == [r[0] for r in REQUESTS]
    assert {s["via"] for s in summary} == {"REST", "gRPC"}
    assert (tmp_path / "demo" / "logs" / "gateway.log").is_file()
