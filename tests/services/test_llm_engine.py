"""The HF engine of the LLM service against the in-process pipeline: same tokens, same span states;
streaming, LoRA adapters by name, history with generated media, cancellation."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY
from safetensors.torch import load_file, save_file

from nextgpt.config import GenerationOptions
from nextgpt.errors import CheckpointError, ConfigError, InvalidInput
from nextgpt.events import TextDelta
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import LLMOutput, MediaItem, Message, SignalSpan
from services.llm.adapters import AdapterSet
from services.llm.engine import EngineRequest, QueueFull, prompt_messages
from services.llm.hf_engine import HFEngine

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0)


def make_alt_adapter(tiny_model, root: Path, name: str = "alt") -> Path:
    """The default adapter exported as a PEFT directory, with its B matrices changed."""
    path = tiny_model.llm.export_peft_adapter(root / name)
    weights = load_file(path / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(1)
    for key, value in weights.items():
        if ".lora_B." in key:
            weights[key] = value + torch.randn(value.shape, generator=gen)
    save_file(weights, path / "adapter_model.safetensors")
    return path


@pytest.fixture(scope="module")
def adapters_dir(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_alt_adapter(tiny_model, root)
    return root


@pytest.fixture(scope="module")
def engine(tiny_profile, adapters_dir) -> HFEngine:
    return HFEngine.load(tiny_profile, adapters_dir=adapters_dir)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


async def collect(engine, request: EngineRequest) -> tuple[list[str], LLMOutput]:
    """Text deltas and the result; every span of the result was streamed once, before it."""
    deltas, spans, final = [], [], None
    async for event in engine.generate(request):
        assert final is None, "an event after the result"
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, SignalSpan):
            spans.append(event)
        else:
            final = event
    assert final is not None
    streamed = sorted(spans, key=lambda s: s.start)
    assert [(s.modality, s.start) for s in streamed] == [(s.modality, s.start) for s in final.spans]
    assert all(torch.equal(a.hidden, b.hidden) for a, b in zip(streamed, final.spans, strict=True))
    return deltas, final


def reference(tiny_model, messages: list[Message], options: GenerationOptions) -> LLMOutput:
    """What the in-process pipeline's LLM step produces (NextGPT.generate steps 2-3)."""
    embeds = [tiny_model.embed_media(m.media) if m.role == "user" else [] for m in messages]
    segments = build_prompt(messages, embeds, tiny_model.profile.llm.prompt_format)
    prompt = tiny_model.llm.embed(segments)
    return tiny_model.llm.generate(prompt.embeds, options, force=options.requested_media)


def test_engine_equals_in_process_pipeline_and_streams(engine, tiny_model):
    image = MediaItem("image", png(), "image/png")
    messages = [Message("user", "what is this? draw another", [image])]
    options = GenerationOptions(
        max_new_tokens=40, temperature=0.8, top_p=0.9, seed=7, modalities=("text", "image")
    )
    expected = reference(tiny_model, messages, options)
    embedding = tiny_model.encoder.encode(image)  # (E,), as the encoder service returns it
    request = EngineRequest(
        [Message("user", messages[0].text)], [[embedding]], options, ("image",), request_id="r1"
    )
    deltas, out = asyncio.run(collect(engine, request))
    assert out.token_ids == expected.token_ids and out.raw_text == expected.raw_text
    assert out.text == expected.text and "".join(deltas) == out.text and len(deltas) > 1
    assert [s.modality for s in out.spans] == ["image"] and len(out.spans) == len(expected.spans)
    for got, want in zip(out.spans, expected.spans, strict=True):
        assert got.start == want.start and got.hidden.shape == (4, tiny_model.llm.hidden_size)
        torch.testing.assert_close(got.hidden, want.hidden, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.token_embeds, want.token_embeds, rtol=0, atol=0)
    assert out.prompt_tokens == expected.prompt_tokens and out.forced_modalities == expected.forced_modalities


