"""`python -m gateway.server` as a real process against fake backends running in this test process:
REST and gRPC health, reflection, a request, graceful drain of an in-flight request on SIGTERM, exit 0."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.gateway.fakes import REPLY_WORDS
from tests.gateway.helpers import start_gateway_process


def _poll(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, grpc.RpcError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_gateway_process(cluster):
    proc, http_port, grpc_port = start_gateway_process(
        cluster, {"NEXTGPT_GATEWAY_GRACE_S": "10"}, output=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        _poll(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 60, "/healthz")
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = reflection.ServerReflectionInfo(iter([request]), timeout=5)
            assert "nextgpt.v1.NextGPT" in {s.name for s in answer.list_services_response.service}

        # SIGTERM while a request is in flight: it finishes, then the process exits 0
        cluster.llm.delay_s = 1.0
        result: dict = {}
        body = {"messages": [{"role": "user", "content": "hi"}]}
        worker = threading.Thread(
            target=lambda: result.update(r=httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30))
        )
        worker.start()
        _poll(lambda: cluster.llm.calls, 10, "the request to reach the LLM")
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["message"][
            "content"
        ] == "".join(REPLY_WORDS)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    log = proc.stdout.read().decode()
    assert '"service": "gateway"' in log and "draining" in log
