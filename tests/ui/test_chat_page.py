"""The chat page at `/`, driven in headless Chromium as a person would: type, tick, attach, press Send, and
see the streamed answer, the generated media, the errors. Every wait is Playwright's auto-waiting
(`expect`), never a sleep; what the backends received is checked on the fakes."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from playwright.sync_api import Locator, Page, expect

from nextgpt._proto import common_pb2
from tests.gateway.fakes import REPLY_WORDS, FakeCluster, sample_mp4, sample_png, sample_wav
from tests.gateway.helpers import chat as post_chat
from tests.gateway.helpers import image_part, user
from tests.ui.conftest import PHONE, SCREENSHOTS

REPLY = "".join(REPLY_WORDS)
PNG = {"name": "cat.png", "mimeType": "image/png", "buffer": sample_png()}
WAV = {"name": "meow.wav", "mimeType": "audio/wav", "buffer": sample_wav()}
MP4 = {"name": "clip.mp4", "mimeType": "video/mp4", "buffer": sample_mp4()}
PLAYABLE = """v => new Promise(done => {
    if (v.readyState >= 1) done(v.videoWidth);
    v.addEventListener("loadedmetadata", () => done(v.videoWidth));
    v.addEventListener("error", () => done(`error ${v.error && v.error.code}`));
})"""
BROKEN_PNG = b"\x89PNG\r\n\x1a\n this is not an image"


def send(page: Page, text: str, *, media: tuple[str, ...] = (), files: list[dict] | None = None) -> None:
    for modality in ("Image", "Video", "Audio"):
        page.get_by_role("checkbox", name=modality).set_checked(modality in media)
    if files:
        page.get_by_label("Attach").set_input_files(files)
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def answer(page: Page) -> Locator:
    """The last assistant turn, once its stream has ended (its timings line is the last chunk)."""
    turn = page.get_by_role("article", name="Assistant").last
    expect(turn.locator(".timings")).to_be_visible()
    expect(turn).not_to_have_attribute("aria-busy", "true")
    return turn


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # else a full-page shot shows the sticky header mid-page
    page.screenshot(path=SCREENSHOTS / name, full_page=True)


async def _gate(cluster: FakeCluster) -> asyncio.Event:
    cluster.llm.gate = asyncio.Event()
    return cluster.llm.gate


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """For the fakes' state (the page's is awaited with `expect`)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the cluster"
        time.sleep(0.01)


def anywhere(message: str) -> re.Pattern[str]:
    """`message` as a pattern, memory addresses (`0x7f..`, in a decoder's exception text) left open."""
    return re.compile(re.sub(r"0x[0-9a-f]+", "0x[0-9a-f]+", re.escape(message)))


def server_error(cluster: FakeCluster, *messages: dict, headers: dict | None = None) -> str:
    """The message the gateway answers for these messages (what the page must show)."""
    response = post_chat(cluster, *messages, headers=headers)
    assert response.status_code >= 400, response.text
    return response.json()["error"]["message"]


