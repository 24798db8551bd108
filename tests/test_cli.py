"""The `nextgpt` command line and the demo, run in-process with typer's runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from nextgpt.media.encode import encode_png
from nextgpt_serve.cli import app

runner = CliRunner()


def test_profiles_lists_both_profiles_and_presence(tiny_models_dir):
    result = runner.invoke(app, ["profiles", "--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output and "nextgpt-7b-tiva-v0" in result.output
    assert "missing" in result.output  # real weights are not on this machine


def test_generate_writes_media_and_prints_json(tiny_models_dir, tmp_path):
    from PIL import Image

    picture = tmp_path / "in.png"
    picture.write_bytes(encode_png(Image.new("RGB", (50, 30), (0, 128, 255))))
    args = ["generate", "--prompt", "Turn this into a sound.", "--image", str(picture)]
    args += ["--modalities", "text,audio", "--seed", "0", "--max-new-tokens", "8", "--json"]
    args += ["--models-dir", str(tiny_models_dir), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [m["modality"] for m in summary["media"]] == ["audio"]
    assert (tmp_path / "out" / "audio-1.wav").stat().st_size > 44


def test_generate_reports_a_missing_input_file(tiny_models_dir, tmp_path):
    args = ["generate", "--prompt", "hi", "--image", str(tmp_path / "nope.png")]
    result = runner.invoke(app, args + ["--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_in_process_demo_writes_png_mp4_and_wav(tiny_models_dir, tmp_path):
    from nextgpt_serve.demo import run_demo

    written = run_demo(tmp_path / "demo", models_dir=tiny_models_dir, in_process=True)
    suffixes = sorted({p.suffix for p in written})
    assert suffixes == [".mp4", ".png", ".wav"]
    assert all(p.stat().st_size > 0 for p in written)
