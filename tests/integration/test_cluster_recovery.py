"""The local cluster as `nextgpt up` runs it (supervised): closed internal ports and self-healing.

No backend gRPC or metrics port listens beyond loopback; a SIGKILLed decoder is started again by the
launcher, reports SERVING, and the gateway's /readyz follows within a few seconds (its channels reconnect
with a backoff capped at 1 s).
"""

from __future__ import annotations

import ipaddress
import time

import httpx
import psutil
import pytest

from services.launcher import ClusterPorts, LocalCluster, is_serving

pytestmark = pytest.mark.integration


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or IPv4 loopback mapped into a dual-stack socket (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.fixture(scope="module")
def cluster(tiny_models_dir, tmp_path_factory):
    with LocalCluster(
        models_dir=tiny_models_dir,
        cluster_ports=ClusterPorts.free(),
        log_dir=tmp_path_factory.mktemp("logs"),
        engine="hf",
        supervise=True,
    ) as running:
        yield running


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of `pid` and its descendants."""
    root = psutil.Process(pid)
    found = set()
    for proc in (root, *root.children(recursive=True)):
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_no_backend_or_metrics_port_listens_beyond_loopback(cluster):
    p = cluster.ports
    expected = {
        "encoder": {p.encoder, p.encoder_metrics},
        "llm": {p.llm, p.llm_metrics},
        **{f"decoder-{m}": {p.decoders[m], p.decoder_metrics[m]} for m in p.decoders},
        "redis": {p.redis},
    }
    for name, ports in expected.items():
        if name not in cluster.children:  # no redis-server on this machine
            continue
        sockets = _listening(cluster.children[name].process.pid)
        assert ports <= {port for _, port in sockets}, (name, sockets)
        assert all(_loopback(ip) for ip, _ in sockets), (name, sockets)
    # the gateway's public ports follow its own host; it opens no other (metrics live on its REST port)
    gateway = _listening(cluster.children["gateway"].process.pid)
    assert {port for _, port in gateway} == {p.gateway_http, p.gateway_grpc}, gateway


def test_zz_killed_decoder_comes_back_serving_and_ready(cluster):
    target = cluster.children["decoder-image"].health_target or ""
    with httpx.Client(base_url=cluster.rest_url, timeout=10) as rest:
        assert rest.get("/readyz").status_code == 200
        killed = time.monotonic()
        cluster.kill("decoder-image")
        serving_at = ready_at = None
        while ready_at is None and time.monotonic() - killed < 60:
            # `serving_at`: the new process answers a fresh channel; then the gateway's old one must
            if serving_at is None and is_serving(target, timeout_s=0.5):
                serving_at = time.monotonic()
            elif serving_at is not None and rest.get("/readyz").status_code == 200:
                ready_at = time.monotonic()
            else:
                time.sleep(0.1)
        assert serving_at is not None and ready_at is not None, "the decoder never came back"
        print(f"SERVING {serving_at - killed:.1f}s, /readyz {ready_at - killed:.1f}s after the kill")
        assert cluster.restarts[0] == ("decoder-image", -9, 1, 1.0)
        assert ready_at - killed < 20.0, "the acceptance bound of issue 14"
        assert ready_at - serving_at < 5.0, "the gateway reconnects within ~1 s of SERVING"
        body = {
            "model": "nextgpt-tiny",
            "messages": [{"role": "user", "content": "A picture, please."}],
            "modalities": ["text", "image"],
            "max_tokens": 40,
        }
        reply = rest.post("/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert not reply.json().get("nextgpt", {}).get("errors"), reply.json()["nextgpt"]
