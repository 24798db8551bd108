"""The chat page against the real local cluster (what `make up` runs, tiny profile): the acceptance walk of
issue 11 in one browser session. The fake-backend tests (`test_chat_page.py`) cover each behaviour in
detail; this one shows the page works with the real services: text->image, an attached image answered
with text, audio and video players, a corrupt file's alert and then a working next turn, and a multi-turn
history that reaches the LLM."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.integration.clusters import local_cluster
from tests.ui.conftest import DESKTOP
from tests.ui.test_chat_page import answer, screenshot, send

pytestmark = pytest.mark.integration

CAT = {"name": "cat.png", "mimeType": "image/png", "buffer": b""}


@pytest.fixture(scope="module")
def real_cluster(tiny_models_dir, tmp_path_factory):
    with local_cluster(tiny_models_dir, tmp_path_factory, engine="hf", use_redis=False) as running:
        yield running


def test_the_page_on_the_real_cluster(real_cluster, browser: Browser) -> None:
    from nextgpt.media.samples import sample_inputs

    cat = {**CAT, "buffer": sample_inputs()["image"].data}
    context = browser.new_context(viewport=DESKTOP)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{real_cluster.rest_url}/")
        send(page, "Show me a red fox.", media=("Image",))
        expect(answer(page).get_by_role("img")).to_have_count(1)  # the tiny model's (noise) picture

        send(page, "What is in this picture?", files=[cat])
        expect(answer(page).locator(".text")).not_to_be_empty()

        send(page, "Let me hear it and see it move.", media=("Audio", "Video"))
        turn = answer(page)
        expect(turn.locator("audio")).to_have_count(1)
        expect(turn.locator("video")).to_have_count(1)

        broken = {"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n not an image"}
        send(page, "And this one?", files=[broken])
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("could not decode the image")
        expect(alert).not_to_contain_text("0x")  # the server's own words, no library repr
        page.get_by_role("button", name="Remove broken.png").click()
        page.get_by_role("button", name="Send").click()
        expect(answer(page).locator(".text")).not_to_be_empty()
        expect(alert).to_be_hidden()
        expect(page.get_by_role("article", name="Assistant")).to_have_count(4)  # the history goes on
        screenshot(page, "desktop-real-cluster.png")
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"
