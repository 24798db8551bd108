"""Shared service plumbing: tensors on the wire, option conversion, settings, batching."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import torch
from prometheus_client import CollectorRegistry, Gauge, Histogram

from nextgpt._proto import common_pb2
from nextgpt.errors import ConfigError, InvalidInput
from services.common import convert, tensors
from services.common.batching import MicroBatcher
from services.common.settings import load_settings


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_round_trip(dtype):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    message = tensors.to_proto(x)
    assert list(message.shape) == [3, 5] and len(message.data) == 15 * x.element_size()
    assert torch.equal(tensors.from_proto(message), x)


def test_malformed_tensor_is_invalid_input():
    with pytest.raises(InvalidInput, match="do not hold shape"):
        tensors.from_proto(common_pb2.Tensor(data=b"abc", shape=[2], dtype="float32"), "hidden")
    with pytest.raises(InvalidInput, match="dtype 'int8'"):
        tensors.from_proto(common_pb2.Tensor(data=b"", shape=[0], dtype="int8"))


def test_generation_options_conversion_and_validation():
    message = common_pb2.GenerationOptions(
        max_new_tokens=40,
        seed=3,
        modalities=[common_pb2.MODALITY_IMAGE],
        image=common_pb2.DecodeOptions(steps=4),
    )
    options = convert.generation_options_from_proto(message)
    assert options.max_new_tokens == 40 and options.seed == 3 and options.top_p == 0.01
    assert (
        options.modalities == ("text", "image") and options.image.steps == 4 and options.video.steps is None
    )
    back = convert.generation_options_from_proto(convert.generation_options_to_proto(options))
    assert back == options
    with pytest.raises(InvalidInput, match="top_p"):
        convert.generation_options_from_proto(common_pb2.GenerationOptions(top_p=2.0))


@dataclass
class _Settings:
    port: int = 1
    """the port"""
    redis_url: str | None = None
    verbose: bool = False


def test_settings_flags_beat_env_beat_defaults():
    env = {"NEXTGPT_T_PORT": "5", "NEXTGPT_T_VERBOSE": "yes"}
    assert load_settings(_Settings, "NEXTGPT_T_", [], env) == _Settings(5, None, True)
    assert load_settings(_Settings, "NEXTGPT_T_", ["--port", "7", "--redis-url", "redis://x"], env).port == 7
    with pytest.raises(ConfigError, match="NEXTGPT_T_PORT='many'"):
        load_settings(_Settings, "NEXTGPT_T_", [], {"NEXTGPT_T_PORT": "many"})


def test_micro_batcher_groups_concurrent_items_by_key():
    registry = CollectorRegistry()
    gauge = Gauge("q", "q", registry=registry)
    hist = Histogram("b", "b", registry=registry)
    seen: list[tuple[str, list[int]]] = []

    def run(key, items):
        seen.append((key, items))
        if key == "bad":
            raise InvalidInput("bad batch")
        return [i * 10 for i in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.05, queue_gauge=gauge, batch_histogram=hist)
        results = await asyncio.gather(*(batcher.submit("a" if i % 2 else "b", i) for i in range(6)))
        with pytest.raises(InvalidInput):
            await batcher.submit("bad", 1)
        await batcher.stop()
        return results

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    sizes = sorted(len(items) for key, items in seen if key != "bad")
    assert sizes == [3, 3]
    assert registry.get_sample_value("b_sum") == 7  # 3 + 3 + the bad batch of 1


def test_interceptor_maps_domain_errors_and_hides_crashes():
    import grpc

    from nextgpt._proto import encoder_pb2, encoder_pb2_grpc
    from services.common.server import channel, start_server

    class Servicer(encoder_pb2_grpc.EncoderServiceServicer):
        async def Encode(self, request, context):
            raise InvalidInput("inputs[0] is not a PNG")

        async def GetCacheStatus(self, request, context):
            raise RuntimeError("boom")

    async def main():
        def add(server):
            encoder_pb2_grpc.add_EncoderServiceServicer_to_server(Servicer(), server)
            return ["nextgpt.v1.EncoderService"]

        server = await start_server(0, add, host="127.0.0.1")
        async with channel(f"127.0.0.1:{server.port}") as ch:
            stub = encoder_pb2_grpc.EncoderServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Encode(encoder_pb2.EncodeRequest(), timeout=5, metadata=(("x-request-id", "r-1"),))
            with pytest.raises(grpc.aio.AioRpcError) as crash:
                await stub.GetCacheStatus(
                    encoder_pb2.CacheStatusRequest(), metadata=(("x-request-id", "r-2"),)
                )
        await server.server.stop(0)
        return bad.value, crash.value

    bad, crash = asyncio.run(main())
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details() == "inputs[0] is not a PNG"
    assert crash.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in crash.details() and "r-2" in crash.details() and "boom" not in crash.details()


def test_batcher_waits_for_company_only_in_a_burst():
    """A request after a quiet spell starts at once, however long the window; one that follows another
    within the window waits for company (here: until the batch is full)."""
    registry = CollectorRegistry()
    gauge = Gauge("q", "q", registry=registry)
    hist = Histogram("b", "b", registry=registry)
    seen: list[list[int]] = []

    def run(key, items):
        seen.append(items)
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch=2, max_wait_s=600, queue_gauge=gauge, batch_histogram=hist)
        assert await asyncio.wait_for(batcher.submit("k", 1), 30) == 1  # not 600 s
        second = asyncio.ensure_future(batcher.submit("k", 2))
        await asyncio.sleep(0.05)
        assert not second.done(), "a request right after another did not wait for company"
        third = batcher.submit("k", 3)
        burst = await asyncio.wait_for(asyncio.gather(second, third), 30)
        await batcher.stop()
        return burst

    assert asyncio.run(main()) == [2, 3]
    assert seen == [[1], [2, 3]]
