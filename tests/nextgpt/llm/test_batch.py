"""Continuous batching (`BatchDecoder`): rows of different lengths that join, leave and take tokens
back decode what each would decode alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from nextgpt import tiny_profile as dims
from nextgpt.config import GenerationOptions
from nextgpt.llm import batch as batch_mod
from nextgpt.llm.batch import BatchDecoder, DecodeRequest
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import LLMOutput, MediaItem, Message


def prompt(lm: NextGPTLanguageModel, text: str, media: int = 1) -> torch.Tensor:
    torch.manual_seed(len(text))
    msgs = [Message("user", text, [MediaItem("image", b"", "image/png")] * media)]
    blocks = [[torch.randn(1, dims.LLM_HIDDEN) for _ in range(media)]]
    return lm.embed(build_prompt(msgs, blocks, "legacy")).embeds


def scripted(monkeypatch: pytest.MonkeyPatch, scripts: dict[int, list[int]]) -> None:
    """Each row samples its own token script, picked by its options' seed."""
    its: dict[int, Iterator[int]] = {}

    def fake_sample_rows(logits, options, generators) -> list[int]:  # noqa: ANN001
        return [next(its.setdefault(o.seed, iter(scripts[o.seed]))) for o in options]

    monkeypatch.setattr(batch_mod, "sample_rows", fake_sample_rows)


def test_rows_join_leave_and_take_back_as_alone(
    monkeypatch: pytest.MonkeyPatch, lm: NextGPTLanguageModel
) -> None:
    eos = lm.tokenizer.eos_token_id
    space, stop = (lm.tokenizer.convert_tokens_to_ids(t) for t in ("▁", "###"))
    img = list(lm.ids.spans["image"])
    scripts = {
        1: [300, space, stop, 302, eos],  # " ###" with the image still missing: the space is taken back
        2: [*range(310, 330), eos],  # long, in a longer prompt (the others are left-padded)
        3: [340, 341, eos],  # joins after three steps, leaves first
    }
    requests = {
        1: DecodeRequest(prompt(lm, "draw a cat"), GenerationOptions(max_new_tokens=30, seed=1), ("image",)),
        2: DecodeRequest(prompt(lm, "tell me a long story about foxes", 2), GenerationOptions(seed=2)),
        3: DecodeRequest(prompt(lm, "hi"), GenerationOptions(seed=3)),
    }
    scripted(monkeypatch, scripts)
    alone = {seed: lm.generate(r.prompt_embeds, r.options, force=r.force) for seed, r in requests.items()}
    assert alone[1].token_ids == [300, *img, 302] and alone[1].forced_modalities == ["image"]

    scripted(monkeypatch, scripts)
    decoder = BatchDecoder(lm)
    decoder.add(requests[1])
    decoder.add(requests[2])
    together: dict[int, LLMOutput] = {}
    steps = 0
    while len(decoder):
        for request, outcome in decoder.step():
            assert isinstance(outcome, LLMOutput)
            together[request.options.seed] = outcome
        steps += 1
        if steps == 3:
            decoder.add(requests[3])
    assert decoder.mask.shape == (0, 0)
    for seed, want in alone.items():
        got = together[seed]
        assert (got.token_ids, got.text, got.raw_text, got.finish_reason) == (
            want.token_ids, want.text, want.raw_text, want.finish_reason,
        )  # fmt: skip
        for g, w in zip(got.spans, want.spans, strict=True):
            torch.testing.assert_close(g.hidden, w.hidden, atol=1e-5, rtol=0)
    # the taken-back space is invisible to the image span's states: one full pass without it agrees
    reference = lm.hidden_states_for(requests[1].prompt_embeds, together[1].token_ids)
    torch.testing.assert_close(together[1].spans[0].hidden, reference[1:5], atol=1e-5, rtol=0)


def test_a_failing_row_leaves_the_others(monkeypatch: pytest.MonkeyPatch, lm: NextGPTLanguageModel) -> None:
    eos = lm.tokenizer.eos_token_id
    scripted(monkeypatch, {1: [300, 301, 302, eos], 2: [310, 311, 312, eos]})

    def cancel(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt  # stands for the engine's cancellation

    decoder = BatchDecoder(lm)
    decoder.add(DecodeRequest(prompt(lm, "a"), GenerationOptions(seed=1), on_step=cancel))
    decoder.add(DecodeRequest(prompt(lm, "bb"), GenerationOptions(seed=2)))
    outcomes = []
    while len(decoder):
        outcomes += [(r.options.seed, o) for r, o in decoder.step()]
    assert isinstance(outcomes[0][1], KeyboardInterrupt) and outcomes[0][0] == 1
    assert outcomes[1][0] == 2 and outcomes[1][1].token_ids == [310, 311, 312]


def test_batched_sampling_draws_what_each_row_draws_alone() -> None:
    from nextgpt.llm.decoding import make_generator, sample, sample_rows

    torch.manual_seed(0)
    logits = torch.randn(6, 1038) * 3
    options = [
        GenerationOptions(temperature=t, top_p=p, seed=s)
        for s, (t, p) in enumerate([(1.0, 0.01), (0, 1.0), (1.5, 1.0), (0.7, 0.9), (0, 0.5), (1.0, 0.3)])
    ]
    for _ in range(3):  # a few draws in a row: the generators advance alike
        alone_gens = [make_generator(o.seed) for o in options]
        batch_gens = [make_generator(o.seed) for o in options]
        for _ in range(4):
            alone = [sample(row, o, g) for row, o, g in zip(logits, options, alone_gens, strict=True)]
            assert sample_rows(logits, options, batch_gens) == alone
        logits = torch.randn(6, 1038) * 3
