"""REST over a kept-alive connection has no 40 ms stall (issue 15).

uvicorn writes a response's head and body in two sends; without TCP_NODELAY on the accepted socket,
Nagle holds the body until the client ACKs the head, and a kept-alive client delays that ACK by 40 ms,
so every request on a reused connection took 40+ ms. The timing bound below is loose on purpose: 55
stalled requests take over 2 s, healthy ones a few ms each even on a busy machine.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.gateway.fakes import REPLY_WORDS, FakeCluster
from tests.gateway.helpers import start_gateway_process

TEXT = json.dumps({"messages": [{"role": "user", "content": "hi"}]})


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: str | None = None) -> bytes:
    headers = {"content-type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, data
    assert not response.will_close, "the gateway closed a kept-alive connection"
    return data


@pytest.fixture
def gateway_process(cluster: FakeCluster) -> Iterator[int]:
    """`python -m gateway.server` against the fake backends; yields its REST port."""
    proc, http_port, _ = start_gateway_process(cluster)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the gateway did not listen on {http_port} (exit {proc.poll()})"
                    ) from None
                time.sleep(0.05)
        yield http_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_reused_connection_has_no_per_request_stall(gateway_process):
    conn = http.client.HTTPConnection("127.0.0.1", gateway_process, timeout=30)
    try:
        _request(conn, "GET", "/healthz")  # connect and warm up outside the clock
        first_socket = conn.sock
        times = []
        requests = [("GET", "/healthz", None)] * 50 + [("POST", "/v1/chat/completions", TEXT)] * 5
        for method, path, body in requests:
            started = time.perf_counter()
            data = _request(conn, method, path, body)
            times.append(time.perf_counter() - started)
        assert json.loads(data)["choices"][0]["message"]["content"] == "".join(REPLY_WORDS)
        assert conn.sock is first_socket, "the requests did not share one connection"
    finally:
        conn.close()
    total = sum(times)
    slowest = sorted(times)[-5:]
    assert total < 1.0, (
        f"55 requests on one kept-alive connection took {total:.2f} s (median "
        f"{sorted(times)[len(times) // 2] * 1e3:.1f} ms, slowest {[round(t * 1e3) for t in slowest]} ms): "
        "a ~40 ms stall per request is Nagle + delayed ACK; do accepted sockets still have TCP_NODELAY?"
    )


def test_accepted_rest_sockets_have_tcp_nodelay(cluster):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.gateway.http_port, timeout=30)
    try:
        _request(conn, "GET", "/healthz")
        client_port = conn.sock.getsockname()[1]

        async def nodelay() -> int:
            (transport,) = [
                p.transport
                for p in cluster.gateway.http.server_state.connections
                if p.transport.get_extra_info("peername")[1] == client_port
            ]
            return transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        assert cluster.run(nodelay()) != 0
    finally:
        conn.close()
