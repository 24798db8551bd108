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
    keys = cluster.settings.api_keys
    headers = {"authorization": f"Bearer {keys[0]}"} if keys else None
    text = httpx.get(f"{cluster.http_url}/metrics", headers=headers, timeout=10).text
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


def test_a_rest_client_that_gives_up_stops_its_request(make_cluster) -> None:
    """Not streaming, nothing is sent until the end: the gateway watches the connection instead, and a
    disconnect cancels the LLM call (and frees the admission slot)."""
    cluster = make_cluster(max_in_flight=1)
    gate = cluster.run(_gate(cluster))
    body = {"model": "nextgpt-tiny", "messages": [user("hold")]}
    try:
        httpx.post(f"{cluster.http_url}/v1/chat/completions", json=body, timeout=0.5)
        raise AssertionError("the held request was answered")
    except httpx.ReadTimeout:
        pass  # httpx closed the connection
    wait_until(lambda: cluster.llm.cancelled == 1)
    cluster.loop.call_soon_threadsafe(gate.set)
    assert chat(cluster, user("next")).status_code == 200  # the slot was given back


def test_rest_deadline_header_bounds_every_backend_call(make_cluster) -> None:
    cluster = make_cluster()
    cluster.run(_gate(cluster))
    response = chat(cluster, user("hold"), headers={"x-request-timeout": "0.3"})
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    remaining = cluster.llm.calls[0].time_remaining
    assert remaining is not None and 0 < remaining <= 0.31  # the header's budget (gRPC rounds it up)
    bad = chat(cluster, user("hi"), headers={"x-request-timeout": "soon"})
    assert bad.status_code == 400 and "x-request-timeout" in bad.json()["error"]["message"]


def test_every_refused_request_is_counted_once(make_cluster) -> None:
    """Refusals at the edge (bad body, unsupported option, missing key) count like the rest."""
    cluster = make_cluster(api_keys=["k"])
    key = {"authorization": "Bearer k"}
    name = 'nextgpt_gateway_requests_total{api="rest",status="invalid_argument"}'
    before = metric(cluster, name)
    url = f"{cluster.http_url}/v1/chat/completions"
    assert httpx.post(url, json={"model": "nextgpt-tiny"}, headers=key).status_code == 400  # no messages
    assert chat(cluster, user("hi"), n=2, headers=key).status_code == 400
    assert metric(cluster, name) - before == 2
    unauthorized = 'nextgpt_gateway_requests_total{api="rest",status="invalid_api_key"}'
    before = metric(cluster, unauthorized)
    assert chat(cluster, user("hi")).status_code == 401
    assert metric(cluster, unauthorized) - before == 1
