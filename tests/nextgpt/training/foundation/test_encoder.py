"""The shapes encoder trainer, reduced: the contrastive loss goes down, the weights load through the
served `ImageBindEncoder.load` and embed exactly like the trained module, and one seed gives one model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nextgpt.config import EncoderConfig
from nextgpt.encoders.imagebind import ImageBindEncoder, build_model, tokenize
from nextgpt.training.data.synthetic import WorldConfig, make_world
from nextgpt.training.foundation.encoder import (
    EncoderTrainConfig,
    WorldData,
    contrastive_loss,
    embed_media,
    evaluate,
    fit,
    load_world,
    save_state_dict,
    split,
    train_encoder,
)

WORLD = WorldConfig(seed=0, n_images=24, n_videos=6, n_audios=8, n_instructions=0, n_heldout_images=2)


def _cfg(steps: int) -> EncoderTrainConfig:
    return EncoderTrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, novel_per_caption=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, WORLD)
    return out


@pytest.fixture(scope="module")
def data(world: Path) -> WorldData:
    return load_world(world, _cfg(1))


def test_split_is_seeded_and_disjoint() -> None:
    train, held = split(10, 0.2, 0, "image")
    assert sorted(train + held) == list(range(10)) and len(held) == 2
    assert split(10, 0.2, 0, "image") == (train, held)
    assert split(10, 0.2, 1, "image") != (train, held)


def test_repeated_captions_are_positives_not_negatives() -> None:
    media = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    text = 10 * torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good = contrastive_loss(media, text, torch.tensor([0, 0, 1]))
    bad = contrastive_loss(media, text, torch.tensor([1, 1, 0]))
    assert good < 0.7 and bad > 10  # the two twins of caption 0 do not push each other away


def test_preprocessing_folds_identical_clips(data: WorldData) -> None:
    video = data.train["video"][0]
    assert video.full().shape == (15, 3, 2, 224, 224)  # what the served encoder gets
    assert video.inputs.shape[0] < 15 and torch.isclose(video.weights.sum(), torch.tensor(1.0))
    assert data.train["audio"][0].full().shape == (3, 1, 128, 204)
    assert len(data.novel) == 2 and all(it.caption.endswith("background") for it in data.novel)


def test_loss_goes_down_and_the_served_loader_reads_the_weights(data: WorldData, tmp_path: Path) -> None:
    cfg = _cfg(30)
    model, result = fit(data, cfg, progress=False)
    assert result.last < 0.8 * result.first, result.losses
    path = tmp_path / "imagebind_shapes.pth"
    save_state_dict(model, path)
    state = torch.load(path, weights_only=True)
    assert list(state) == list(build_model(cfg.arch).state_dict())

    encoder = ImageBindEncoder.load(EncoderConfig(checkpoint=path, arch=cfg.arch, embed_dim=cfg.embed_dim))
    model.eval()
    for modality in ("image", "video", "audio"):
        items = data.heldout[modality][:2]
        served = encoder.encode_batch(modality, [it.full() for it in items])
        tower = "audio" if modality == "audio" else "vision"
        with torch.no_grad():
            trained = model({tower: torch.stack([it.full() for it in items])})[tower]
            folded = embed_media(model, modality, items)
        assert torch.allclose(served, trained, atol=1e-6), modality
        assert torch.allclose(F.normalize(served, dim=-1), folded, atol=1e-5), modality
    captions = [it.caption for it in data.heldout["image"][:2]]
    with torch.no_grad():
        trained_text = model({"text": tokenize(captions)})["text"]
    assert torch.allclose(encoder.encode_batch("text", captions), trained_text, atol=1e-6)

    scores = evaluate(model, data.heldout)
    assert set(scores) == {"image", "video", "audio"}
    assert set(scores["image"]["attributes"]) == {"colour", "shape", "background"}
    assert set(scores["video"]["attributes"]) == {"colour", "shape", "direction"}
    assert "sound" in scores["audio"]["attributes"]


def test_one_seed_one_model_and_a_full_report(world: Path, data: WorldData, tmp_path: Path) -> None:
    cfg = _cfg(2)
    report = train_encoder(world, tmp_path / "a.pth", cfg, progress=False)
    again, _ = fit(data, cfg, progress=False)
    state = torch.load(tmp_path / "a.pth", weights_only=True)
    for key, value in again.state_dict().items():
        assert torch.equal(state[key], value), key
    assert len(report["losses"]) == 2 and report["embed_dim"] == cfg.embed_dim
    assert set(report["heldout"]) == {"image", "video", "audio"} and "novel" in report and "train" in report
    for modality, scores in report["heldout"].items():
        assert 0.0 <= scores["retrieval_top1"] <= 1.0 and 0.0 <= scores["caption_accuracy"] <= 1.0, modality
