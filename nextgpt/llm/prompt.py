"""Prompt formats: a conversation becomes text pieces and embedding blocks.

Input media do not go through the tokenizer: each is a block of projected embeddings (n_tokens, H)
spliced between text pieces (`NextGPTLanguageModel.embed`). Assistant-turn media were *outputs*; the
assistant's history text already holds their signal tokens, so they are not embedded again.

legacy (released checkpoint):
    ### Human: <Img>[m1]</Img><Img>[m2]</Img> {text}\n### Assistant: {reply}\n### Human: ...\n### Assistant:
    stop on `###`.
v1.5 (Vicuna v1):
    {system} USER: [m1][m2]\n{text} ASSISTANT: {reply}</s> USER: ... ASSISTANT:
"""

from __future__ import annotations

import logging

import torch

from nextgpt.errors import InvalidInput
from nextgpt.types import Message

logger = logging.getLogger(__name__)

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LEGACY_STOP = "###"
IMG_OPEN, IMG_CLOSE = "<Img>", "</Img>"
FORMATS = ("legacy", "v1.5")

Segment = str | torch.Tensor


def stop_strings(fmt: str) -> list[str]:
    """Strings that end a reply besides EOS (stripped from it)."""
    _check_format(fmt)
    return [LEGACY_STOP] if fmt == "legacy" else []


def build_prompt(messages: list[Message], media_embeds: list[list[torch.Tensor]], fmt: str) -> list[Segment]:
    """Turn a conversation (ending with the user's request) into text pieces and media blocks.

    `media_embeds[i]` holds the projected embeddings of `messages[i].media`, one (n_tokens, H) block per
    item, in order (entries of assistant turns are ignored). The result ends with the assistant prefix so
    generation continues the reply. Adjacent text pieces are merged.
    """
    _check_format(fmt)
    _check_messages(messages, media_embeds)
    out: list[Segment] = []
    if fmt == "legacy":
        for i, msg in enumerate(messages):
            if msg.role == "user":
                out.append("### Human: " if not out else " Human: ")
                for block in media_embeds[i]:
                    out += [IMG_OPEN, block, IMG_CLOSE]
                if msg.text:
                    out.append((" " if media_embeds[i] else "") + msg.text)
                out.append("\n### Assistant:")
            else:
                out.append(f" {msg.text}\n###" if msg.text else "\n###")
    else:
        out.append(VICUNA_V1_SYSTEM)
        for i, msg in enumerate(messages):
            if msg.role == "user":
                out.append(" USER: ")
                out += list(media_embeds[i])
                if msg.text:
                    out.append(("\n" if media_embeds[i] else "") + msg.text)
                out.append(" ASSISTANT:")
            else:
                out.append(f" {msg.text}</s>" if msg.text else "</s>")
    return _merge_text(out)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown prompt format {fmt!r}; use one of {list(FORMATS)}")


def _check_messages(messages: list[Message], media_embeds: list[list[torch.Tensor]]) -> None:
    if not messages or messages[-1].role != "user":
        raise InvalidInput("the conversation must end with a user message (the request to answer)")
    if len(media_embeds) != len(messages):
        raise InvalidInput(
            f"media_embeds has {len(media_embeds)} entries for {len(messages)} messages; give one list "
            "per message (empty for messages without media)"
        )
    for i, (msg, blocks) in enumerate(zip(messages, media_embeds, strict=True)):
        if msg.role != "user":
            continue
        if len(blocks) != len(msg.media):
            raise InvalidInput(
                f"message {i} has {len(msg.media)} media item(s) but {len(blocks)} embedding block(s)"
            )
        for j, block in enumerate(blocks):
            if block.dim() != 2:
                raise InvalidInput(
                    f"message {i} media {j}: embeddings must be (n_tokens, H), got {tuple(block.shape)}"
                )


def _merge_text(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, str):
            if not seg:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + seg
                continue
        out.append(seg)
    return out
