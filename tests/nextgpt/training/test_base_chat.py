"""Stage 0 of the train demo: chat-tuning the tiny base lowers its LM loss and writes a base that the
NExT-GPT language model loads through `llm.base_dir`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.training.base_chat import BaseChatConfig, chat_tune_base, dialogue_texts, lm_loss

RECORDS = [
    {"conversations": [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello!"}]},
    {
        "conversations": [
            {"from": "human", "value": "Show me a picture of a red circle."},
            {"from": "gpt", "value": "Sure! <image>", "caption": "a red circle", "output_modality": "image"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image."},
            {"from": "gpt", "value": "A star."},
        ]
    },
]


def test_dialogues_render_in_the_legacy_format_without_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(RECORDS))
    assert dialogue_texts(path) == [
        "### Human: Say hello.\n### Assistant: Hello!\n###",
        "### Human: Show me a picture of a red circle.\n### Assistant: Sure!\n###",
        "### Human: Describe this image.\n### Assistant: A star.\n###",
    ]


def test_chat_tuning_lowers_the_lm_loss_and_writes_a_loadable_base(tiny_profile, tmp_path: Path) -> None:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(RECORDS))
    texts = dialogue_texts(path)
    out = tmp_path / "base"
    result = chat_tune_base(tiny_profile.llm.base_dir, texts, out, BaseChatConfig(steps=30, batch_size=3))
    assert result["loss_after"] < 0.5 * result["loss_before"]
    assert result["last"] < result["first"]

    saved = LlamaForCausalLM.from_pretrained(out)
    assert abs(lm_loss(saved, AutoTokenizer.from_pretrained(out), texts) - result["loss_after"]) < 1e-4
    lm = NextGPTLanguageModel.load(dataclasses.replace(tiny_profile.llm, base_dir=out))
    rows = saved.get_input_embeddings().weight
    assert torch.equal(lm.model.get_input_embeddings().weight[: rows.shape[0]], rows)


def test_words_no_dialogue_holds_get_a_zero_embedding_and_the_rest_train(
    tiny_profile, tmp_path: Path
) -> None:
    """An untrained row would keep its random start and the first norm would scale it to full size: an
    unknown word would push a random direction into the replies (docs/training.md)."""
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(RECORDS))
    texts = dialogue_texts(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_profile.llm.base_dir)
    seen = sorted({t for text in texts for t in tokenizer(text)["input_ids"]})
    unknown = tokenizer(" create", add_special_tokens=False)["input_ids"]
    assert not set(unknown) & set(seen)
    before = LlamaForCausalLM.from_pretrained(tiny_profile.llm.base_dir).get_input_embeddings().weight
    out = tmp_path / "base"
    zeroing = BaseChatConfig(steps=5, batch_size=3, zero_unseen_embeddings=True)
    result = chat_tune_base(tiny_profile.llm.base_dir, texts, out, zeroing)
    after = LlamaForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert result["unseen_tokens_zeroed"] == after.shape[0] - len(seen)
    assert torch.count_nonzero(after[unknown]) == 0 and torch.count_nonzero(before[unknown]) > 0
    assert not torch.equal(after[seen], before[seen]) and torch.count_nonzero(after[seen], dim=1).all()

    kept = chat_tune_base(
        tiny_profile.llm.base_dir,
        texts,
        tmp_path / "kept",
        BaseChatConfig(steps=5, batch_size=3),
    )
    assert kept["unseen_tokens_zeroed"] == 0
    assert torch.equal(
        LlamaForCausalLM.from_pretrained(tmp_path / "kept").get_input_embeddings().weight[unknown],
        before[unknown],
    )
