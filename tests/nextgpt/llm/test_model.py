"""NextGPTLanguageModel on the tiny random base: loading checks, embedding, the decode loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextgpt import tiny_profile as dims
from nextgpt.config import GenerationOptions, LLMConfig, LoRAConfig
from nextgpt.errors import CheckpointError, InvalidInput, ModelNotReady
from nextgpt.llm import batch as batch_mod
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import MediaItem, Message

GREEDY = GenerationOptions(max_new_tokens=40, temperature=0)
ALL = ["image", "video", "audio"]


def _prompt(lm: NextGPTLanguageModel, text: str = "show me a picture of a red cat") -> torch.Tensor:
    torch.manual_seed(0)
    msgs = [Message("user", text, [MediaItem("image", b"", "image/png")])]
    return lm.embed(build_prompt(msgs, [[torch.randn(1, dims.LLM_HIDDEN)]], "legacy")).embeds


def _script(monkeypatch: pytest.MonkeyPatch, tokens: list[int]) -> None:
    """Replace sampling with a fixed token script, to drive the loop into exact situations."""
    it: Iterator[int] = iter(tokens)
    monkeypatch.setattr(
        batch_mod, "sample_rows", lambda logits, options, generators: [next(it) for _ in options]
    )


def _lora(rank: int = dims.LORA_R, b_scale: float = 0.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    h = dims.LLM_HIDDEN
    out = {}
    for layer in range(dims.LLM_LAYERS):
        for proj in ("q", "k", "v", "o"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}_proj"
            out[f"{key}.lora_A.default.weight"] = torch.randn(rank, h, generator=gen) * 0.1
            out[f"{key}.lora_B.default.weight"] = torch.randn(h, rank, generator=gen) * b_scale
    return out


def _lora_cfg(base: Path) -> LLMConfig:
    return LLMConfig(base_dir=base, lora=LoRAConfig(r=dims.LORA_R, alpha=dims.LORA_ALPHA))


# ---------------------------------------------------------------- loading
def test_missing_base_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="prepare-vicuna"):
        NextGPTLanguageModel.load(LLMConfig(base_dir=tmp_path / "nope"))


def test_vocab_rows_copied(tiny_llama_dir: Path) -> None:
    rows = torch.randn(1038, dims.LLM_HIDDEN)
    lm = NextGPTLanguageModel.load(
        LLMConfig(base_dir=tiny_llama_dir, lora=None), embed_tokens=rows, lm_head=-rows
    )
    assert lm.vocab_size == 1038
    assert torch.equal(lm.model.get_input_embeddings().weight, rows)
    assert torch.equal(lm.model.get_output_embeddings().weight, -rows)


def test_wrong_vocab_rows_name_the_base(tiny_llama_dir: Path) -> None:
    # A Llama-2-like mistake: the checkpoint's base had 4 more tokens than ours.
    rows = torch.zeros(1042, dims.LLM_HIDDEN)
    with pytest.raises(CheckpointError) as info:
        NextGPTLanguageModel.load(LLMConfig(base_dir=tiny_llama_dir, lora=None), embed_tokens=rows)
    msg = str(info.value)
    assert "1042 token rows = a 1004-token base + 38" in msg
    assert f"base at {tiny_llama_dir} has 1000 tokens (-> 1038)" in msg
    assert "Vicuna-7B v0" in msg and "prepare-vicuna" in msg


def test_v15_rows_on_legacy_layout_hint(tiny_llama_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="signal_layout='v1.5'"):
        NextGPTLanguageModel.load(
            LLMConfig(base_dir=tiny_llama_dir, lora=None), lm_head=torch.zeros(1036, dims.LLM_HIDDEN)
        )


def test_wrong_hidden_size(tiny_llama_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="hidden size 64"):
        NextGPTLanguageModel.load(
            LLMConfig(base_dir=tiny_llama_dir, lora=None), embed_tokens=torch.zeros(1038, 80)
        )


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            lambda d: d.pop(next(iter(d))),
            "1 missing: base_model.model.model.layers.0.self_attn.q_proj.lora_A",
        ),
        (
            lambda d: d.__setitem__(
                "base_model.model.model.layers.9.mlp.lora_A.default.weight", torch.zeros(1)
            ),
            "1 unexpected: base_model.model.model.layers.9.mlp",
        ),
        (
            lambda d: d.__setitem__(
                "base_model.model.model.layers.1.self_attn.o_proj.lora_B.default.weight", torch.zeros(64, 4)
            ),
            "1 shape mismatch",
        ),
    ],
)
def test_lora_keys_accounted_for(tiny_llama_dir: Path, edit, needle: str) -> None:  # noqa: ANN001
    lora = _lora()
    edit(lora)
    with pytest.raises(CheckpointError, match="LoRA tensors do not fit") as info:
        NextGPTLanguageModel.load(_lora_cfg(tiny_llama_dir), lora=lora)
    assert needle in str(info.value)


def test_lora_b_changes_logits(tiny_llama_dir: Path, lm: NextGPTLanguageModel) -> None:
    prompt = _prompt(lm)
    base = lm.model(inputs_embeds=prompt[None]).logits
    zero = NextGPTLanguageModel.load(_lora_cfg(tiny_llama_dir), lora=_lora(b_scale=0.0))
    live = NextGPTLanguageModel.load(_lora_cfg(tiny_llama_dir), lora=_lora(b_scale=0.5))
    with torch.inference_mode():
        assert torch.allclose(zero.model(inputs_embeds=prompt[None]).logits, base, atol=1e-6)
        assert not torch.allclose(live.model(inputs_embeds=prompt[None]).logits, base, atol=1e-3)
    assert not live.model.training


# ---------------------------------------------------------------- embedding
def test_embed_no_extra_space_between_pieces(lm: NextGPTLanguageModel) -> None:
    whole = lm.embed(["### Human: a red cat\n### Assistant:"])
    split = lm.embed(["### Human: a red", " cat\n### Assistant:"])
    assert whole.num_tokens == split.num_tokens
    assert torch.equal(whole.embeds, split.embeds)
    bos = lm.token_embeds([lm.tokenizer.bos_token_id])
    assert torch.equal(whole.embeds[:1], bos)  # BOS once, at the very start


def test_embed_media_blocks(lm: NextGPTLanguageModel) -> None:
    block = torch.randn(3, dims.LLM_HIDDEN)
    out = lm.embed(["### Human: <Img>", block, "</Img> hi\n### Assistant:"])
    n_first = len(lm.encode("### Human: <Img>", first=True))
    assert out.num_media_tokens == 3
    assert torch.equal(out.embeds[n_first : n_first + 3], block)
    assert out.num_tokens == out.embeds.shape[0]
    with pytest.raises(InvalidInput, match="expected"):
        lm.embed(["x", torch.zeros(2, 7)])


# ---------------------------------------------------------------- generation
def test_greedy_is_deterministic(lm: NextGPTLanguageModel) -> None:
    prompt = _prompt(lm)
    a, b = lm.generate(prompt, GREEDY), lm.generate(prompt, GREEDY)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    assert a.prompt_tokens == prompt.shape[0]


def test_seeded_sampling_repeats(lm: NextGPTLanguageModel) -> None:
    prompt = _prompt(lm)
    opts = GenerationOptions(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    a, b = lm.generate(prompt, opts), lm.generate(prompt, opts)
    c = lm.generate(prompt, GenerationOptions(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_span_hidden_states_match_full_forward(lm: NextGPTLanguageModel) -> None:
    prompt = _prompt(lm)
    out = lm.generate(prompt, GenerationOptions(max_new_tokens=60, temperature=0), force=ALL)
    reference = lm.hidden_states_for(prompt, out.token_ids)  # (N, H), one pass, no cache
    assert len(out.spans) == 3
    for span in out.spans:
        n = len(span.token_ids)
        assert span.hidden.shape == (n, dims.LLM_HIDDEN)
        torch.testing.assert_close(span.hidden, reference[span.start : span.start + n], atol=1e-5, rtol=0)
        torch.testing.assert_close(span.token_embeds, lm.token_embeds(span.token_ids))
    # and hidden_states[-1] is after the final norm: it equals the base model's last_hidden_state
    full = torch.cat([prompt, lm.token_embeds(out.token_ids)])
    with torch.inference_mode():
        last = lm.model.model(inputs_embeds=full[None]).last_hidden_state[0, prompt.shape[0] :]
    torch.testing.assert_close(reference, last)


def test_forcing_all_modalities(lm: NextGPTLanguageModel) -> None:
    out = lm.generate(_prompt(lm), GenerationOptions(max_new_tokens=60, temperature=0), force=ALL)
    assert sorted(s.modality for s in out.spans) == sorted(ALL)  # each exactly once
    assert sorted(out.forced_modalities) == sorted(ALL)
    assert not [w for w in out.warnings if "partial" in w]
    assert len(out.token_ids) <= 60
    assert "[IMG0][IMG1][IMG2][IMG3]" in out.raw_text and "[AUD7]" in out.raw_text
    assert not any(t in out.text for t in ("[IMG", "[VID", "[AUD", "<Img>", "  "))
    assert out.text == out.text.strip()


def test_model_started_span_is_completed(monkeypatch: pytest.MonkeyPatch, lm: NextGPTLanguageModel) -> None:
    img = list(lm.ids.spans["image"])
    eos = lm.tokenizer.eos_token_id
    _script(monkeypatch, [300, img[0], 301, eos])
    prompt = _prompt(lm)
    out = lm.generate(prompt, GREEDY, force=["image"])
    assert out.token_ids == [300, *img, 301]
    torch.testing.assert_close(
        out.spans[0].hidden, lm.hidden_states_for(prompt, out.token_ids)[1:5], atol=1e-5, rtol=0
    )
    assert out.forced_modalities == [] and out.finish_reason == "stop" and not out.warnings
    # a stray later token of a requested modality also becomes a whole span
    _script(monkeypatch, [img[2], eos])
    assert lm.generate(_prompt(lm), GREEDY, force=["image"]).token_ids == img


def test_biased_head_starts_a_span(fresh_lm: NextGPTLanguageModel) -> None:
    lm = fresh_lm
    prompt = _prompt(lm)
    img0 = lm.ids.spans["image"][0]
    with torch.inference_mode():  # make [IMG0] the clear argmax after the prompt
        last = lm.model(inputs_embeds=prompt[None], output_hidden_states=True).hidden_states[-1][0, -1]
        lm.model.get_output_embeddings().weight[img0] = 100 * last / last.norm() ** 2
    out = lm.generate(prompt, GenerationOptions(max_new_tokens=20, temperature=0), force=["image"])
    assert out.token_ids[:4] == list(lm.ids.spans["image"])
    assert out.spans[0].start == 0 and not [w for w in out.warnings if "partial image" in w]


def test_a_stray_span_token_is_never_sampled(fresh_lm: NextGPTLanguageModel) -> None:
    """A span token out of place (here [IMG1], the model's clear favourite after the prompt) of a modality
    not requested would leave a partial span and raw tokens in the text: it is masked, so the model says
    what it would say next instead; a span it starts at [IMG0] may go on."""
    lm = fresh_lm
    prompt = _prompt(lm)
    img = list(lm.ids.spans["image"])
    options = GenerationOptions(max_new_tokens=12, temperature=0)
    with torch.inference_mode():
        last = lm.model(inputs_embeds=prompt[None], output_hidden_states=True).hidden_states[-1][0, -1]
        head = lm.model.get_output_embeddings().weight
        head[img[1]] = 100 * last / last.norm() ** 2
    out = lm.generate(prompt, options)
    assert out.token_ids[0] != img[1] and img[1] not in out.token_ids
    assert not [w for w in out.warnings if "partial" in w] and "[IMG" not in out.raw_text
    with torch.inference_mode():
        head[img[0]] = 50 * last / last.norm() ** 2  # the favourite once [IMG1] is masked; then [IMG1]
    assert lm.generate(prompt, options).token_ids[:2] == img[:2]


def test_eos_with_missing_span_inserts_it(monkeypatch: pytest.MonkeyPatch, lm: NextGPTLanguageModel) -> None:
    eos = lm.tokenizer.eos_token_id
    aud = list(lm.ids.spans["audio"])
    _script(monkeypatch, [300, eos, 301, eos])
    out = lm.generate(_prompt(lm), GREEDY, force=["audio"])
    assert out.token_ids == [300, *aud, 301]
    assert out.forced_modalities == ["audio"] and out.finish_reason == "stop"


def test_budget_respected(lm: NextGPTLanguageModel) -> None:
    prompt = _prompt(lm)
    out = lm.generate(prompt, GenerationOptions(max_new_tokens=7, temperature=0))
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    out = lm.generate(prompt, GenerationOptions(max_new_tokens=10, temperature=0), force=["image"])
    assert len(out.token_ids) <= 10 and [s.modality for s in out.spans] == ["image"]
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        lm.generate(prompt, GenerationOptions(max_new_tokens=10, temperature=0), force=["video"])


def test_stop_string_ends_and_is_stripped(monkeypatch: pytest.MonkeyPatch, lm: NextGPTLanguageModel) -> None:
    stop = lm.tokenizer.convert_tokens_to_ids("###")
    space = lm.tokenizer.convert_tokens_to_ids("▁")
    deltas: list[str] = []
    _script(monkeypatch, [300, 301, stop, 302])
    out = lm.generate(_prompt(lm), GREEDY, on_text=deltas.append)
    assert out.token_ids == [300, 301] and out.finish_reason == "stop"
    assert "#" not in out.raw_text and "".join(deltas) == out.text
    _script(monkeypatch, [300, space, stop])  # " ###": the space goes with it
    assert lm.generate(_prompt(lm), GREEDY).token_ids == [300]


def test_streamed_text_equals_text(lm: NextGPTLanguageModel) -> None:
    deltas: list[str] = []
    out = lm.generate(
        _prompt(lm), GenerationOptions(max_new_tokens=60, temperature=0), force=ALL, on_text=deltas.append
    )
    assert "".join(deltas) == out.text


@pytest.mark.parametrize("seed", range(12))
def test_streamed_text_equals_text_with_byte_pieces_and_spans(lm: NextGPTLanguageModel, seed: int) -> None:
    """Wide sampling on the random model emits byte-fallback pieces that form no valid UTF-8, spans in
    the middle of text and runs of spaces: the deltas must still join to exactly the final text."""
    deltas: list[str] = []
    options = GenerationOptions(max_new_tokens=80, temperature=1.5, top_p=1.0, seed=seed)
    out = lm.generate(_prompt(lm), options, force=["video"], on_text=deltas.append)
    assert "".join(deltas) == out.text
    assert out.text == out.text.strip() and all(deltas)


def test_context_limits(tiny_llama_dir: Path) -> None:
    lm = NextGPTLanguageModel.load(LLMConfig(base_dir=tiny_llama_dir, lora=None, max_context=24))
    prompt = _prompt(lm)
    out = lm.generate(prompt, GenerationOptions(max_new_tokens=40, temperature=0))
    assert len(out.token_ids) <= 24 - prompt.shape[0] and any("context overflow" in w for w in out.warnings)
    with pytest.raises(InvalidInput, match="max_context"):
        lm.generate(torch.cat([prompt, prompt]), GREEDY)


def test_v15_layout(tiny_llama_dir: Path) -> None:
    cfg = LLMConfig(base_dir=tiny_llama_dir, lora=None, signal_layout="v1.5", prompt_format="v1.5")
    lm = NextGPTLanguageModel.load(cfg)
    assert lm.vocab_size == 1036
    segs = build_prompt([Message("user", "draw a cat")], [[]], "v1.5")
    out = lm.generate(
        lm.embed(segs).embeds, GenerationOptions(max_new_tokens=20, temperature=0), force=["image"]
    )
    assert [s.modality for s in out.spans] == ["image"] and "<image_00>" in out.raw_text


def test_exports_for_vllm(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows = torch.randn(1038, dims.LLM_HIDDEN)
    lm = NextGPTLanguageModel.load(_lora_cfg(tiny_llama_dir), embed_tokens=rows, lora=_lora(b_scale=0.5))
    adapter = lm.export_peft_adapter(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file()
    saved = load_file(adapter / "adapter_model.safetensors")
    assert len(saved) == 4 * 2 * dims.LLM_LAYERS and all(".lora_" in k for k in saved)
    base = lm.export_merged_base(tmp_path / "base")
    reloaded = NextGPTLanguageModel.load(LLMConfig(base_dir=base, lora=None))
    assert reloaded.vocab_size == 1038 and reloaded.ids.spans == lm.ids.spans  # tokens already present
    assert torch.equal(reloaded.model.get_input_embeddings().weight, rows)
    with pytest.raises(CheckpointError, match="no LoRA"):
        reloaded.export_peft_adapter(tmp_path / "none")