def test_held_text_crosses_threads_once_per_interval_and_never_lags_a_span(
    engine, tiny_profile, tiny_model, monkeypatch
):
    """With a text interval longer than the whole reply, the worker hands over the first delta at once
    and the rest only with the span or the result, in order: same text, same span, a few hand-overs where
    there were dozens (each one a wake-up of the event loop)."""
    import services.llm.hf_engine as hf_engine

    handed: list[int] = []  # items per hand-over
    hand_over = hf_engine._hand_over
    monkeypatch.setattr(hf_engine, "_hand_over", lambda items: (handed.append(len(items)), hand_over(items)))
    options = GenerationOptions(max_new_tokens=40, temperature=0.8, seed=7, modalities=("text", "image"))
    messages = [Message("user", "draw another")]
    expected = reference(tiny_model, messages, options)

    def text_before_span(events: list[object]) -> str:
        first_span = next(i for i, e in enumerate(events) if isinstance(e, SignalSpan))
        return "".join(e.text for e in events[:first_span] if isinstance(e, TextDelta))

    async def run(interval_s: float | None) -> list[object]:
        request = EngineRequest(messages, [[]], options, ("image",))
        if interval_s is None:  # the module's engine: every step handed over
            return [event async for event in engine.generate(request)]
        held = HFEngine.load(tiny_profile, text_interval_s=interval_s)
        try:
            return [event async for event in held.generate(request)]
        finally:
            await held.close()

    every_step = asyncio.run(run(None))
    handed.clear()
    events = asyncio.run(run(3600.0))
    out = events[-1]
    assert isinstance(out, LLMOutput) and out.token_ids == expected.token_ids
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(texts) == out.text and 1 <= len(texts) <= 3
    assert sum(isinstance(e, SignalSpan) for e in events) == len(out.spans) == 1
    assert text_before_span(events) == text_before_span(every_step)  # held text went ahead of the span
    assert len(handed) <= 3  # the first delta; the held text with the span; the rest with the result


def test_history_restores_signal_tokens_of_generated_media(engine, tiny_model):
    history = [Message("user", "draw a cat"), Message("assistant", "here is a cat"), Message("user", "again")]
    request = EngineRequest(history, [[], [], []], GREEDY, generated=[[], ["image", "image"], []])
    restored = prompt_messages(request, engine.layout)
    span = "[IMG0][IMG1][IMG2][IMG3]"
    assert restored[1].text == f"here is a cat {span} {span}"
    # Tokens already in the text are not added again; only the missing second image is.
    request.messages[1] = Message("assistant", f"here {span} is a cat")
    assert prompt_messages(request, engine.layout)[1].text == f"here {span} is a cat {span}"
    history[1] = Message("assistant", f"here is a cat {span} {span}")
    expected = reference(tiny_model, history, GREEDY)
    request.messages[1] = Message("assistant", "here is a cat")
    _, out = asyncio.run(collect(engine, request))
    assert out.token_ids == expected.token_ids


def test_adapter_by_name_changes_the_reply(engine, tiny_model):
    assert engine.adapters() == ["default", "alt"]
    messages = [Message("user", "tell me about the sea")]
    expected = reference(tiny_model, messages, GREEDY)

    async def run(adapter):
        return (await collect(engine, EngineRequest(messages, [[]], GREEDY, adapter=adapter)))[1]

    alt = asyncio.run(run("alt"))
    default = asyncio.run(run(None))  # switching back restores the checkpoint's LoRA exactly
    assert default.token_ids == expected.token_ids == asyncio.run(run("default")).token_ids
    assert alt.token_ids != default.token_ids
    with pytest.raises(InvalidInput, match=r"unknown LoRA adapter 'nope'; available: default, alt"):
        asyncio.run(run("nope"))


def test_bad_adapters_fail_at_start_naming_the_adapter(engine, adapters_dir, tmp_path):
    good = adapters_dir / "alt"
    model = engine.lm.model

    def broken(name: str, edit) -> Path:
        root = tmp_path / name
        shutil.copytree(good, root / name)
        edit(root / name)
        return root

    def rank4(path: Path) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))

    def drop_tensor(path: Path) -> None:
        weights = load_file(path / "adapter_model.safetensors")
        del weights[next(k for k in weights if "layers.1.self_attn.v_proj.lora_B" in k)]
        save_file(weights, path / "adapter_model.safetensors")

    def bad_target(path: Path) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["qq_proj"]}))

    cases = [
        ("rank", rank4, r"'rank'.*has shape \[8, 64\], expected \[4, 64\] \(r=4\)"),
        (
            "missing",
            drop_tensor,
            r"'missing'.*1 LoRA tensor\(s\) missing: .*layers.1.self_attn.v_proj.lora_B",
        ),
        ("target", bad_target, r"'target'.*\['qq_proj'\] name no linear layer"),
        ("empty", lambda p: (p / "adapter_model.safetensors").unlink(), r"'empty'.*no adapter_model"),
    ]
    for name, edit, message in cases:
        with pytest.raises(CheckpointError, match=message):
            AdapterSet.load(model, broken(name, edit))
    clash = tmp_path / "clash"
    shutil.copytree(good, clash / "default")
    with pytest.raises(ConfigError, match="named 'default'"):
        AdapterSet.load(model, clash)
    assert engine._adapters.active in engine.adapters()  # the failed loads touched nothing in use


