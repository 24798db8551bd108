"""Admission control through the real gateway: requests past `max_in_flight` wait (up to `max_waiting`),
the rest are refused at once with a retry hint (REST 429 + Retry-After, gRPC RESOURCE_EXHAUSTED +
grpc-retry-pushback-ms), and every refusal is counted. Requests are held in flight by a gate on the fake
LLM, not by sleeps."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import httpx

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc
from tests.gateway.fakes import FakeCluster
from tests.gateway.helpers import chat, user


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the cluster"
        time.sleep(0.01)


async def _gate(cluster: FakeCluster) -> asyncio.Event:
    cluster.llm.gate = asyncio.Event()
    return cluster.llm.gate


def metric(cluster: FakeCluster, name: str) -> float:
    text = httpx.get(f"{cluster.http_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_past_the_limit_requests_wait_or_get_429_with_retry_after(make_cluster) -> None:
    cluster = make_cluster(max_in_flight=2, max_waiting=2, max_wait_s=60)
    gate = cluster.run(_gate(cluster))
    refused_before = metric(cluster, 'nextgpt_gateway_requests_total{api="rest",status="overloaded"}')
    with ThreadPoolExecutor(12) as pool:
        futures: list[Future[httpx.Response]] = [pool.submit(chat, cluster, user("hi")) for _ in range(12)]
        wait_until(lambda: sum(f.done() for f in futures) == 8 and len(cluster.llm.calls) == 2)
        refused = [f.result() for f in futures if f.done()]
        for response in refused:
            assert response.status_code == 429, response.text
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert error["code"] == "overloaded" and "retry" in error["message"]
        with grpc.insecure_channel(cluster.grpc_target) as channel:  # gRPC shares the same slots
            stub = nextgpt_pb2_grpc.NextGPTStub(channel)
            request = nextgpt_pb2.GenerateRequest(
                messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text="hi")]
            )
            try:
                stub.Generate(request, timeout=10)
                raise AssertionError("the gRPC call was admitted past the limit")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                pushback = dict(exc.trailing_metadata() or ())["grpc-retry-pushback-ms"]
                assert int(pushback) >= 1000
        cluster.loop.call_soon_threadsafe(gate.set)
        served = [f.result() for f in futures if f.result() not in refused]
    assert [r.status_code for r in served] == [200] * 4  # the 2 in flight and the 2 that waited
    after = metric(cluster, 'nextgpt_gateway_requests_total{api="rest",status="overloaded"}')
    assert after - refused_before == 8


def test_a_request_that_waits_too_long_gets_429(make_cluster) -> None:
    cluster = make_cluster(max_in_flight=1, max_waiting=4, max_wait_s=0.2)
    gate = cluster.run(_gate(cluster))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, cluster, user("hold"))
        wait_until(lambda: len(cluster.llm.calls) == 1)
        response = chat(cluster, user("wait"))
        assert response.status_code == 429 and "within 0.2 s" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) >= 1
        cluster.loop.call_soon_threadsafe(gate.set)
        assert held.result().status_code == 200
