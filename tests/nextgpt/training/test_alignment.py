"""The span alignment check of `make train-world`'s report: which world caption's decoder embedding a
projected span is nearest to, and that a collapsed projector (one point for every request) scores at
chance, as the audio projector did under a row-averaged alignment loss."""

from __future__ import annotations

import pytest
import torch

from nextgpt.training.data.world_media import SOUNDS
from nextgpt.training.world_eval.alignment import asked_captions, markdown_lines, nearest, span_alignment


def test_world_captions_cover_every_medium_evenly() -> None:
    captions = asked_captions(24)
    assert captions["audio"] == list(SOUNDS)
    assert len(captions["image"]) == 24 and len(set(captions["image"])) == 24  # 72 with a stride of 3
    assert len(captions["video"]) == 24 and len(set(captions["video"])) == 24  # 96 with a stride of 4
    assert {c.split()[1] for c in captions["image"]} >= {"red", "green", "blue"}


def test_nearest_is_the_closest_target() -> None:
    targets = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]], [[1.0, 1.0]]])  # (C, Q, D)
    assert nearest(torch.tensor([[2.9, 4.2]]), targets) == (1, pytest.approx(0.2236, abs=1e-4))
    assert nearest(torch.tensor([0.9, 1.0]), targets[:, 0])[0] == 2  # (C, D) targets, as for audio


def test_the_tiny_model_is_scored_and_a_collapsed_projector_is_at_chance(tiny_model, monkeypatch) -> None:
    report = span_alignment(tiny_model, per_modality=2)
    assert set(report) == {"image", "video", "audio"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == len(r["items"]) for r in report.values())
    assert report["audio"]["n"] == len(SOUNDS)
    # Every audio span projected to one point (the first sound's target): right once in eight at most.
    first = tiny_model.decoders["audio"].encode_text([SOUNDS[0]])
    project = tiny_model.project_spans
    monkeypatch.setattr(
        tiny_model,
        "project_spans",
        lambda modality, spans: first if modality == "audio" else project(modality, spans),
    )
    collapsed = span_alignment(tiny_model, per_modality=2)["audio"]
    assert collapsed["accuracy"] == pytest.approx(1 / len(SOUNDS))
    assert {item["nearest"] for item in collapsed["items"]} == {SOUNDS[0]}
    assert "audio: the projected span is nearest" in markdown_lines({"audio": collapsed})
