"""Async gRPC clients of the backend services: encoder, LLM and one decoder per modality.

Every call carries the request id (`x-request-id` metadata) and a deadline; backend status codes are
turned into domain errors here, so the rest of the gateway sees `InvalidInput`, `ModelNotReady`, ...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from nextgpt._proto import decoder_pb2, decoder_pb2_grpc, encoder_pb2, encoder_pb2_grpc, llm_pb2, llm_pb2_grpc
from nextgpt.errors import (
    BackendError,
    DeadlineExceeded,
    ModelNotReady,
    NextGPTError,
    Overloaded,
    from_grpc_code,
    pushback_seconds,
)
from services.common.logs import REQUEST_ID_HEADER
from services.common.server import SERVICE_TOKEN_HEADER, channel, service_token

logger = logging.getLogger(__name__)


def map_rpc_error(service: str, exc: grpc.aio.AioRpcError) -> NextGPTError:
    """A backend's status -> the domain error the client should see.

    Only messages our services wrote reach the client (a bad option, a budget): transport failures
    ("failed to connect to all addresses; last error: ... ipv4:127.0.0.1:...") and crashes are logged
    here and replaced by a plain sentence, so no internal address or raw gRPC text leaks out. A
    backend's `grpc-retry-pushback-ms` becomes the error's `retry_after_s`."""
    code, details = exc.code(), exc.details() or ""
    retry_after_s = pushback_seconds(exc.trailing_metadata())
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND):
        return from_grpc_code(code.name, details)
    logger.warning("%s service: %s: %s", service, code.name, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {service} service did not answer within the request deadline")
    # our services send a pushback with every refusal they raise (see `retry_pushback`): their message
    # is meant for the client; without one the status came from the transport and its text is not
    ours = retry_after_s is not None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(
            f"the {service} service is busy: {details}" if ours else f"the {service} service is busy",
            retry_after_s=retry_after_s,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        why = details if ours else "not reachable (starting or restarting)"
        return ModelNotReady(f"the {service} service is unavailable: {why}", retry_after_s=retry_after_s)
    return BackendError(
        f"the {service} service failed ({code.name}); its log has the details under this request's id"
    )


@dataclass
class CallInfo:
    """Per-call settings every backend call gets."""

    request_id: str
    timeout_s: float

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_HEADER, self.request_id), *service_metadata())


def service_metadata() -> tuple[tuple[str, str], ...]:
    """The shared service token the backends require, when the cluster has one (`NEXTGPT_SERVICE_TOKEN`)."""
    token = service_token()
    return ((SERVICE_TOKEN_HEADER, token),) if token else ()


class Backends:
    """Channels and stubs of every backend (one channel each, shared by all requests)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.targets: dict[str, str] = {"encoder": settings.encoder_target, "llm": settings.llm_target}
        for modality, target in settings.decoder_targets().items():
            self.targets[f"decoder.{modality}"] = target
        self._channels = {name: channel(t) for name, t in self.targets.items() if t}
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self._channels["encoder"])
        self.llm = llm_pb2_grpc.LLMServiceStub(self._channels["llm"])
        self.decoders = {
            name.split(".", 1)[1]: decoder_pb2_grpc.DecoderServiceStub(ch)
            for name, ch in self._channels.items()
            if name.startswith("decoder.")
        }

    async def encode(self, request: encoder_pb2.EncodeRequest, call: CallInfo) -> encoder_pb2.EncodeResponse:
        try:
            return await self.encoder.Encode(request, timeout=call.timeout_s, metadata=call.metadata)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error("encoder", exc) from None

    async def generate(
        self, request: llm_pb2.LLMGenerateRequest, call: CallInfo
    ) -> AsyncGenerator[llm_pb2.LLMGenerateResponse, None]:
        stream = self.llm.Generate(request, timeout=call.timeout_s, metadata=call.metadata)
        try:
            async for response in stream:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error("llm", exc) from None
        finally:
            stream.cancel()  # no-op when finished; stops the LLM when the client went away

    async def decode(
        self, modality: str, request: decoder_pb2.DecodeRequest, call: CallInfo
    ) -> decoder_pb2.DecodeResponse:
        stub = self.decoders.get(modality)
        if stub is None:
            raise ModelNotReady(f"no {modality} decoder is configured (set --{modality}-decoder-target)")
        try:
            return await stub.Decode(request, timeout=call.timeout_s, metadata=call.metadata)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(f"{modality} decoder", exc) from None

    async def list_adapters(self, call: CallInfo) -> list[str]:
        try:
            response = await self.llm.ListAdapters(
                llm_pb2.ListAdaptersRequest(), timeout=call.timeout_s, metadata=call.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error("llm", exc) from None
        return list(response.adapters)

    async def health(self) -> dict[str, dict[str, Any]]:
        """grpc.health.v1 status of every backend, checked concurrently with a short deadline."""
        names = list(self.targets)
        results = await asyncio.gather(*(self._check(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def _check(self, name: str) -> dict[str, Any]:
        target = self.targets[name]
        if name not in self._channels:
            return {"target": "", "status": "NOT_CONFIGURED"}
        stub = health_pb2_grpc.HealthStub(self._channels[name])
        try:
            # typeshed's HealthStub declares no methods (the generated class sets them in __init__).
            response = await stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=self.settings.health_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return {"target": target, "status": "UNREACHABLE", "error": f"{exc.code().name}: {exc.details()}"}
        info: dict[str, Any] = {
            "target": target,
            "status": health_pb2.HealthCheckResponse.ServingStatus.Name(response.status),
        }
        if name == "encoder" and info["status"] == "SERVING":
            info["cache"] = await self._cache_status()
        return info

    async def _cache_status(self) -> dict[str, Any]:
        """Where the encoder caches embeddings (Redis or its in-process LRU); informational only,
        since the cluster works without Redis."""
        try:
            status = await self.encoder.GetCacheStatus(
                encoder_pb2.CacheStatusRequest(),
                timeout=self.settings.health_timeout_s,
                metadata=service_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}
        return {
            "backend": status.backend,
            "redis_connected": status.redis_connected,
            "redis_url": status.redis_url,
            "lru_entries": status.lru_entries,
        }

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))
