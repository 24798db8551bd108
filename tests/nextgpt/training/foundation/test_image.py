"""The shapes-world image pipeline: each part lowers its loss, the saved directory loads through the served
`ImageDecoder` and draws from a caption's text states, held-out combinations stay out of training, and one
seed gives one pipeline. The reduced setting runs in about half a minute on two CPU cores."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nextgpt.config import DecodeDefaults, DecoderConfig
from nextgpt.decoders.image import ImageDecoder
from nextgpt.training.data.world_media import heldout_image_combos
from nextgpt.training.foundation.image import (
    TEMPLATES,
    ImageTrainConfig,
    phrase,
    render,
    train_combos,
    train_image_pipeline,
)
from nextgpt.training.world_eval import classify_image, evaluate_world_media


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("image")
    return out, train_image_pipeline(out, ImageTrainConfig.reduced())


def test_every_part_lowers_its_loss(trained: tuple[Path, dict[str, Any]]) -> None:
    _, report = trained
    for part in ("vae", "text_encoder", "unet"):
        result = report["parts"][part]
        assert result["last"] < 0.85 * result["first"], (part, result)


def test_the_saved_pipeline_loads_through_the_served_decoder(trained: tuple[Path, dict[str, Any]]) -> None:
    out, report = trained
    pipeline_dir = Path(report["pipeline_dir"])
    assert (pipeline_dir / "model_index.json").is_file() and not (pipeline_dir / "safety_checker").exists()
    cfg = ImageTrainConfig.reduced()
    defaults = DecodeDefaults(**report["decode_defaults"])
    decoder = ImageDecoder.load(DecoderConfig(pipeline_dir=pipeline_dir, defaults=defaults))
    assert decoder.cond_shape == (77, cfg.cond_dim)
    assert decoder.pipe.unet.config.addition_embed_type == "text"  # the pooled caption reaches every resnet
    caption = "a green triangle on a black background"
    cond = decoder.encode_text([caption])  # (1, 77, D): what the output projector will learn to imitate
    items = decoder.decode(cond, decoder.defaults, seed=0)
    assert len(items) == 1 and items[0].mime_type == "image/png"
    # Scored by the world's classifiers (the reduced model draws no shape yet: only the call is checked).
    scored = evaluate_world_media([(caption, items[0])])
    assert scored.all.total == 1 and scored.items[0].kind == "image"
    assert (out / "samples.png").is_file() and set(report["heldout"]["world_caption"]) >= {"colour", "shape"}


def test_loading_the_pipeline_leaves_the_random_stream_alone(trained: tuple[Path, dict[str, Any]]) -> None:
    # Its UNet's text time embedding draws from the CPU generator while it is built; a training stage that
    # loads the decoder for its targets after seeding must train the same whatever the decoder's layers.
    _, report = trained
    config = DecoderConfig(pipeline_dir=Path(report["pipeline_dir"]), defaults=DecodeDefaults())
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    ImageDecoder.load(config)
    assert torch.equal(torch.rand(4), expected)


def test_the_vae_is_checked_on_every_combination(trained: tuple[Path, dict[str, Any]]) -> None:
    _, report = trained
    reconstruction = report["vae_reconstruction"]
    assert set(reconstruction) >= {"colour", "shape", "background", "all", "wrong"}
    # The reduced VAE reads some combinations wrong: each named once, as "colour shape background".
    assert all(len(combo.split()) == 3 for combo in reconstruction["wrong"])
    assert len(reconstruction["wrong"]) == len(set(reconstruction["wrong"])) <= 72


def test_every_phrasing_names_colour_shape_and_background() -> None:
    assert TEMPLATES[0] == "{a} {c} {s} on a {b} background"  # the world's own caption comes first
    assert phrase(TEMPLATES[0], ("orange", "star", "gray")) == "an orange star on a gray background"
    for template in TEMPLATES:
        text = phrase(template, ("red", "star", "gray"), variant=1)
        assert "red" in text and "star" in text and "grey" in text


def test_heldout_combinations_stay_out_of_training() -> None:
    cfg = ImageTrainConfig()
    held = set(heldout_image_combos(cfg.world))
    assert len(held) == cfg.n_heldout_images and not held & set(train_combos(cfg))


def test_rendered_training_pictures_read_right() -> None:
    cfg = ImageTrainConfig()
    rng = random.Random(0)
    combos = train_combos(cfg)
    pictures = [(c, render(c, cfg.image_size, cfg.radius, rng)) for c in combos]
    readings = [classify_image(image).attributes() for _, image in pictures]
    wanted = [dict(zip(("colour", "shape", "background"), c, strict=True)) for c, _ in pictures]
    assert readings == wanted


def test_one_seed_gives_one_pipeline(tmp_path: Path) -> None:
    cfg = replace(ImageTrainConfig.reduced(), vae_steps=3, text_steps=3, unet_steps=3, eval_steps=1)
    a = train_image_pipeline(tmp_path / "a", cfg)
    b = train_image_pipeline(tmp_path / "b", cfg)
    for part in ("unet", "vae", "text_encoder"):
        wa = load_file(Path(a["pipeline_dir"]) / part / _weights(part))
        wb = load_file(Path(b["pipeline_dir"]) / part / _weights(part))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    for part in ("vae", "text_encoder", "unet"):
        assert a["parts"][part]["last"] == b["parts"][part]["last"], part


def _weights(part: str) -> str:
    return "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
