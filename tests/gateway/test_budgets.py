"""Over-budget inputs and outputs are a 400 through the REST API, naming the limit and its setting."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.helpers import chat, image_part, user
from tests.nextgpt.media.test_budgets import png_bomb

OVER_BUDGET = {
    "steps past the schedulers": (
        {"image": {"steps": 1000}},
        {},
        "options.image: steps=1000 must be in [1, 500]",
    ),
    "side": ({"image": {"height": 2048}}, {}, "height=2048 must be in [8, 1024]"),
    "frames": ({"video": {"num_frames": 256}}, {}, "num_frames=256 must be in [1, 64]"),
    "audio length": ({"audio": {"audio_seconds": 600}}, {}, "audio_seconds=600.0 must be in (0, 60.0]"),
    "one decode": (
        {"video": {"steps": 500, "height": 576, "width": 1024}},
        {},
        "500 x 576 x 1024 x 24 = 7077888000 is over the budget of 1000000000",
    ),
    "whole request": (
        {"max_media_per_modality": 8},
        {"modalities": ["text", "video"]},
        "request budget of 1000000000 (max_pixel_steps)",
    ),
}


@pytest.mark.parametrize("case", list(OVER_BUDGET))
def test_over_budget_options_are_400(cluster, case) -> None:
    options, extra, expected = OVER_BUDGET[case]
    r = chat(cluster, user("x"), nextgpt=options, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    assert not cluster.llm.calls  # refused before any work


def test_image_bomb_is_400(cluster) -> None:
    r = chat(cluster, user("what is this?", image_part(png_bomb())))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "8192x8192" in message and "max_image_pixels" in message
    assert httpx.get(f"{cluster.http_url}/healthz").status_code == 200
