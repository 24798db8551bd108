"""`channel()` uses a backend again soon after it restarts on the same port.

With gRPC's default backoff (1 s x 1.6 per failed attempt, up to 120 s) a backend down for ~10 s was
used again only 5-6 s after it listened again; the gateway's channels cap the backoff at 1 s.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import ServiceServer, channel, start_server
from services.launcher import free_ports

DOWN_S = 9.5
"""Long enough for the default backoff to have grown past 6 s (attempts at ~1, 2.6, 5.2, 9.3 s)."""


async def _serving(ch: grpc.aio.Channel) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _backend(port: int) -> ServiceServer:
    server = await start_server(port, lambda _: [])
    await server.set_serving()
    return server


def test_a_backend_restarted_on_its_port_is_used_again_within_seconds():
    async def run() -> float:
        [port] = free_ports(1)
        first = await _backend(port)
        ch = channel(f"127.0.0.1:{port}")
        try:
            assert await _serving(ch)
            await first.server.stop(0)
            # callers keep trying while it is down, as the gateway's requests and /readyz do
            down_until = time.monotonic() + DOWN_S
            while time.monotonic() < down_until:
                assert not await _serving(ch)
                await asyncio.sleep(0.2)
            second = await _backend(port)
            listening = time.monotonic()
            try:
                while not await _serving(ch):
                    assert time.monotonic() - listening < 30, "never reconnected"
                    await asyncio.sleep(0.05)
                return time.monotonic() - listening
            finally:
                await second.server.stop(0)
        finally:
            await ch.close()

    reconnect_s = asyncio.run(run())
    # measured ~0.05-1.0 s (the default options: 5.4-6.1 s); generous for a loaded 2-core box
    assert reconnect_s < 4.0, reconnect_s
