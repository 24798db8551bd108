"""Browser tests of the chat page: headless Chromium from Debian's `chromium` package, driven by
Playwright for Python (never a downloaded browser), against a real gateway on fake backends."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.gateway import conftest as gateway_fixtures
from tests.gateway.fakes import FakeCluster

SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "ui"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
expect.set_options(timeout=20_000)  # generous: a busy 2-core box; nothing here asserts on timing


def chromium_path() -> str | None:
    """The system browser: $CHROMIUM, else Debian's `chromium` on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# the gateway tests' fake cluster fixtures: a shared one reset after each test, make_cluster for others
cluster = gateway_fixtures.cluster
make_cluster = gateway_fixtures.make_cluster
_reset_fakes = gateway_fixtures._reset_fakes


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium: `apt-get install chromium` (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Opens pages in fresh contexts (`viewport` = DESKTOP or PHONE); fails the test on any script
    error the page raised."""
    contexts = []
    errors: list[str] = []

    def open_page(url: str, viewport: dict = DESKTOP) -> Page:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def chat(cluster: FakeCluster, new_page: Callable[..., Page]) -> Page:
    """The chat page of the shared fake cluster, at desktop width."""
    return new_page(f"{cluster.http_url}/")
