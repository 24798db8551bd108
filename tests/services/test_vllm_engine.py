"""The vLLM engine against the HF engine on the tiny profile: identical greedy tokens from token ids and from
prompt embeddings, with and without a LoRA adapter, signal-span hidden states within 1e-4, the same
streamed text; forced modalities, cancellation, unknown adapters. Runs under `make test-vllm`."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
import torch
from PIL import Image

pytest.importorskip("vllm")

from nextgpt.config import GenerationOptions  # noqa: E402
from nextgpt.errors import InvalidInput  # noqa: E402
from nextgpt.events import TextDelta
from nextgpt.types import LLMOutput, MediaItem, Message  # noqa: E402
from services.llm.engine import EngineRequest  # noqa: E402
from services.llm.hf_engine import HFEngine  # noqa: E402
from services.llm.vllm_engine import VLLMEngine  # noqa: E402
from tests.services.test_llm_engine import collect, make_alt_adapter  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for the module: vLLM's output handler lives on the loop of its first request."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def adapters_dir(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_alt_adapter(tiny_model, root)
    return root


@pytest.fixture(scope="module")
def hf(tiny_profile, adapters_dir) -> HFEngine:
    return HFEngine.load(tiny_profile, adapters_dir=adapters_dir)


@pytest.fixture(scope="module")
def vllm_engine(tiny_profile, adapters_dir, loop, monkeypatch_module) -> Iterator[VLLMEngine]:
    engine = loop.run_until_complete(
        asyncio.to_thread(VLLMEngine.load, tiny_profile, adapters_dir=adapters_dir, max_num_seqs=16)
    )
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield mp


def image_embedding(hf: HFEngine, tiny_model) -> torch.Tensor:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 90)).save(buf, format="PNG")
    return tiny_model.encoder.encode(MediaItem("image", buf.getvalue(), "image/png"))  # (E,)


def request(text: str, embeds=(), adapter=None, **options) -> EngineRequest:
    opts = GenerationOptions(max_new_tokens=options.pop("max_new_tokens", 32), temperature=0, **options)
    return EngineRequest([Message("user", text)], [list(embeds)], opts, opts.requested_media, adapter=adapter)


CASES = {
    "text": ("Tell me a story about a fox.", False, ()),
    "text+forced image,audio": ("Show me a fox.", False, ("text", "image", "audio")),
    "embeds": ("What is in this picture?", True, ()),
    "embeds+forced video": ("Make a video of this.", True, ("text", "video")),
}


@pytest.mark.parametrize("adapter", [None, "alt"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_tokens_text_and_span_states_as_the_hf_engine(hf, vllm_engine, tiny_model, loop, case, adapter):
    text, with_media, modalities = CASES[case]
    embeds = [image_embedding(hf, tiny_model)] if with_media else []
    req = request(text, embeds, adapter, modalities=modalities or ("text",))
    want_deltas, want = loop.run_until_complete(collect(hf, req))
    got_deltas, got = loop.run_until_complete(collect(vllm_engine, req))
    assert got.token_ids == want.token_ids
    assert (got.text, got.raw_text, got.finish_reason) == (want.text, want.raw_text, want.finish_reason)
    assert "".join(got_deltas) == got.text == "".join(want_deltas)
    assert (got.prompt_tokens, got.forced_modalities, got.warnings) == (
        want.prompt_tokens,
        want.forced_modalities,
        want.warnings,
    )
    assert [(s.modality, s.start, s.token_ids) for s in got.spans] == [
        (s.modality, s.start, s.token_ids) for s in want.spans
    ]
    assert sorted(s.modality for s in got.spans) == sorted(m for m in modalities if m != "text")
    for g, w in zip(got.spans, want.spans, strict=True):
        torch.testing.assert_close(g.hidden.float(), w.hidden.float(), atol=1e-4, rtol=0)
        torch.testing.assert_close(g.token_embeds, w.token_embeds)


def test_adapters_differ_and_concurrent_requests_batch(vllm_engine, loop):
    async def many() -> list[LLMOutput]:
        reqs = [request(f"Story number {i}.", adapter="alt" if i % 2 else None) for i in range(8)]
        return [out for _, out in await asyncio.gather(*(collect(vllm_engine, r) for r in reqs))]

    outs = loop.run_until_complete(many())
    assert all(o.token_ids for o in outs)
    default, alt = (
        loop.run_until_complete(collect(vllm_engine, request("Hello.", adapter=a)))[1] for a in (None, "alt")
    )
    assert default.token_ids != alt.token_ids  # the request's LoRA is applied
    assert vllm_engine.adapters() == ["default", "alt"]


def test_unknown_adapter_and_too_small_budget_are_invalid_input(vllm_engine, loop):
    with pytest.raises(InvalidInput, match="no-such"):
        loop.run_until_complete(collect(vllm_engine, request("Hi", adapter="no-such")))
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        loop.run_until_complete(collect(vllm_engine, request("Hi", modalities=("video",), max_new_tokens=4)))


def test_closing_the_stream_aborts_the_vllm_request(vllm_engine, loop):
    async def first_delta_then_leave() -> int:
        stream = vllm_engine.generate(request("Talk for a long time.", max_new_tokens=400))
        async for event in stream:
            assert isinstance(event, TextDelta)
            break
        await stream.aclose()
        await asyncio.sleep(0.2)
        return vllm_engine.generator.output_processor.get_num_unfinished_requests()

    assert loop.run_until_complete(first_delta_then_leave()) == 0


def test_auto_engine_is_vllm_on_a_gpu_where_vllm_imports():
    from services.llm.config import resolve_engine

    engine, why = resolve_engine("auto", gpu=True)
    assert engine == "vllm" and why.startswith("auto: vLLM ")
    engine, why = resolve_engine("auto", gpu=False)
    assert engine == "hf" and "no GPU" in why
