"""The shapes world: deterministic, valid media, captions that say what the files show."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nextgpt.media.decode import read_audio, read_image, read_video
from nextgpt.training.data.synthetic import (
    DESCRIBE_PROMPTS,
    MARKER,
    NEUTRAL_SHOW_PROMPTS,
    REQUEST_FRAMES,
    SHOW_PROMPTS,
    SHOW_REPLIES,
    WORLD_VERSION,
    make_instructions,
    make_world,
    prompt_sentences,
    with_filler,
)
from nextgpt.training.data.world_media import BACKGROUNDS, COLOURS, WorldConfig
from nextgpt_serve.cli import app

SMALL = {"n_images": 16, "n_videos": 4, "n_audios": 8, "n_instructions": 28}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(root, WorldConfig(seed=3, **SMALL))
    return root


def load(root: Path, name: str) -> list[dict]:
    return json.loads((root / name).read_text())


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    make_world(tmp_path / "again", WorldConfig(seed=3, **SMALL))
    assert tree_digest(tmp_path / "again") == tree_digest(world)
    make_world(tmp_path / "other", WorldConfig(seed=4, **SMALL))
    other = tree_digest(tmp_path / "other")
    assert other["images/img_00000.png"] != tree_digest(world)["images/img_00000.png"]
    assert load(tmp_path / "other", "cc3m.json") != load(world, "cc3m.json")


def test_layout_and_counts(world):
    assert len(load(world, "cc3m.json")) == 16 and len(load(world, "webvid.json")) == 4
    assert len(load(world, "audiocaps.json")) == 8 and len(load(world, "instructions.json")) == 28
    assert all((world / "images" / r["image_name"]).is_file() for r in load(world, "cc3m.json"))
    assert all((world / "videos" / r["video_name"]).is_file() for r in load(world, "webvid.json"))
    assert all((world / "audios" / r["audio_name"]).is_file() for r in load(world, "audiocaps.json"))


def test_images_show_their_caption(world):
    for record in load(world, "cc3m.json"):
        _, colour, shape, _, _, background, _ = record["caption"].split()
        pixels = np.asarray(read_image((world / "images" / record["image_name"]).read_bytes()))
        assert (
            tuple(pixels[0, 0]) == BACKGROUNDS[background] or tuple(pixels[-1, -1]) == BACKGROUNDS[background]
        )
        shape_pixels = pixels[(pixels == COLOURS[colour]).all(axis=-1)]
        assert len(shape_pixels) > 20, record  # the shape is there, in its colour
        assert shape in {"circle", "square", "triangle", "star"}


def _centre(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame.astype(int).sum(axis=-1) < 600)  # not white (lossy H.264)
    return np.array([xs.mean(), ys.mean()])


def test_videos_move_as_captioned(world):
    """Along the captioned direction by `video_travel` of the free width (the largest radius, 0.2 of the
    side, leaves the least), and not across it."""
    cfg = WorldConfig()
    least = cfg.video_travel * (cfg.image_size * (1 - 2 * 0.2) - 2)
    steps = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
    for record in load(world, "webvid.json"):
        clip = read_video((world / "videos" / record["video_name"]).read_bytes())
        assert clip.num_frames == cfg.video_frames
        moved = _centre(clip.frames[-1]) - _centre(clip.frames[0])
        along = np.array(steps[record["caption"].split()[-1]])
        assert np.dot(moved, along) > 0.8 * least, (record, moved)
        assert abs(np.dot(moved, along[::-1])) < 2, (record, moved)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_sounds_match_their_caption(world):
    for record in load(world, "audiocaps.json"):
        wave, rate = read_audio((world / "audios" / record["audio_name"]).read_bytes())
        wave = wave[0]
        assert len(wave) == 2 * rate
        caption = record["caption"]
        if "low" in caption:
            assert _peak_hz(wave, rate) < 400
        elif "high" in caption:
            assert _peak_hz(wave, rate) > 800
        elif "sweep" in caption:
            first, last = _peak_hz(wave[: rate // 4], rate), _peak_hz(wave[-rate // 4 :], rate)
            assert (first < last) == ("rising" in caption), (caption, first, last)


def test_instructions_and_heldout(world):
    records = load(world, "instructions.json")
    gpt_outputs = [t for r in records for t in r["conversations"] if t["from"] == "gpt" and "caption" in t]
    assert gpt_outputs and all(f"<{t['output_modality']}>" in t["value"] for t in gpt_outputs)
    plain = [r for r in records if not any("<" in t["value"] for t in r["conversations"])]
    assert plain, "plain text Q&A with no placeholder"
    heldout = load(world, "heldout.json")
    held_captions = {h["caption"] for h in heldout if h["expect"] == "image"}
    assert held_captions and all(
        h["prompt"].startswith("Show me a picture of") for h in heldout if "caption" in h
    )
    seen = {r["caption"] for r in load(world, "cc3m.json")} | {t["caption"] for t in gpt_outputs}
    assert not held_captions & seen
    held_text = {h["prompt"] for h in heldout if h["expect"] == "text"}
    asked = {t["value"] for r in records for t in r["conversations"] if t["from"] == "human"}
    assert held_text and not held_text & asked
    text_replies = [r["conversations"][-1]["value"] for r in plain]
    openers = {reply.split()[0] for reply in SHOW_REPLIES}
    assert not any(reply.split()[0] in openers for reply in text_replies), "text replies reuse show openers"


def test_every_request_frame_asks_for_text_media_and_descriptions():
    """The wrapper of a request ("Can you ...?") must not tell which reply follows: each frame wraps
    plain text requests, requests for a medium and requests to describe one."""
    cfg = WorldConfig(seed=WORLD_VERSION, n_instructions=900)
    images = [{"caption": "a red circle on a white background", "image_name": "img.png"}]
    videos = [{"caption": "a red circle moving up", "video_name": "vid.mp4"}]
    audios = [{"caption": "a high tone", "audio_name": "aud.wav"}]
    records = make_instructions(cfg, images, videos, audios, [("blue", "circle", "white")])
    openers = {frame.split("{}")[0] for frame in REQUEST_FRAMES if not frame.startswith("{}")}
    kinds: dict[str, set[str]] = {opener: set() for opener in openers}
    for record in records:
        human, gpt = record["conversations"][:2]
        kind = "describe" if "\n" in human["value"] else "show" if "output_modality" in gpt else "text"
        for opener in openers:
            if human["value"].split("\n")[-1].startswith(opener[:1].upper() + opener[1:]):
                kinds[opener].add(kind)
    assert all(found == {"describe", "show", "text"} for found in kinds.values()), kinds


def test_stray_words_come_outside_the_caption_and_only_in_requests_about_media():
    """At `WorldConfig.filler_rate` 0.3, about as many requests for and questions about a medium hold one
    stray word (an "an" among them, for every medium), never inside the caption; plain text requests
    hold none."""
    cfg = WorldConfig(seed=WORLD_VERSION, n_instructions=1800, filler_rate=0.3)
    images = [{"caption": "a red circle on a white background", "image_name": "img.png"}]
    videos = [{"caption": "a red circle moving up", "video_name": "vid.mp4"}]
    audios = [{"caption": "a high tone", "audio_name": "aud.wav"}]
    records = make_instructions(cfg, images, videos, audios, [("blue", "circle", "white")])
    frames = {
        m: set(prompt_sentences(DESCRIBE_PROMPTS[m] + SHOW_PROMPTS[m] + NEUTRAL_SHOW_PROMPTS)) for m in MARKER
    }
    stray: dict[str, int] = {m: 0 for m in MARKER}
    with_an: set[str] = set()
    for record in (r for r in records if len(r["conversations"]) == 2):
        human, gpt = record["conversations"]
        text = human["value"].split("\n")[-1]
        modality = gpt.get("output_modality") or next(
            (m for m, k in MARKER.items() if k in human["value"]), None
        )
        if modality is None:
            continue
        caption = gpt.get("caption", "")
        assert caption in text
        if (text.replace(caption, "{}") if caption else text) not in frames[modality]:
            stray[modality] += 1
            words = text.replace(caption, "").rstrip(".?").split()
            with_an |= {modality} if "an" in words else set()
    media = sum(1 for r in records if len(r["conversations"]) == 2 and "<" in json.dumps(r["conversations"]))
    assert 0.2 < sum(stray.values()) / media < 0.4, (stray, media)
    assert with_an == set(MARKER)


def test_a_filler_never_lands_inside_what_it_must_keep():
    rng = random.Random(0)
    text, caption = "Can you draw a red circle on a white background?", "a red circle on a white background"
    filled = {with_filler(text, caption, rng, 0.3) for _ in range(400)}
    assert text in filled and len(filled) > 20
    assert all(caption in f and len(f.split()) == len(text.split()) + 1 for f in filled - {text})


def test_cli_make_synthetic(tmp_path):
    args = ["make-synthetic", str(tmp_path), "--seed", "1", "--n-images", "3", "--n-videos", "1"]
    result = CliRunner().invoke(app, args + ["--n-audios", "2", "--n-instructions", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "world.json").read_text())["counts"]["cc3m.json"] == 3
    bad = CliRunner().invoke(app, ["make-synthetic", str(tmp_path), "--n-images", "-1"])
    assert bad.exit_code == 2 and "n_images=-1" in bad.output


def test_without_stray_words_the_dialogues_are_version_10s():
    """`filler_rate` draws from its own stream: at 0 (the default) not one dialogue changes, and at 0.3
    only the human turns that got a stray word do."""
    args = (
        [{"caption": "a red circle on a white background", "image_name": "img.png"}],
        [{"caption": "a red circle moving up", "video_name": "vid.mp4"}],
        [{"caption": "a high tone", "audio_name": "aud.wav"}],
        [("blue", "circle", "white")],
    )
    plain = make_instructions(WorldConfig(seed=1, n_instructions=300), *args)
    stray = make_instructions(WorldConfig(seed=1, n_instructions=300, filler_rate=0.3), *args)
    changed = [(a, b) for a, b in zip(plain, stray, strict=True) if a != b]
    assert 0 < len(changed) < len(plain) // 2
    for a, b in changed:
        assert a["conversations"][1:] == b["conversations"][1:]
        assert len(b["conversations"][0]["value"].split()) == len(a["conversations"][0]["value"].split()) + 1
