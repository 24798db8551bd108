"""Prompt formats, single- and multi-turn, with media blocks."""

from __future__ import annotations

import pytest
import torch

from nextgpt.errors import InvalidInput
from nextgpt.llm.prompt import VICUNA_V1_SYSTEM, build_prompt, stop_strings
from nextgpt.types import MediaItem, Message


def _media(n: int) -> list[MediaItem]:
    return [MediaItem("image", b"x", "image/png") for _ in range(n)]


def test_legacy_single_turn_with_media() -> None:
    block = torch.zeros(1, 8)
    segs = build_prompt([Message("user", "what is this?", _media(1))], [[block]], "legacy")
    assert segs[0] == "### Human: <Img>" and segs[1] is block
    assert segs[2] == "</Img> what is this?\n### Assistant:"


def test_legacy_several_media_in_order() -> None:
    a, b = torch.zeros(1, 8), torch.ones(1, 8)
    segs = build_prompt([Message("user", "compare", _media(2))], [[a, b]], "legacy")
    assert segs[0] == "### Human: <Img>" and segs[1] is a
    assert segs[2] == "</Img><Img>" and segs[3] is b
    assert segs[4] == "</Img> compare\n### Assistant:"


def test_legacy_text_only_and_multi_turn() -> None:
    msgs = [
        Message("user", "hi"),
        Message("assistant", "a cat [IMG0][IMG1][IMG2][IMG3]", _media(1)),
        Message("user", "and a dog?"),
    ]
    segs = build_prompt(msgs, [[], [torch.zeros(1, 8)], []], "legacy")
    assert segs == [
        "### Human: hi\n### Assistant: a cat [IMG0][IMG1][IMG2][IMG3]\n### Human: and a dog?\n### Assistant:"
    ]
    assert stop_strings("legacy") == ["###"]


def test_legacy_media_in_a_later_turn() -> None:
    block = torch.zeros(1, 8)
    msgs = [Message("user", "hi"), Message("assistant", "hello"), Message("user", "this?", _media(1))]
    segs = build_prompt(msgs, [[], [], [block]], "legacy")
    assert segs[0] == "### Human: hi\n### Assistant: hello\n### Human: <Img>"
    assert segs[1] is block and segs[2] == "</Img> this?\n### Assistant:"


def test_v15_format() -> None:
    block = torch.zeros(8, 8)  # group projector: 8 tokens per medium
    msgs = [
        Message("user", "hi"),
        Message("assistant", "hello <image_00>"),
        Message("user", "what is it?", _media(1)),
    ]
    segs = build_prompt(msgs, [[], [], [block]], "v1.5")
    assert segs[0] == VICUNA_V1_SYSTEM + " USER: hi ASSISTANT: hello <image_00></s> USER: "
    assert segs[1] is block and segs[2] == "\nwhat is it? ASSISTANT:"
    assert stop_strings("v1.5") == []


def test_errors() -> None:
    with pytest.raises(InvalidInput, match="end with a user message"):
        build_prompt([Message("assistant", "x")], [[]], "legacy")
    with pytest.raises(InvalidInput, match="1 media item"):
        build_prompt([Message("user", "x", _media(1))], [[]], "legacy")
    with pytest.raises(InvalidInput, match="prompt format"):
        build_prompt([Message("user", "x")], [[]], "chatml")
