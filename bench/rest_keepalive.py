"""Per-request latency of the gateway's REST API on one kept-alive connection vs a fresh connection per
request, and of the same text request through the gRPC API (issue 15: a 40 ms Nagle / delayed-ACK
stall on every kept-alive REST request).

    OMP_NUM_THREADS=1 .venv/bin/python bench/rest_keepalive.py             # a running gateway (nextgpt up)
    OMP_NUM_THREADS=1 .venv/bin/python bench/rest_keepalive.py --fake      # the test suite's fake backends

Prints p50 / p95 in milliseconds per case; no file is written.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc  # noqa: E402

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc  # noqa: E402
from services.common import ports  # noqa: E402

TEXT_BODY = {"messages": [{"role": "user", "content": "Hello there."}], "max_tokens": 8, "seed": 0}
IMAGE_BODY = {**TEXT_BODY, "modalities": ["text", "image"]}


def timed(n: int, request: Callable[[], object]) -> list[float]:
    request()  # warm-up: first connection, first route compilation
    out = []
    for _ in range(n):
        started = time.perf_counter()
        request()
        out.append(time.perf_counter() - started)
    return out


def rest(
    host: str, port: int, method: str, path: str, body: dict | None, reuse: bool
) -> Callable[[], object]:
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if body is not None else {}
    shared = http.client.HTTPConnection(host, port, timeout=120)

    def call() -> bytes:
        conn = shared if reuse else http.client.HTTPConnection(host, port, timeout=120)
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path} -> {response.status}: {data[:200]!r}")
        if not reuse:
            conn.close()
        return data

    return call


def grpc_text(target: str) -> Callable[[], object]:
    stub = nextgpt_pb2_grpc.NextGPTStub(grpc.insecure_channel(target))
    request = nextgpt_pb2.GenerateRequest(
        messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=TEXT_BODY["messages"][0]["content"])],
        options=common_pb2.GenerationOptions(max_new_tokens=8, seed=0),
    )
    return lambda: stub.Generate(request, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=f"http://127.0.0.1:{ports.GATEWAY_HTTP}")
    parser.add_argument("--grpc", default=f"127.0.0.1:{ports.GATEWAY_GRPC}")
    parser.add_argument("-n", type=int, default=100, help="requests per case")
    parser.add_argument("--image", action="store_true", help="also time text->image (needs a decoder)")
    parser.add_argument("--fake", action="store_true", help="start the test suite's fake cluster")
    args = parser.parse_args()
    cluster = None
    if args.fake:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is not an installed package
        from tests.gateway.fakes import FakeCluster

        cluster = FakeCluster().start()
        args.url, args.grpc = cluster.http_url, cluster.grpc_target
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    chat = "/v1/chat/completions"
    cases = {
        "GET /healthz, reused connection": rest(host, port, "GET", "/healthz", None, True),
        "GET /healthz, fresh connections": rest(host, port, "GET", "/healthz", None, False),
        "text->text REST, reused": rest(host, port, "POST", chat, TEXT_BODY, True),
        "text->text REST, fresh": rest(host, port, "POST", chat, TEXT_BODY, False),
        "text->text gRPC Generate": grpc_text(args.grpc),
    }
    if args.image:
        cases["text->image REST, reused"] = rest(host, port, "POST", chat, IMAGE_BODY, True)
    try:
        print(f"{'case':<36}{'p50 ms':>9}{'p95 ms':>9}")
        for name, call in cases.items():
            times = sorted(timed(args.n, call))
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            print(f"{name:<36}{statistics.median(times) * 1e3:>9.1f}{p95 * 1e3:>9.1f}")
    finally:
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
