"""The shared service token: with NEXTGPT_SERVICE_TOKEN set, a backend refuses calls without it (health
and reflection stay open for probes), and the gateway sends it with every backend call."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.backends import CallInfo
from nextgpt._proto import encoder_pb2, encoder_pb2_grpc
from services.common.server import SERVICE_TOKEN_ENV, SERVICE_TOKEN_HEADER, channel, start_server


class Encoder(encoder_pb2_grpc.EncoderServiceServicer):
    async def GetCacheStatus(self, request, context):  # noqa: N802
        return encoder_pb2.CacheStatus(backend="lru")


def test_backends_require_the_service_token_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVICE_TOKEN_ENV, "s3cret")

    async def main() -> None:
        def add(server: grpc.aio.Server) -> list[str]:
            encoder_pb2_grpc.add_EncoderServiceServicer_to_server(Encoder(), server)
            return []

        server = await start_server(0, add, host="127.0.0.1")
        await server.set_serving()
        try:
            async with channel(f"127.0.0.1:{server.port}") as chan:
                stub = encoder_pb2_grpc.EncoderServiceStub(chan)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetCacheStatus(encoder_pb2.CacheStatusRequest(), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert SERVICE_TOKEN_HEADER in (refused.value.details() or "")
                wrong = ((SERVICE_TOKEN_HEADER, "guess"),)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetCacheStatus(encoder_pb2.CacheStatusRequest(), timeout=10, metadata=wrong)
                gateway = CallInfo("r1", 10.0).metadata  # what the gateway sends
                reply = await stub.GetCacheStatus(
                    encoder_pb2.CacheStatusRequest(), timeout=10, metadata=gateway
                )
                assert reply.backend == "lru"
                health = await health_pb2_grpc.HealthStub(chan).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.server.stop(None)

    asyncio.run(main())


def test_public_servers_ignore_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVICE_TOKEN_ENV, "s3cret")

    async def main() -> None:
        def add(server: grpc.aio.Server) -> list[str]:
            encoder_pb2_grpc.add_EncoderServiceServicer_to_server(Encoder(), server)
            return []

        server = await start_server(0, add, host="127.0.0.1", internal=False)
        try:
            async with channel(f"127.0.0.1:{server.port}") as chan:
                stub = encoder_pb2_grpc.EncoderServiceStub(chan)
                assert (
                    await stub.GetCacheStatus(encoder_pb2.CacheStatusRequest(), timeout=10)
                ).backend == "lru"
        finally:
            await server.server.stop(None)

    asyncio.run(main())
