"""The shapes encoder trainer, reduced: the contrastive loss goes down, the weights load through the
served `ImageBindEncoder.load` and embed exactly like the trained module, and one seed gives one model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nextgpt.config import EncoderConfig
from nextgpt.encoders.imagebind import ImageBindEncoder, build_model, tokenize
from nextgpt.training.data.synthetic import make_world
from nextgpt.training.data.world_media import DIRECTIONS, SOUNDS, WorldConfig
from nextgpt.training.foundation.encoder import (
    AttributeHeads,
    EncoderTrainConfig,
    WorldData,
    augment,
    build_initial,
    candidate_captions,
    contrastive_loss,
    embed_media,
    embed_text,
    embed_text_short,
    embed_vision,
    evaluate,
    fit,
    load_world,
    palettes,
    recolour,
    save_state_dict,
    split,
    train_encoder,
)
from nextgpt.training.world_eval.text import caption_attributes

WORLD = WorldConfig(seed=0, n_images=24, n_videos=6, n_audios=8, n_instructions=0, n_heldout_images=2)


def _cfg(steps: int) -> EncoderTrainConfig:
    return EncoderTrainConfig(
        steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, novel_per_caption=1, rendered_sounds=1
    )


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


def test_fresh_sounds_join_training_and_are_scored_apart(world: Path, data: WorldData) -> None:
    """One render of each world sound joins the audio training items; one more, from another stream, is
    scored apart, and neither copies a world clip."""
    world_clips = load_world(world, replace(_cfg(1), rendered_sounds=0)).train["audio"]
    added = data.train["audio"][len(world_clips) :]
    assert [it.caption for it in added] == list(SOUNDS) == [it.caption for it in data.fresh_sounds]
    for item, fresh in zip(added, data.fresh_sounds, strict=True):
        assert item.full().shape == (3, 1, 128, 204)
        assert not torch.equal(item.inputs, fresh.inputs)
        assert not any(torch.equal(item.inputs, clip.inputs) for clip in world_clips)


def test_training_shortcuts_equal_the_model(data: WorldData) -> None:
    cfg = _cfg(1)
    model = build_initial(cfg, torch.cat([it.inputs for it in data.train["image"][:4]]))
    pictures = torch.cat([it.inputs for it in data.train["image"][:2]])  # (2, 3, 224, 224)
    clips = torch.cat([it.inputs for it in data.train["video"][:2]])  # (2, 3, 2, 224, 224)
    with torch.no_grad():
        assert torch.allclose(embed_vision(model, pictures), model({"vision": pictures})["vision"], atol=1e-5)
        assert torch.allclose(
            embed_vision(model, clips), model({"vision": clips[:, None]})["vision"], atol=1e-6
        )
        tokens = tokenize([it.caption for it in data.train["video"][:3]] + ["a rising sweep"])
        assert torch.allclose(embed_text_short(model, tokens), embed_text(model, tokens), atol=1e-4)


def _motion(clip: torch.Tensor) -> str:
    """The direction of a clip (3, 2, H, W) from where its shape is in the two frames."""
    centres = []
    for frame in clip.unbind(1):
        ys, xs = torch.nonzero(((frame - frame[:, :1, :1]).abs() > 0.3).any(0), as_tuple=True)
        centres.append((ys.float().mean(), xs.float().mean()))
    dy, dx = centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]
    return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")


def test_augmented_media_match_their_captions(data: WorldData) -> None:
    gen = torch.Generator().manual_seed(0)
    videos = data.train["video"]
    palette = palettes("video", candidate_captions("video", videos, True))
    for item in videos[:3]:
        assert _motion(item.inputs[0]) == caption_attributes(item.caption)["direction"]
        for _ in range(4):
            out = augment("video", item, gen, True, palette[item.caption], zoom=1.3)
            assert caption_attributes(out.caption)["direction"] == _motion(out.inputs[0]) in DIRECTIONS
            assert caption_attributes(out.caption)["shape"] == caption_attributes(item.caption)["shape"]
    picture = data.train["image"][0]
    other = next(it.caption for it in data.train["image"] if it.caption != picture.caption)
    there = recolour(picture.inputs, picture.caption, other)
    back = (recolour(there, other, picture.caption) - picture.inputs).abs()  # exact but for the resize's
    assert back.mean() < 0.005 and back.max() < 0.3  # overshoot, clipped to 0-255 in the world's colours
    heads = AttributeHeads(8, ("image",))
    assert heads.labels(picture.caption, free=True)[0] == -100 and heads.labels(picture.caption)[0] >= 0


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
    assert report["items"]["fresh_audio"] == len(SOUNDS) and set(report["fresh"]) == {"audio"}
    for modality, scores in report["heldout"].items():
        assert 0.0 <= scores["retrieval_top1"] <= 1.0 and 0.0 <= scores["caption_accuracy"] <= 1.0, modality
