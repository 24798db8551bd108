"""The decode loop gives the same bytes as before the decode-policy refactor (issue 16).

`decode_hashes.json` was written by this module (`python -m tests.nextgpt.llm.test_decode_hashes`) from
the loop as it stood before `nextgpt/llm/decoding.py` existed; every case hashes the token ids, both
texts and the raw bytes of each span's hidden states and token embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from nextgpt import tiny_profile as dims
from nextgpt.config import GenerationOptions
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import LLMOutput, MediaItem, Message

HASHES = Path(__file__).with_name("decode_hashes.json")
ALL = ("image", "video", "audio")
CASES: dict[str, tuple[GenerationOptions, tuple[str, ...]]] = {
    "greedy": (GenerationOptions(max_new_tokens=40, temperature=0), ()),
    "greedy_force_all": (GenerationOptions(max_new_tokens=60, temperature=0), ALL),
    "sampled_seed7": (GenerationOptions(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=7), ()),
    "wide_force_video_seed3": (
        GenerationOptions(max_new_tokens=80, temperature=1.5, top_p=1.0, seed=3),
        ("video",),
    ),
    "wide_force_image_audio_seed5": (
        GenerationOptions(max_new_tokens=50, temperature=1.5, top_p=1.0, seed=5),
        ("image", "audio"),
    ),
    "tight_budget_force_image": (GenerationOptions(max_new_tokens=10, temperature=0), ("image",)),
}


def prompt_of(lm: NextGPTLanguageModel) -> torch.Tensor:
    torch.manual_seed(0)
    msgs = [Message("user", "show me a picture of a red cat", [MediaItem("image", b"", "image/png")])]
    return lm.embed(build_prompt(msgs, [[torch.randn(1, dims.LLM_HIDDEN)]], "legacy")).embeds


def digest(out: LLMOutput, deltas: list[str]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps([out.token_ids, out.text, out.raw_text, out.finish_reason, out.forced_modalities]).encode()
    )
    h.update(json.dumps(deltas).encode())
    for span in out.spans:
        h.update(f"{span.modality}:{span.start}".encode())
        h.update(span.hidden.float().contiguous().numpy().tobytes())
        h.update(span.token_embeds.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_case(lm: NextGPTLanguageModel, name: str) -> str:
    options, force = CASES[name]
    deltas: list[str] = []
    out = lm.generate(prompt_of(lm), options, force=list(force), on_text=deltas.append)
    return digest(out, deltas)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_bytes_as_before_the_refactor(lm: NextGPTLanguageModel, name: str) -> None:
    assert run_case(lm, name) == json.loads(HASHES.read_text())[name]


if __name__ == "__main__":  # regenerate (only when a change of output is intended)
    import tempfile

    from nextgpt.config import LLMConfig
    from nextgpt.tiny.llama import build_tiny_llama

    base = build_tiny_llama(Path(tempfile.mkdtemp()) / "vicuna")
    torch.manual_seed(0)
    model = NextGPTLanguageModel.load(LLMConfig(base_dir=base, lora=None))
    HASHES.write_text(json.dumps({n: run_case(model, n) for n in sorted(CASES)}, indent=1) + "\n")
    print(HASHES.read_text())
