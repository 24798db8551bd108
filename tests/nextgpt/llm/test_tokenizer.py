"""The tiny base tokenizer: a real Llama-style SentencePiece BPE vocabulary, built deterministically."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer

from nextgpt import tiny_profile as dims
from nextgpt.llm.signal_tokens import LEGACY, V15, add_signal_tokens
from nextgpt.tiny.llama import build_tiny_llama


def test_base_vocab_and_special_tokens(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert len(tok) == dims.LLM_BASE_VOCAB == 1000
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("### Human: describe this picture\n### Assistant:")["input_ids"]
    assert ids[0] == 1
    stop = tok.convert_tokens_to_ids("###")
    assert ids.count(stop) == 2  # `###` is one token, like id 835 in LLaMA
    assert tok.decode(ids, skip_special_tokens=True) == "### Human: describe this picture\n### Assistant:"


def test_byte_fallback_round_trip(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = "Zebra wörld 你好 42"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_legacy_signal_tokens_are_consecutive(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = add_signal_tokens(tok, LEGACY)
    assert len(tok) == 1038
    assert ids.wrapper == (1000, 1001)
    assert ids.spans["image"] == tuple(range(1002, 1006))
    assert ids.spans["video"] == tuple(range(1006, 1030))
    assert ids.spans["audio"] == tuple(range(1030, 1038))
    assert tok.convert_ids_to_tokens(list(range(1000, 1038))) == LEGACY.all_tokens
    assert tok.convert_ids_to_tokens([1000, 1001, 1002, 1037]) == ["<Img>", "</Img>", "[IMG0]", "[AUD7]"]
    assert add_signal_tokens(tok, LEGACY) == ids  # already present is fine
    assert tok("[IMG0][IMG1]", add_special_tokens=False)["input_ids"] == [1002, 1003]


def test_v15_layout_gives_36(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = add_signal_tokens(tok, V15)
    assert len(tok) == 1036 and ids.wrapper is None
    assert tok.convert_ids_to_tokens([1000, 1003, 1004, 1035]) == [
        "<image_00>",
        "<image_03>",
        "<video_00>",
        "<audio_07>",
    ]


def test_build_is_deterministic(tiny_llama_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_llama(tmp_path / "again")
    names = sorted(p.name for p in tiny_llama_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(names)
    for name in names:
        a = hashlib.sha256((tiny_llama_dir / name).read_bytes()).hexdigest()
        b = hashlib.sha256((again / name).read_bytes()).hexdigest()
        assert a == b, name
