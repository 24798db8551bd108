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
    args += ["--modalities", "text,audio", "--seed", "0", "--max-new-tokens", "8", "--json", "--in-process"]
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


def test_help_lists_every_command_and_shows_no_placeholder_for_flags():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    commands = [c.name for c in app.registered_commands]
    assert all(name in result.output.split("Commands")[0] for name in commands)  # named in the intro
    generate = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output
    assert "<bool>" not in result.output + generate and "--json" in generate and "<int>" in generate


def test_generate_sends_to_a_running_gateway_without_loading_models(tmp_path):
    """--server: the request goes over REST; nothing is loaded here (no models dir at all)."""
    from tests.gateway.fakes import FakeCluster, sample_png

    cluster = FakeCluster().start()
    try:
        args = ["generate", "--server", cluster.http_url, "--prompt", "a fox", "--modalities", "text,image"]
        args += [
            "--steps",
            "3",
            "--seed",
            "7",
            "--out",
            str(tmp_path),
            "--models-dir",
            str(tmp_path / "none"),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "image-1.png").read_bytes().startswith(sample_png()[:8])  # the fake decoder's PNG
        assert cluster.llm.calls[-1].request.sampling.seed == 7
        assert cluster.decoders["image"].calls[-1].request.options.steps == 3
        cluster.llm.mode = "invalid"  # the server's own message reaches the user
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and "HTTP 400" in bad.output and "rejects this request" in bad.output
    finally:
        cluster.close()


def test_model_text_reaches_the_terminal_with_control_characters_escaped():
    from nextgpt_serve.cli import safe_text

    assert safe_text("ok\x1b[31mred\x07\nnext\tline") == "ok\\x1b[31mred\\x07\nnext\tline"
