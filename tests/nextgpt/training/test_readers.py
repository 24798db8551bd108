"""Readers of the community formats: records into Turns with input / output refs, bad media counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.training.data.readers import check_media, output_captions, read_caption_pairs, read_instructions
from nextgpt.training.data.types import MediaRef, OutputRef

IMG_SPAN = "[IMG0][IMG1][IMG2][IMG3]"


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A data dir with good files in the community subfolders, plus an empty and a garbage file."""
    (tmp_path / "images").mkdir()
    (tmp_path / "videos").mkdir()
    (tmp_path / "audios").mkdir()
    png = encode_png(np.full((8, 8, 3), 200, np.uint8))
    (tmp_path / "images" / "a.png").write_bytes(png)
    (tmp_path / "images" / "b.png").write_bytes(png)
    (tmp_path / "images" / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "images" / "garbage.png").write_bytes(b"not an image at all")
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    (tmp_path / "videos" / "v.mp4").write_bytes(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=2))
    (tmp_path / "videos" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    (tmp_path / "audios" / "s.wav").write_bytes(encode_wav(np.zeros(1600, np.float32)))
    return tmp_path


def write(path: Path, records: list, lines: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    path.write_text(text)
    return path


def test_check_media_reasons(media):
    assert check_media(media / "images" / "a.png", "image") is None
    assert check_media(media / "videos" / "v.mp4", "video") is None
    assert check_media(media / "audios" / "s.wav", "audio") is None
    assert check_media(media / "images" / "nope.png", "image") == "missing media file"
    for name in ("truncated.png", "garbage.png", "empty.png"):
        assert check_media(media / "images" / name, "image") == "unreadable media", name
    assert check_media(media / "videos" / "bad.mp4", "video") == "unreadable media"
    assert check_media(media / "audios" / "s.wav", "video") == "unreadable media"  # a WAV is no video
    assert check_media(media / "images" / "a.png", "image", verify="decode") is None


@pytest.mark.parametrize("lines", [False, True])
def test_caption_pairs_json_and_json_lines(media, lines):
    records = [
        {"caption": "a grey square", "image_name": "a.png"},
        {"caption": ["first", "second"], "image_name": "b.png"},
        {"caption": "gone", "image_name": "missing.png"},
        {"caption": "broken", "image_name": "garbage.png"},
        {"caption": "", "image_name": "a.png"},
        {"image_name": "a.png"},
        ["not", "an", "object"],
    ]
    path = write(media / ("cc3m.jsonl" if lines else "cc3m.json"), records, lines)
    if lines:
        path.write_text(path.read_text() + "\n{broken json\n")
    pairs, report = read_caption_pairs(path, media / "images", "image")
    assert [(p.caption, p.media_path.name) for p in pairs] == [
        ("a grey square", "a.png"),
        ("first", "b.png"),
        ("second", "b.png"),
    ]
    assert report.read == 2
    bad = 4 if lines else 3
    assert report.reasons == {"missing media file": 1, "unreadable media": 1, "bad record": bad}
    assert report.skipped == 2 + bad


def test_caption_pairs_infer_modality_and_find_subfolders(media):
    path = write(
        media / "mixed.json",
        [{"caption": "hum", "audio_name": "s.wav"}, {"caption": "c", "video_name": "v.mp4"}],
    )
    pairs, report = read_caption_pairs(path)  # media dir: the JSON's folder, then audios/ and videos/
    assert [(p.modality, p.media_path) for p in pairs] == [
        ("audio", media / "audios" / "s.wav"),
        ("video", media / "videos" / "v.mp4"),
    ]
    assert report.skipped == 0


def test_t2x_output_turns(media):
    records = [
        {  # T-T+X: caption on the gpt turn, listed again at record level
            "image_captions": ["a red circle"],
            "conversations": [
                {"from": "human", "value": "Show me a picture of a red circle."},
                {
                    "from": "gpt",
                    "value": "Here it is: <image>",
                    "caption": "a red circle",
                    "output_modality": "image",
                },
            ],
        },
        {  # cc3m_generation.json: only the record-level caption string
            "output_image": "x.jpg",
            "image_captions": "students in a library",
            "conversations": [
                {"from": "human", "value": "draw students"},
                {"from": "gpt", "value": "Sure. <Image>"},
            ],
        },
        {  # T-T+X construction output: no placeholder, image_name names the *output*
            "image_name": "t2x0001.wav",
            "output_modality": "audio",
            "conversation": [
                {"from": "human", "value": "I need a dog barking.", "input_modality": "text"},
                {
                    "from": "gpt",
                    "value": "Here you go.",
                    "caption": "a dog barks",
                    "output_modality": "audio",
                },
            ],
        },
        {  # our explicit field, two outputs in one turn
            "conversations": [
                {"from": "human", "value": "A picture and a sound, please."},
                {
                    "from": "gpt",
                    "value": "<image> and <audio>",
                    "outputs": [
                        {"modality": "image", "caption": "a cat"},
                        {"modality": "audio", "caption": "a meow"},
                    ],
                },
            ]
        },
    ]
    conversations, report = read_instructions(write(media / "t2x.json", records), media)
    assert report.read == 4 and report.skipped == 0
    first = conversations[0]
    assert [t.role for t in first.turns] == ["user", "assistant"]
    assert first.turns[0].inputs == [] and first.turns[0].outputs == []
    assert first.turns[1].text == f"Here it is: {IMG_SPAN}"
    assert first.turns[1].outputs == [OutputRef("image", "a red circle")]
    assert conversations[1].turns[1].text == f"Sure. {IMG_SPAN}"
    assert conversations[1].turns[1].outputs == [OutputRef("image", "students in a library")]
    third = conversations[2]
    assert third.turns[0].inputs == [] and "<audio>" not in third.turns[0].text
    assert third.turns[1].text == "Here you go. [AUD0][AUD1][AUD2][AUD3][AUD4][AUD5][AUD6][AUD7]"
    assert third.turns[1].outputs == [OutputRef("audio", "a dog barks")]
    fourth = conversations[3].turns[1]
    assert fourth.text.startswith(IMG_SPAN + " and [AUD0]")
    assert fourth.outputs == [OutputRef("image", "a cat"), OutputRef("audio", "a meow")]
    assert output_captions(conversations) == {
        "image": ["a red circle", "students in a library", "a cat"],
        "video": [],
        "audio": ["a dog barks", "a meow"],
    }


def test_mosit_multi_turn_inputs_and_outputs(media):
    record = {
        "image_list": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<Image>\nWhat is this? And this <image>?"},
            {"from": "gpt", "value": "Two grey squares."},
            {"from": "human", "value": "Here is a clip: <video>", "video_list": ["v.mp4"]},
            {
                "from": "gpt",
                "value": "Nice. Here is a drawing <image>",
                "caption": "a drawing",
                "output_modality": "image",
            },
        ],
    }
    (conversation,), report = read_instructions(write(media / "mosit.json", [record]), media)
    assert report.skipped == 0
    user1, gpt1, user2, gpt2 = conversation.turns
    assert user1.text == "<image>\nWhat is this? And this <image>?"
    assert user1.inputs == [
        MediaRef("image", media / "images" / "a.png"),
        MediaRef("image", media / "images" / "b.png"),
    ]
    assert gpt1.outputs == [] and gpt1.text == "Two grey squares."
    assert user2.inputs == [MediaRef("video", media / "videos" / "v.mp4")]
    assert gpt2.text == f"Nice. Here is a drawing {IMG_SPAN}" and gpt2.outputs == [
        OutputRef("image", "a drawing")
    ]
    assert conversation.source == "mosit.json#0"


def test_llava_and_alpaca(media):
    records = [
        {
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour?"},
                {"from": "gpt", "value": "Grey."},
            ],
        },
        {
            "image": "b.png",
            "conversations": [{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Grey."}],
        },
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "", "output": "no instruction"},
    ]
    conversations, report = read_instructions(write(media / "llava.jsonl", records, lines=True), media)
    assert report.read == 4 and report.reasons == {"bad record": 1}
    with_marker, without_marker, alpaca, alpaca_plain = conversations
    assert with_marker.turns[0].inputs == [MediaRef("image", media / "images" / "a.png")]
    assert without_marker.turns[0].text == "<image>\nWhat colour?"  # LLaVA: the image goes first
    assert without_marker.turns[0].inputs == [MediaRef("image", media / "images" / "b.png")]
    assert [(t.role, t.text) for t in alpaca.turns] == [
        ("user", "Add the numbers.\n\n2 and 3"),
        ("assistant", "5"),
    ]
    assert alpaca_plain.turns[0].text == "Say hi."


def test_bad_records_are_counted_never_raised(media):
    human_img = {"from": "human", "value": "<image> what?"}
    reply = {"from": "gpt", "value": "ok"}
    records = [
        {"image": "missing.png", "conversations": [human_img, reply]},
        {"image": "garbage.png", "conversations": [human_img, reply]},
        {"image": "truncated.png", "conversations": [human_img, reply]},
        {"conversations": [human_img, reply]},  # placeholder without a file
        {
            "conversations": [{"from": "human", "value": "draw"}, {"from": "gpt", "value": "<image>"}]
        },  # no caption
        {"conversations": [{"from": "human", "value": "only a question"}]},
        {"conversations": [{"from": "robot", "value": "?"}, reply]},
        {"conversations": "not a list"},
        42,
        {"image": "a.png", "conversations": [human_img, reply]},
    ]
    conversations, report = read_instructions(write(media / "bad.json", records), media)
    assert len(conversations) == 1 and report.read == 1
    assert report.reasons == {
        "missing media file": 1,
        "unreadable media": 2,
        "input placeholder without a file": 1,
        "output without a caption": 1,
        "bad record": 4,
    }
    assert report.skipped == 9
    assert "skipped 9" in report.summary()


def test_v15_layout_spans(media):
    record = {
        "conversations": [
            {"from": "human", "value": "x"},
            {"from": "gpt", "value": "<image>", "caption": "c"},
        ]
    }
    (conversation,), _ = read_instructions(write(media / "v15.json", [record]), media, layout="v1.5")
    assert conversation.turns[1].text == "<image_00><image_01><image_02><image_03>"


def test_unparseable_file_raises_naming_it(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_instructions(path)