def test_the_page_and_its_files_are_served_outside_the_api_schema(cluster: FakeCluster) -> None:
    page = httpx.get(f"{cluster.http_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{cluster.http_url}/static/{name}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    missing = httpx.get(f"{cluster.http_url}/static/nope.js", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    paths = httpx.get(f"{cluster.http_url}/openapi.json", timeout=10).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_text_to_image_streams_the_text_and_shows_the_image_with_a_download_link(chat: Page) -> None:
    send(chat, "Draw a fox in the snow.", media=("Image",))
    turn = answer(chat)
    expect(turn.locator(".text")).to_have_text(REPLY)
    image = turn.locator("figure.image img")
    expect(image).to_have_count(1)
    assert image.evaluate("img => img.complete && img.naturalWidth") == 8  # the fake's 8x8 PNG, decoded
    link = turn.get_by_role("link", name="Download image")
    expect(link).to_have_attribute("download", "nextgpt-image-1.png")
    expect(turn.locator(".timings")).to_contain_text("tokens")
    user_turn = chat.get_by_role("article", name="You")
    expect(user_turn).to_have_text("You" + "Draw a fox in the snow.")
    expect(chat.get_by_label("Message")).to_have_value("")  # sent: the composer is empty again
    expect(chat.get_by_role("alert")).to_be_hidden()
    screenshot(chat, "desktop-text-to-image.png")


def test_enter_sends_and_shift_enter_starts_a_new_line(chat: Page, cluster: FakeCluster) -> None:
    box = chat.get_by_label("Message")
    box.click()
    box.press_sequentially("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    box.press("Enter")
    expect(answer(chat).locator(".text")).to_have_text(REPLY)
    assert cluster.llm.calls[-1].request.turns[-1].text == "first line\nsecond line"


def test_an_attached_image_is_sent_and_answered_with_text(chat: Page, cluster: FakeCluster) -> None:
    chat.get_by_label("Attach").set_input_files([PNG])
    expect(chat.get_by_role("button", name="Remove cat.png")).to_be_visible()
    send(chat, "What is in this picture?")
    expect(answer(chat).locator(".text")).to_have_text(REPLY)
    expect(chat.get_by_role("img", name="attached cat.png")).to_be_visible()
    expect(chat.get_by_role("button", name="Remove cat.png")).to_have_count(0)  # sent with the message
    (turn,) = cluster.llm.calls[-1].request.turns
    assert turn.text == "What is in this picture?" and len(turn.media) == 1
    assert len(cluster.encoder.calls[-1].request.inputs) == 1


def test_attached_audio_and_video_go_as_input_audio_and_video_url(chat: Page, cluster: FakeCluster) -> None:
    with chat.expect_request("**/v1/chat/completions") as sent:
        send(chat, "Describe these.", files=[WAV, MP4])
    answer(chat)
    parts = sent.value.post_data_json["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "input_audio", "video_url"]
    assert parts[1]["input_audio"] == {"data": base64.b64encode(sample_wav()).decode(), "format": "wav"}
    assert parts[2]["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert len(cluster.llm.calls[-1].request.turns[-1].media) == 2


def test_asking_for_audio_shows_a_player(chat: Page) -> None:
    send(chat, "Let me hear a fox.", media=("Audio",))
    turn = answer(chat)
    player = turn.locator("figure.audio audio[controls]")
    expect(player).to_have_count(1)
    expect(turn.get_by_role("link", name="Download audio")).to_have_attribute(
        "download", "nextgpt-audio-1.wav"
    )
    assert player.evaluate(PLAYABLE.replace("videoWidth", "duration")) == 0.1  # the fake's 1600 samples


def test_asking_for_video_shows_a_player(chat: Page) -> None:
    send(chat, "Film a fox.", media=("Video",))
    turn = answer(chat)
    video = turn.locator("figure.video video[controls]")
    expect(video).to_have_count(1)
    assert video.evaluate(PLAYABLE) == 16  # Chromium decodes the fake's 16x16 H.264 MP4
    expect(turn.get_by_role("link", name="Download video")).to_have_attribute(
        "download", "nextgpt-video-1.mp4"
    )


def test_settings_are_sent_as_options(chat: Page, cluster: FakeCluster) -> None:
    chat.get_by_text("Settings").click()
    image = chat.get_by_role("group", name="Image")
    image.get_by_label("Steps").fill("3")
    image.get_by_label("Width").fill("64")
    chat.get_by_role("group", name="Audio").get_by_label("Seconds").fill("1.5")
    chat.get_by_label("Seed").fill("7")
    with chat.expect_request("**/v1/chat/completions") as sent:
        send(chat, "A fox, please.", media=("Image", "Audio"))
    answer(chat)
    body = sent.value.post_data_json
    assert body["seed"] == 7 and body["modalities"] == ["text", "image", "audio"] and body["stream"] is True
    assert body["nextgpt"] == {"image": {"steps": 3, "width": 64}, "audio": {"audio_seconds": 1.5}}
    decode = cluster.decoders["image"].calls[-1].request
    assert decode.options.steps == 3 and decode.options.width == 64 and decode.seed == 7


def test_a_corrupt_file_shows_the_servers_message_and_the_page_keeps_working(
    chat: Page, cluster: FakeCluster
) -> None:
    expected = server_error(cluster, user("What is this?", image_part(BROKEN_PNG)))
    send(chat, "What is this?", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": BROKEN_PNG}])
    alert = chat.get_by_role("alert")
    expect(alert).to_contain_text(anywhere(expected))
    expect(chat.get_by_role("article")).to_have_count(0)  # nothing was sent: the turn stays in the composer
    expect(chat.get_by_label("Message")).to_have_value("What is this?")
    screenshot(chat, "desktop-error.png")

    chat.get_by_role("button", name="Remove broken.png").click()
    chat.get_by_label("Attach").set_input_files([PNG])
    chat.get_by_role("button", name="Send").click()
    expect(answer(chat).locator(".text")).to_have_text(REPLY)
    expect(alert).to_be_hidden()


def test_a_failed_medium_is_shown_beside_the_rest_of_the_answer(chat: Page, cluster: FakeCluster) -> None:
    cluster.decoders["video"].mode = "fail"
    send(chat, "A fox, moving and still.", media=("Image", "Video"))
    turn = answer(chat)
    expect(turn.locator(".notes .error")).to_have_count(1)
    expect(turn.locator(".notes .error")).to_contain_text("video failed")
    expect(turn.locator("figure.image img")).to_have_count(1)
    expect(turn.locator(".text")).to_have_text(REPLY)


def test_overload_server_trouble_and_network_failure_are_alerts_and_the_page_recovers(
    make_cluster: Callable[..., FakeCluster], new_page: Callable[..., Page]
) -> None:
    cluster = make_cluster(max_in_flight=1, max_waiting=0)
    page = new_page(f"{cluster.http_url}/")
    alert = page.get_by_role("alert")

    # 1. overloaded: one request holds the only slot (at the fake LLM's gate), the page's gets a 429
    gate = cluster.run(_gate(cluster))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post_chat, cluster, user("hold the slot"))
        wait_until(lambda: len(cluster.llm.calls) == 1)
        send(page, "Hello?")
        expect(alert).to_contain_text("retry in")
        expect(alert).to_contain_text("capacity")
        cluster.loop.call_soon_threadsafe(gate.set)
        assert held.result().status_code == 200
    cluster.llm.gate = None

    # 2. the LLM is down: 503 with the gateway's message
    cluster.llm.mode = "unavailable"
    expected = server_error(cluster, user("Hello?"))
    page.get_by_role("button", name="Send").click()
    expect(alert).to_contain_text(expected)
    cluster.llm.mode = "ok"

    # 3. the network fails before any answer
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    page.get_by_role("button", name="Send").click()
    expect(alert).to_contain_text("Could not reach the server")
    page.unroute("**/v1/chat/completions")

    page.get_by_role("button", name="Send").click()
    expect(answer(page).locator(".text")).to_have_text(REPLY)
    expect(alert).to_be_hidden()


def test_a_second_turn_sends_the_history_with_its_media_and_new_chat_clears_it(
    chat: Page, cluster: FakeCluster
) -> None:
    with chat.expect_request("**/v1/chat/completions"):
        send(chat, "Draw a fox and let me hear it.", media=("Image", "Audio"))
    answer(chat)
    with chat.expect_request("**/v1/chat/completions") as second:
        send(chat, "Now make it smaller.")
    expect(chat.get_by_role("article", name="Assistant")).to_have_count(2)
    answer(chat)

    messages = second.value.post_data_json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    previous = messages[1]
    assert previous["content"][0] == {"type": "text", "text": REPLY}
    assert [p["type"] for p in previous["content"][1:]] == ["image_url"]
    assert base64.b64decode(previous["audio"]["data"])[:4] == b"RIFF" and previous["audio"]["format"] == "wav"
    turns = cluster.llm.calls[-1].request.turns
    assert [t.role for t in turns] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_USER]
    assert turns[1].text == REPLY and set(turns[1].generated) == {
        common_pb2.MODALITY_IMAGE,
        common_pb2.MODALITY_AUDIO,
    }
    assert turns[2].text == "Now make it smaller."
    screenshot(chat, "desktop-multi-turn.png")

    chat.get_by_role("button", name="New chat").click()
    expect(chat.get_by_role("article")).to_have_count(0)
    send(chat, "Start over.")
    answer(chat)
    (turn,) = cluster.llm.calls[-1].request.turns
    assert turn.text == "Start over."


def test_api_key_asked_for_on_401_then_sent_as_bearer(
    make_cluster: Callable[..., FakeCluster], new_page: Callable[..., Page]
) -> None:
    cluster = make_cluster(api_keys=["sekret-key"])
    page = new_page(f"{cluster.http_url}/")
    expected = server_error(cluster, user("Hello"))
    send(page, "Hello")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(expected)
    expect(alert).to_contain_text("API key")
    key = page.get_by_label("API key")
    expect(key).to_be_visible()  # the settings panel opened on the 401
    expect(key).to_be_focused()

    key.fill("wrong")
    page.get_by_role("button", name="Send").click()
    expect(alert).to_contain_text(
        server_error(cluster, user("Hello"), headers={"authorization": "Bearer wrong"})
    )

    key.fill("sekret-key")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.get_by_role("button", name="Send").click()
    expect(answer(page).locator(".text")).to_have_text(REPLY)
    assert sent.value.headers["authorization"] == "Bearer sekret-key"
    expect(alert).to_be_hidden()


def test_phone_width_lays_out_in_one_column_without_sideways_scrolling(
    cluster: FakeCluster, new_page: Callable[..., Page]
) -> None:
    page = new_page(f"{cluster.http_url}/", viewport=PHONE)
    send(page, "Draw a fox, film it and let me hear it.", media=("Image", "Video", "Audio"))
    turn = answer(page)
    expect(turn.locator("figure")).to_have_count(3)
    screenshot(page, "phone-chat.png")
    page.get_by_text("Settings").click()
    for element in ("document.documentElement", "document.body"):
        width = page.evaluate(f"[{element}.scrollWidth, {element}.clientWidth]")
        assert width[0] <= width[1], f"{element} scrolls sideways at phone width: {width}"
    box = page.get_by_role("button", name="Send").bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    screenshot(page, "phone-settings.png")


def test_stop_before_the_answer_gives_the_message_back(
    make_cluster: Callable[..., FakeCluster], new_page: Callable[..., Page]
) -> None:
    cluster = make_cluster()
    page = new_page(f"{cluster.http_url}/")
    gate = cluster.run(_gate(cluster))
    send(page, "Take your time.")
    wait_until(lambda: len(cluster.llm.calls) == 1)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("article")).to_have_count(0)
    expect(page.get_by_label("Message")).to_have_value("Take your time.")
    expect(page.get_by_role("alert")).to_be_hidden()
    cluster.loop.call_soon_threadsafe(gate.set)


DROP = """([name, type, bytes]) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([new Uint8Array(bytes)], name, { type }));
    document.getElementById("main").dispatchEvent(
        new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


def test_dropped_files_are_attached_and_other_files_refused(chat: Page, cluster: FakeCluster) -> None:
    chat.evaluate(DROP, ["notes.txt", "text/plain", list(b"hello")])
    expect(chat.get_by_role("alert")).to_contain_text("notes.txt is not an image, audio or video file")
    chat.evaluate(DROP, ["cat.png", "", list(sample_png())])  # no type: guessed from the extension
    expect(chat.get_by_role("button", name="Remove cat.png")).to_be_visible()
    with chat.expect_request("**/v1/chat/completions") as sent:
        send(chat, "And this?")
    answer(chat)
    url = sent.value.post_data_json["messages"][-1]["content"][1]["image_url"]["url"]
    assert url == "data:image/png;base64," + base64.b64encode(sample_png()).decode()
    assert len(cluster.llm.calls[-1].request.turns[-1].media) == 1
