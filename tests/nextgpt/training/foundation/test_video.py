"""The shapes-world video pipeline: each part lowers its loss, the saved directory loads through the served
`VideoDecoder` and draws a clip from a caption's text states, held-out combinations and phrasings stay out
of training, and one seed gives one pipeline. The reduced setting runs in about 15 s of CPU."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nextgpt.config import DecodeDefaults, DecoderConfig
from nextgpt.decoders.video import VideoDecoder
from nextgpt.training.foundation.video import (
    HELDOUT_TEMPLATES,
    TEMPLATES,
    VideoTrainConfig,
    build_unet,
    heldout_combos,
    phrase,
    render_clip,
    train_combos,
    train_video_pipeline,
)
from nextgpt.training.world_eval import classify_video, evaluate_world_media


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("video")
    return out, train_video_pipeline(out, VideoTrainConfig.reduced())


def test_every_part_lowers_its_loss(trained: tuple[Path, dict[str, Any]]) -> None:
    _, report = trained
    for part in ("vae", "text_encoder", "unet"):
        result = report["parts"][part]
        assert result["last"] < 0.85 * result["first"], (part, result)


def test_the_saved_pipeline_loads_through_the_served_decoder(trained: tuple[Path, dict[str, Any]]) -> None:
    out, report = trained
    pipeline_dir = Path(report["pipeline_dir"])
    assert (pipeline_dir / "model_index.json").is_file()
    cfg = VideoTrainConfig.reduced()
    defaults = DecodeDefaults(**report["decode_defaults"])
    decoder = VideoDecoder.load(DecoderConfig(pipeline_dir=pipeline_dir, defaults=defaults))
    assert decoder.cond_shape == (77, cfg.cond_dim)
    caption = "a green triangle moving up"
    cond = decoder.encode_text([caption])  # (1, 77, D): what the output projector will learn to imitate
    videos = decoder.diffuse(cond, decoder.defaults, seed=0)
    assert videos.shape == (1, cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
    items = decoder.to_media(videos, decoder.defaults)
    assert len(items) == 1 and items[0].mime_type == "video/mp4"
    # Scored by the world's classifiers (the reduced model draws no shape yet: only the call is checked).
    scored = evaluate_world_media([(caption, items[0])])
    assert scored.all.total == 1 and scored.items[0].kind == "video"
    assert (out / "samples.png").is_file()
    assert set(report["heldout"]["unseen_phrasings"]) >= {"colour", "direction", "colour_direction"}


def test_every_phrasing_names_colour_shape_and_direction() -> None:
    assert phrase(TEMPLATES[0], ("orange", "star", "up")) == "an orange star moving up"  # the world's caption
    for template in TEMPLATES + HELDOUT_TEMPLATES:
        text = phrase(template, ("red", "star", "left"))
        assert "red" in text and "star" in text and "left" in text
    trained_words = {w for t in TEMPLATES for w in phrase(t, ("red", "star", "left")).split()}
    for template in HELDOUT_TEMPLATES:
        assert set(phrase(template, ("red", "star", "left")).split()) - trained_words


def test_heldout_combinations_stay_out_of_training() -> None:
    cfg = VideoTrainConfig()
    held = set(heldout_combos(cfg))
    assert len(held) == cfg.n_heldout and not held & set(train_combos(cfg))
    assert len(held) + len(train_combos(cfg)) == 96


def test_rendered_training_clips_read_right() -> None:
    cfg = VideoTrainConfig()
    rng = random.Random(0)
    combos = train_combos(cfg)[::3]
    readings = [classify_video(render_clip(c, cfg, rng)).attributes() for c in combos]
    assert readings == [dict(zip(("colour", "shape", "direction"), c, strict=True)) for c in combos]


@pytest.mark.parametrize("causal", [False, True])
def test_only_causal_convs_tell_the_first_frame_from_the_last(causal: bool) -> None:
    # A UNet3D as diffusers starts it is time-reversal symmetric: a clip played backwards gets the same
    # prediction played backwards, so "left" cannot differ from "right". Causal convolutions break that.
    cfg = replace(VideoTrainConfig.reduced(), causal_temporal_convs=causal)
    torch.manual_seed(0)
    unet = build_unet(cfg).eval()
    latent = cfg.frame_size // 2 ** (len(cfg.vae_channels) - 1)
    x = torch.randn(
        1, cfg.latent_channels, cfg.num_frames, latent, latent, generator=torch.Generator().manual_seed(1)
    )
    cond = torch.randn(1, 77, cfg.cond_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        forward = unet(x, 999, cond).sample
        backward = unet(x.flip(2), 999, cond).sample.flip(2)
    gap = float((forward - backward).norm() / forward.norm())
    assert (gap > 1e-3) if causal else (gap < 1e-5), gap


def test_the_temporal_convs_stay_causal_through_training() -> None:
    cfg = VideoTrainConfig.reduced()
    torch.manual_seed(0)
    unet = build_unet(cfg)
    convs = [m for m in unet.modules() if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 1, 1)]
    assert convs
    before = [c.weight[:, :, :2].clone() for c in convs]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-2, weight_decay=0.1)
    latent = cfg.frame_size // 2 ** (len(cfg.vae_channels) - 1)
    x = torch.randn(2, cfg.latent_channels, cfg.num_frames, latent, latent)
    for _ in range(3):
        optimizer.zero_grad()
        unet(x, 500, torch.randn(2, 77, cfg.cond_dim)).sample.pow(2).mean().backward()
        optimizer.step()
    assert all(bool((c.weight[:, :, 2] == 0).all()) for c in convs)  # the next frame's tap
    assert all(not torch.equal(c.weight[:, :, :2], b) for c, b in zip(convs, before, strict=True))


def test_one_seed_gives_one_pipeline(tmp_path: Path) -> None:
    cfg = replace(
        VideoTrainConfig.reduced(), vae_steps=2, text_steps=2, unet_steps=2, bank_size=8, n_heldout=1
    )
    a = train_video_pipeline(tmp_path / "a", cfg)
    b = train_video_pipeline(tmp_path / "b", cfg)
    for part in ("unet", "vae", "text_encoder"):
        wa = load_file(Path(a["pipeline_dir"]) / part / _weights(part))
        wb = load_file(Path(b["pipeline_dir"]) / part / _weights(part))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    for part in ("vae", "text_encoder", "unet"):
        assert a["parts"][part]["last"] == b["parts"][part]["last"], part


def _weights(part: str) -> str:
    return "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
