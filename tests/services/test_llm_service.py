"""The LLM service over real gRPC on loopback: streaming, validation errors, cancellation, and the
server process (health, reflection, metrics, SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from nextgpt._proto import common_pb2, llm_pb2, llm_pb2_grpc
from nextgpt.config import GenerationOptions
from nextgpt.errors import ConfigError
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import MediaItem, Message
from services.common import tensors
from services.common.server import channel, start_server
from services.common.settings import load_settings
from services.launcher import free_ports
from services.llm.config import ENV_PREFIX, LLMServiceSettings, resolve_engine
from services.llm.hf_engine import HFEngine
from services.llm.server import SERVICE_NAME
from services.llm.servicer import LLMServicer
from tests.services.test_llm_engine import make_alt_adapter

REPO = Path(__file__).resolve().parents[2]
USER, ASSISTANT = common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT


@pytest.fixture(scope="module")
def engine(tiny_profile, tiny_model, tmp_path_factory) -> HFEngine:
    root = tmp_path_factory.mktemp("adapters")
    make_alt_adapter(tiny_model, root)
    return HFEngine.load(tiny_profile, adapters_dir=root)


def serve(engine: HFEngine, check) -> None:
    """Run `await check(stub)` against an in-process server backed by `engine`."""

    async def main() -> None:
        servicer = LLMServicer(engine)

        def add(server: grpc.aio.Server) -> list[str]:
            llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        server = await start_server(0, add, host="127.0.0.1")
        await server.set_serving()
        try:
            async with channel(f"127.0.0.1:{server.port}") as chan:
                await check(llm_pb2_grpc.LLMServiceStub(chan))
        finally:
            await server.server.stop(None)

    asyncio.run(main())


def embedding(tiny_model, dim: int | None = None) -> llm_pb2.MediaEmbedding:
    value = torch.randn(
        dim or tiny_model.profile.encoder.embed_dim, generator=torch.Generator().manual_seed(3)
    )
    return llm_pb2.MediaEmbedding(modality=common_pb2.MODALITY_AUDIO, embedding=tensors.to_proto(value))


def request(*turns: llm_pb2.Turn, outputs=(), adapter="", **sampling) -> llm_pb2.LLMGenerateRequest:
    return llm_pb2.LLMGenerateRequest(
        turns=list(turns), sampling=llm_pb2.SamplingOptions(**sampling), outputs=outputs, adapter=adapter
    )


async def stream(stub, req, **kwargs) -> tuple[list[str], llm_pb2.LLMResult, list[llm_pb2.SignalSpan]]:
    deltas, results, spans = [], [], []
    async for response in stub.Generate(req, **kwargs):
        assert not results, "an event after the result"
        if response.HasField("result"):
            results.append(response.result)
        elif response.HasField("span"):
            spans.append(response.span)
        else:
            deltas.append(response.text_delta)
    assert len(results) == 1 and results[0].num_spans == len(spans)
    return deltas, results[0], spans


def test_generate_streams_text_then_spans(engine, tiny_model):
    media = embedding(tiny_model)
    req = request(
        llm_pb2.Turn(role=USER, text="draw it", media=[media]),
        max_new_tokens=30, temperature=0, outputs=[common_pb2.MODALITY_VIDEO],
    )  # fmt: skip
    # The same prompt through the in-process LLM (projected as NextGPT.embed_media does).
    with torch.inference_mode():
        block = tiny_model.input_projector(tensors.from_proto(media.embedding)[None])[0]  # (1, H)
    segments = build_prompt([Message("user", "draw it", [MediaItem("audio", b"", "")])], [[block]], "legacy")
    options = GenerationOptions(max_new_tokens=30, temperature=0, modalities=("text", "video"))
    expected = tiny_model.llm.generate(tiny_model.llm.embed(segments).embeds, options, force=["video"])

    async def check(stub) -> None:
        deltas, result, spans = await stream(stub, req)
        assert "".join(deltas) == result.text == expected.text and result.raw_text == expected.raw_text
        assert [s.modality for s in spans] == [common_pb2.MODALITY_VIDEO]
        span = spans[0]
        hidden = tensors.from_proto(span.hidden)
        assert span.hidden.dtype == "float32" and list(span.hidden.shape) == [24, tiny_model.llm.hidden_size]
        torch.testing.assert_close(hidden, expected.spans[0].hidden, rtol=0, atol=1e-6)
        assert list(span.token_embeds.shape) == [24, tiny_model.llm.hidden_size]
        assert result.usage.prompt_tokens == expected.prompt_tokens
        assert result.usage.completion_tokens == len(expected.token_ids) and result.finish_reason
        assert list(result.forced_modalities) == [common_pb2.MODALITY_VIDEO] * len(expected.forced_modalities)
        adapters = await stub.ListAdapters(llm_pb2.ListAdaptersRequest())
        assert list(adapters.adapters) == ["default", "alt"]
        # History with an assistant turn that generated an image, then another adapter.
        again = request(
            llm_pb2.Turn(role=USER, text="draw a cat"),
            llm_pb2.Turn(role=ASSISTANT, text="a cat", generated=[common_pb2.MODALITY_IMAGE]),
            llm_pb2.Turn(role=USER, text="and a dog"),
            max_new_tokens=8, temperature=0, adapter="alt",
        )  # fmt: skip
        _, result, _ = await stream(stub, again)
        assert result.usage.completion_tokens == 8

    serve(engine, check)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"dim": 5}, "turns[0].media[0].embedding has shape [5] but the input projector expects [32]"),
        ({"options": {"top_p": 2.0}}, "sampling: top_p=2.0"),
        ({"options": {"adapter": "nope"}}, "unknown LoRA adapter 'nope'; available: default, alt"),
        ({"last": ASSISTANT}, "the last turn must be the user's"),
        ({"role": common_pb2.ROLE_UNSPECIFIED}, "turns[0].role is unset"),
        ({"empty": True}, "turns is empty"),
    ],
    ids=["embedding-dim", "options", "lora", "last-turn", "role", "no-turns"],
)
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(engine, tiny_model, bad, message):
    turns = [
        llm_pb2.Turn(role=bad.get("role", USER), text="hi", media=[embedding(tiny_model, bad.get("dim"))])
    ]
    if "last" in bad:
        turns.append(llm_pb2.Turn(role=bad["last"], text="hello"))
    req = request(*([] if bad.get("empty") else turns), **{"max_new_tokens": 4, **bad.get("options", {})})

    async def check(stub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream(stub, req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        _, result, _ = await stream(stub, request(llm_pb2.Turn(role=USER, text="hi"), max_new_tokens=4))
        assert result.usage.completion_tokens == 4

    serve(engine, check)


def test_cancel_and_deadline_stop_decoding(engine):
    long = request(llm_pb2.Turn(role=USER, text="hello"), max_new_tokens=1500, temperature=0)

    def decoded() -> float:
        return REGISTRY.get_sample_value("nextgpt_llm_generated_tokens_total") or 0.0

    async def check(stub) -> None:
        before = decoded()
        call = stub.Generate(long)
        assert (await call.read()).text_delta
        call.cancel()
        await poll(lambda: not engine_busy(engine))
        assert decoded() - before < 500
        before = decoded()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream(stub, long, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await poll(lambda: not engine_busy(engine))
        assert decoded() - before < 1000  # the full request decodes 1500

    serve(engine, check)


def test_not_loaded_is_unavailable_and_settings_refuse_unknown_engines():
    async def check(stub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListAdapters(llm_pb2.ListAdaptersRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in info.value.details()

    serve(None, check)  # type: ignore[arg-type]
    settings = load_settings(LLMServiceSettings, ENV_PREFIX, ["--port", "7"], {"NEXTGPT_LLM_MAX_QUEUE": "3"})
    assert (settings.port, settings.max_queue, settings.metrics_port, settings.engine) == (7, 3, 9162, "auto")
    with pytest.raises(
        ConfigError, match=r"engine='tgi' is not available; use one of \['auto', 'hf', 'vllm'\]"
    ):
        load_settings(LLMServiceSettings, ENV_PREFIX, ["--engine", "tgi"], {})


def test_vllm_engine_without_vllm_installed_names_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"vLLM is not installed.*make setup-vllm"):
        load_settings(LLMServiceSettings, ENV_PREFIX, ["--engine", "vllm"], {})


def test_auto_engine_is_hf_where_vllm_is_missing_or_does_not_import(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    engine, why = resolve_engine("auto", gpu=True)
    assert engine == "hf" and "not installed" in why
    # installed but broken: `import vllm` raises, auto falls back to hf and says why
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    engine, why = resolve_engine("auto", gpu=True)
    assert engine == "hf" and "`import vllm` fails (ModuleNotFoundError" in why
    assert resolve_engine("hf") == ("hf", "engine='hf' was asked for")


def engine_busy(engine: HFEngine) -> bool:
    """Whether the worker thread still decodes a request."""
    return engine.running > 0


async def poll(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- the process
def test_server_process_health_reflection_metrics_and_draining_sigterm(tiny_models_dir, tmp_path):
    port, metrics = free_ports(2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEXTGPT_MODELS_DIR": str(tiny_models_dir)}
    log = (tmp_path / "llm.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.llm.server", "--port", str(port), "--metrics-port", str(metrics)]
        + ["--engine", "hf"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    async def check() -> None:
        async with channel(f"127.0.0.1:{port}") as chan:
            await wait_serving(chan, proc)
            assert "nextgpt.v1.LLMService" in await list_services(chan)
            stub = llm_pb2_grpc.LLMServiceStub(chan)
            _, result, _ = await stream(stub, request(llm_pb2.Turn(role=USER, text="hi"), max_new_tokens=3))
            assert result.usage.completion_tokens == 3
            url = f"http://127.0.0.1:{metrics}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            for name in ("generated_tokens_total", "queue_depth", "stage_seconds", "time_to_first_token"):
                assert f"nextgpt_llm_{name}" in body
            # SIGTERM while a generation runs: it still completes (drain), then the process exits 0.
            call = stub.Generate(
                request(llm_pb2.Turn(role=USER, text="hello"), max_new_tokens=600, temperature=0)
            )
            assert (await call.read()).text_delta
            proc.send_signal(signal.SIGTERM)
            response = await call.read()
            while response is not grpc.aio.EOF and not response.HasField("result"):
                response = await call.read()
            assert response is not grpc.aio.EOF and response.result.usage.completion_tokens == 600

    try:
        asyncio.run(check())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        print((tmp_path / "llm.log").read_text()[-3000:])  # shown by pytest on failure


async def wait_serving(chan: grpc.aio.Channel, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    health = health_pb2_grpc.HealthStub(chan)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the server exited"
        assert time.monotonic() < deadline, f"not SERVING within {timeout} s"
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass  # not listening yet
        await asyncio.sleep(0.1)


async def list_services(chan: grpc.aio.Channel) -> list[str]:
    reflection = reflection_pb2_grpc.ServerReflectionStub(chan)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    return [s.name async for r in replies for s in r.list_services_response.service]
