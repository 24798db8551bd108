"""Caption targets: the decoders' own text encoders, cached by content, dims checked against the profile."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nextgpt.errors import ConfigError
from nextgpt.profiles import load_profile
from nextgpt.training.data.synthetic import make_world
from nextgpt.training.data.targets import (
    check_target_dims,
    load_data_targets,
    load_targets,
    precompute_targets,
)
from nextgpt.training.data.world_media import WorldConfig
from nextgpt_serve.cli import app

CAPTIONS = ["a red circle", "a blue square", "a red circle", "a high tone"]


@pytest.fixture(scope="module")
def decoders(tiny_profile):
    from nextgpt.decoders.audio import AudioDecoder
    from nextgpt.decoders.image import ImageDecoder
    from nextgpt.decoders.video import VideoDecoder

    classes = {"image": ImageDecoder, "video": VideoDecoder, "audio": AudioDecoder}
    return {m: cls.load(tiny_profile.decoders[m]) for m, cls in classes.items()}


@pytest.mark.parametrize(("modality", "shape"), [("image", (77, 32)), ("video", (77, 48)), ("audio", (24,))])
def test_shapes_per_modality(decoders, tiny_profile, tmp_path, modality, shape):
    path = precompute_targets(CAPTIONS, decoders[modality], tmp_path, batch_size=2, progress=False)
    assert path.name.startswith(f"{modality}-") and path.suffix == ".safetensors"
    targets = load_targets(path)
    assert sorted(targets) == sorted(set(CAPTIONS))
    assert {tuple(t.shape) for t in targets.values()} == {shape}
    # Batching changes nothing: each row is the decoder's own embedding of that caption.
    torch.testing.assert_close(targets["a blue square"], decoders[modality].encode_text(["a blue square"])[0])
    if modality == "audio":
        norms = torch.stack([t.norm() for t in targets.values()])
        torch.testing.assert_close(norms, torch.ones_like(norms))
    check_target_dims(targets, tiny_profile, modality)


def test_content_addressed(decoders, tmp_path, monkeypatch):
    decoder = decoders["image"]
    first = precompute_targets(CAPTIONS, decoder, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr(decoder, "encode_text", lambda captions: calls.append(captions))
    again = precompute_targets(
        list(reversed(CAPTIONS)) + ["a blue square"], decoder, tmp_path, progress=False
    )
    assert again == first and calls == []  # same set of captions: the stored file, nothing recomputed
    monkeypatch.undo()
    other = precompute_targets(CAPTIONS + ["a green star"], decoder, tmp_path, progress=False)
    assert other != first
    video = precompute_targets(CAPTIONS, decoders["video"], tmp_path, progress=False)
    assert video.name.split("-")[1] != first.name.split("-")[1]  # another encoder, another digest
    assert json.loads(first.with_suffix(".json").read_text())["captions"] == {
        "a blue square": 0,
        "a high tone": 1,
        "a red circle": 2,
    }


def test_dimension_mismatch_names_widths_and_decoders(decoders, tiny_profile, tmp_path):
    video_targets = load_targets(precompute_targets(CAPTIONS, decoders["video"], tmp_path, progress=False))
    with pytest.raises(ConfigError) as err:
        check_target_dims(video_targets, tiny_profile, "image", source="targets/x.safetensors")
    message = str(err.value)
    assert "77x48" in message and "77x32" in message
    assert "width 48 belongs to the video decoder" in message
    assert "width 32 to the image decoder" in message
    assert "nextgpt precompute-targets" in message

    # The reference's trap on the real profile: Zeroscope's 1024-wide targets fed to SD 1.5's projector.
    real = load_profile("nextgpt-7b-tiva-v0", models_dir=tmp_path, env={})
    with pytest.raises(ConfigError) as err:
        check_target_dims({"c": torch.zeros(77, 1024)}, real, "image")
    message = str(err.value)
    assert "77x1024" in message and "77x768" in message
    assert "Zeroscope" in message and "Stable Diffusion 1.5" in message
    check_target_dims({"c": torch.zeros(512)}, real, "audio")
    check_target_dims({"c": torch.zeros(1, 512)}, real, "audio")


def test_cli_precompute_targets(tiny_models_dir, tmp_path):
    make_world(tmp_path, WorldConfig(n_images=6, n_videos=2, n_audios=3, n_instructions=14))
    args = ["precompute-targets", "--data", str(tmp_path), "--models-dir", str(tiny_models_dir)]
    result = CliRunner().invoke(app, [*args, "--modality", "image,audio"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "targets" / "index.json").read_text())
    assert sorted(index) == ["audio", "image"]
    image = load_data_targets(tmp_path, "image")
    pairs = {r["caption"] for r in json.loads((tmp_path / "cc3m.json").read_text())}
    assert pairs <= set(image)  # pair captions plus the instruction outputs
    assert {tuple(t.shape) for t in image.values()} == {(77, 32)}
    with pytest.raises(FileNotFoundError, match="precompute-targets"):
        load_data_targets(tmp_path, "video")
    bad = CliRunner().invoke(app, [*args, "--modality", "smell"])
    assert bad.exit_code == 2 and "smell" in bad.output


def test_encoded_on_one_thread(decoders, tmp_path, monkeypatch):
    """A cached file is reused by later runs, so its bytes must not depend on the caller's threads: on
    two, a few elements differ by ~1e-7 (the world's video targets
    differed in 2 of 85 captions, and a rebuild reusing one-thread targets trained another LLM delta
    than a clean build). Encoding runs on one thread; the caller's setting comes back."""
    decoder = decoders["video"]
    encode = decoder.encode_text
    seen: list[int] = []

    def recording(captions: list[str]) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return encode(captions)

    monkeypatch.setattr(decoder, "encode_text", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        precompute_targets(CAPTIONS, decoder, tmp_path, batch_size=2, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def test_the_same_encoder_at_another_path_hits(decoders, tiny_profile, tmp_path):
    """The cache key is what the text encoder computes, not where it was loaded from."""
    import shutil
    from dataclasses import replace

    from nextgpt.decoders.image import ImageDecoder

    copy = shutil.copytree(tiny_profile.decoders["image"].pipeline_dir, tmp_path / "elsewhere")
    moved = ImageDecoder.load(replace(tiny_profile.decoders["image"], pipeline_dir=copy), text_only=True)
    first = precompute_targets(CAPTIONS, decoders["image"], tmp_path / "targets", progress=False)
    assert precompute_targets(CAPTIONS, moved, tmp_path / "targets", progress=False) == first
