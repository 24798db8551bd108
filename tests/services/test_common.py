"""Shared service plumbing: tensors on the wire, option conversion, settings, batching."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest
import torch
from prometheus_client import CollectorRegistry, Gauge, Histogram

from nextgpt._proto import common_pb2
from nextgpt.errors import ConfigError, InvalidInput, Overloaded
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


def _batcher_metrics() -> tuple[CollectorRegistry, Gauge, Histogram]:
    registry = CollectorRegistry()
    return registry, Gauge("q", "q", registry=registry), Histogram("b", "b", registry=registry)


async def _until(check, what: str, timeout: float = 30.0) -> None:
    """Let the loop run until `check()` holds (generous bound: a failure, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_batcher_drops_cancelled_queued_items_at_once():
    """A request cancelled while queued leaves the queue (and the depth gauge) at once, never runs, and
    does not keep its batch waiting."""
    registry, gauge, hist = _batcher_metrics()
    release = threading.Event()
    seen: list[list[int]] = []

    def run(key, items):
        seen.append(items)
        if items == [0]:
            release.wait(30)  # the batch that keeps the others queued
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=0, queue_gauge=gauge, batch_histogram=hist)
        first = asyncio.ensure_future(batcher.submit("k", 0))
        await _until(lambda: batcher.running, "the first batch")
        queued = [asyncio.ensure_future(batcher.submit("k", i)) for i in (1, 2, 3)]
        await _until(lambda: batcher.depth == 3, "three queued")
        assert registry.get_sample_value("q") == 3
        queued[0].cancel()
        queued[2].cancel()
        await asyncio.gather(queued[0], queued[2], return_exceptions=True)
        assert batcher.depth == 1 and registry.get_sample_value("q") == 1
        release.set()
        results = await asyncio.wait_for(asyncio.gather(first, queued[1]), 30)
        await batcher.stop()
        return results

    assert asyncio.run(main()) == [0, 2]
    assert seen == [[0], [2]]
    assert registry.get_sample_value("q") == 0


def test_batcher_stops_a_batch_only_when_every_request_is_cancelled():
    """`should_stop()` stays False while one request of the running batch still waits, and turns True
    when the last one is cancelled; the batcher then serves the next request as usual."""
    _, gauge, hist = _batcher_metrics()
    started = threading.Event()
    checks: list = []

    def run(key, items, should_stop):
        if key == "slow":
            checks.append(should_stop)
            started.set()
            for _ in range(3000):  # a "diffusion" of up to 30 s, polled between steps
                if should_stop():
                    raise RuntimeError("stopped")
                time.sleep(0.01)
        return items

    async def main():
        batcher = MicroBatcher(
            run, max_batch=2, max_wait_s=0, queue_gauge=gauge, batch_histogram=hist, stoppable=True
        )
        # Both are queued before the batcher's worker (created by a's submit) first runs: one batch.
        a = asyncio.ensure_future(batcher.submit("slow", 1))
        b = asyncio.ensure_future(batcher.submit("slow", 2))
        await _until(started.is_set, "the batch to start")
        [should_stop] = checks
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        await asyncio.sleep(0)
        assert not should_stop(), "stopped although b still waits"
        b.cancel()
        await asyncio.gather(b, return_exceptions=True)
        await asyncio.sleep(0)
        assert should_stop()
        await _until(lambda: not batcher.running, "the stopped batch to end")
        after = await asyncio.wait_for(batcher.submit("fast", 3), 30)
        await batcher.stop()
        return after

    assert asyncio.run(main()) == 3


def test_batcher_refuses_past_max_queue_with_a_retry_hint():
    registry, gauge, hist = _batcher_metrics()
    release = threading.Event()

    def run(key, items):
        if items == [0]:
            release.wait(30)
        return items

    async def main():
        batcher = MicroBatcher(
            run, max_batch=1, max_wait_s=0, queue_gauge=gauge, batch_histogram=hist, max_queue=2, name="the x"
        )
        running = asyncio.ensure_future(batcher.submit("k", 0))
        await _until(lambda: batcher.running, "the first batch")  # running: not in the queue
        queued = [asyncio.ensure_future(batcher.submit("k", i)) for i in (1, 2)]
        await _until(lambda: batcher.depth == 2, "two queued")
        with pytest.raises(Overloaded) as refused:
            await batcher.submit("other", 3)  # all keys count
        queued[0].cancel()  # a cancelled item frees its place at once
        await asyncio.gather(queued[0], return_exceptions=True)
        again = asyncio.ensure_future(batcher.submit("k", 4))
        await _until(lambda: batcher.depth == 2, "the freed place taken")
        release.set()
        results = await asyncio.wait_for(asyncio.gather(running, queued[1], again), 30)
        await batcher.stop()
        return refused.value, results

    refused, results = asyncio.run(main())
    assert results == [0, 2, 4]
    assert "the x queue is full (2 waiting, max_queue=2)" in str(refused)
    assert refused.retry_after_s is not None and refused.retry_after_s >= 1.0
    with pytest.raises(ValueError, match="max_queue=0"):
        MicroBatcher(
            lambda k, i: i, max_batch=1, max_wait_s=0, queue_gauge=gauge, batch_histogram=hist, max_queue=0
        )