def generated_tokens() -> float:
    return REGISTRY.get_sample_value("nextgpt_llm_generated_tokens_total") or 0.0


def test_closing_the_stream_stops_decoding(engine):
    # Greedy on the tiny model never stops by itself for this prompt: it runs to max_new_tokens.
    options = GenerationOptions(max_new_tokens=1500, temperature=0)
    request = EngineRequest([Message("user", "hello")], [[]], options)

    async def first_delta_then_close() -> None:
        stream = engine.generate(request)
        assert isinstance(await anext(stream), TextDelta)
        await stream.aclose()  # returns once the worker has stopped

    async def cancel_task() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(request):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 30)
        task.cancel()  # what gRPC does when the client cancels or the deadline passes
        with pytest.raises(asyncio.CancelledError):
            await task

    for scenario in (first_delta_then_close, cancel_task):
        before = generated_tokens()
        asyncio.run(scenario())
        assert generated_tokens() - before < 300, scenario.__name__
    # The engine is free again and serves the next request in full.
    _, out = asyncio.run(collect(engine, EngineRequest([Message("user", "hello")], [[]], GREEDY)))
    assert len(out.token_ids) == 24 and out.finish_reason == "length"


def test_requests_queue_fifo(engine):
    async def main() -> list[list[int]]:
        requests = [
            EngineRequest([Message("user", f"prompt {i}")], [[]], GREEDY, adapter="alt" if i % 2 else None)
            for i in range(4)
        ]
        outs = await asyncio.gather(*(collect(engine, r) for r in requests))
        return [o.token_ids for _, o in outs]

    concurrent = asyncio.run(main())
    for i, ids in enumerate(concurrent):
        request = EngineRequest(
            [Message("user", f"prompt {i}")], [[]], GREEDY, adapter="alt" if i % 2 else None
        )
        assert asyncio.run(collect(engine, request))[1].token_ids == ids
    assert REGISTRY.get_sample_value("nextgpt_llm_queue_depth") == 0


def test_concurrent_requests_decode_in_one_batch(engine):
    def steps() -> tuple[float, float]:
        total = REGISTRY.get_sample_value("nextgpt_llm_batch_size_count") or 0.0
        alone = REGISTRY.get_sample_value("nextgpt_llm_batch_size_bucket", {"le": "1.0"}) or 0.0
        return total, total - alone

    requests = [
        EngineRequest([Message("user", f"tell me about the number {i}" + " please" * i)], [[]], GREEDY)
        for i in range(6)
    ]

    async def together() -> list[LLMOutput]:
        return [out for _, out in await asyncio.gather(*(collect(engine, r) for r in requests))]

    before = steps()
    outs = asyncio.run(together())
    after = steps()
    assert after[1] - before[1] > 0  # some steps decoded several requests at once
    assert after[0] - before[0] < 6 * 24  # fewer steps than one request at a time
    for request, out in zip(requests, outs, strict=True):
        alone = asyncio.run(collect(engine, request))[1]
        assert (out.token_ids, out.text) == (alone.token_ids, alone.text)


def test_full_queue_is_unavailable(engine):
    long = EngineRequest(
        [Message("user", "hello")], [[]], GenerationOptions(max_new_tokens=1500, temperature=0)
    )

    async def main() -> None:
        running, queued = engine.generate(long), engine.generate(long)
        await anext(running)  # the worker is busy with the first
        waiting = asyncio.create_task(anext(queued))
        await asyncio.wait_for(poll_queue_depth(1), 10)
        with pytest.raises(QueueFull, match=r"queue is full \(1 waiting\)"):
            await anext(engine.generate(long))
        waiting.cancel()
        await running.aclose()

    engine.max_queue, engine.max_num_seqs = 1, 1  # a batch of one: the second request has to wait
    try:
        asyncio.run(main())
    finally:
        engine.max_queue, engine.max_num_seqs = 64, 64


async def poll_queue_depth(depth: int) -> None:
    while REGISTRY.get_sample_value("nextgpt_llm_queue_depth") != depth:
        await asyncio.sleep(0.005)
