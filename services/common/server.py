"""What every gRPC service shares: error mapping, request ids, metrics, health, reflection, drain.

One interceptor maps domain exceptions to status codes (KServe style), so servicers never build
error responses themselves, and records request counts and latencies per method.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from nextgpt.errors import RETRY_PUSHBACK_KEY, NextGPTError, Unauthenticated, status_of
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Media and video frames pass through: raise gRPC's 4 MiB default."""
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

RPC_REQUESTS = Counter(
    "nextgpt_grpc_requests_total", "gRPC requests served, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "nextgpt_grpc_request_seconds",
    "gRPC request latency, by method",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

MESSAGE_BYTES = Histogram(
    "nextgpt_grpc_message_bytes",
    "Serialized size of each gRPC message a service received or sent, by method and direction",
    ["method", "direction"],
    buckets=tuple(4**k for k in range(3, 15)),  # 64 B .. 256 MiB (MAX_MESSAGE_BYTES)
)


def _measured(serialize: Callable[[Any], bytes] | None, method: str) -> Callable[[Any], bytes] | None:
    """The response serializer, recording each message's size as it is written (no second encoding)."""
    if serialize is None:
        return None
    sizes = MESSAGE_BYTES.labels(method, "sent")

    def measured(message: Any) -> bytes:
        data = serialize(message)
        sizes.observe(len(data))
        return data

    return measured


def _measuring(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """The request deserializer, recording each message's size as it is read."""
    if deserialize is None:
        return None
    sizes = MESSAGE_BYTES.labels(method, "received")

    def measuring(data: bytes) -> Any:
        sizes.observe(len(data))
        return deserialize(data)

    return measuring


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code of an exception, from the one table in `nextgpt.errors`."""
    return grpc.StatusCode[status_of(exc).grpc_code]


def retry_pushback(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """`grpc-retry-pushback-ms` trailing metadata for an error the client may retry, else nothing."""
    retry_after_s = getattr(exc, "retry_after_s", None)
    if retry_after_s is None:
        return ()
    return ((RETRY_PUSHBACK_KEY, str(round(retry_after_s * 1000))),)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)
    return new_request_id()


SERVICE_TOKEN_ENV = "NEXTGPT_SERVICE_TOKEN"
SERVICE_TOKEN_HEADER = "x-nextgpt-service-token"
"""Metadata carrying the shared service token from the gateway to the backends."""


def service_token() -> str | None:
    """The cluster's shared secret (`NEXTGPT_SERVICE_TOKEN`), or None: backends then take any caller
    that can reach them (in `nextgpt up` only this machine: they bind loopback)."""
    return os.environ.get(SERVICE_TOKEN_ENV) or None


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps `NextGPTError`s to status codes, sets the request id, counts and times every call and
    measures its messages (`MESSAGE_BYTES`). With a `service_token`, a call without it is refused
    (UNAUTHENTICATED); health and reflection stay open for probes."""

    def __init__(self, service_token: str | None = None) -> None:
        self._token = service_token.encode() if service_token else None

    def _check_token(self, details: grpc.HandlerCallDetails) -> None:
        if self._token is None:
            return
        sent = dict(details.invocation_metadata or ()).get(SERVICE_TOKEN_HEADER, "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if not hmac.compare_digest(sent_bytes, self._token):
            raise Unauthenticated(
                f"this service takes calls from the gateway only: {SERVICE_TOKEN_HEADER} is missing or wrong"
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        # typeshed types the behaviours for the sync server; under grpc.aio they are coroutine functions
        # and async generator functions.
        if handler.unary_unary is not None:
            inner = cast(Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, token = _begin(context)
                try:
                    self._check_token(details)
                    response = await inner(request, context)
                except BaseException as exc:  # noqa: BLE001 - re-raised or mapped below
                    await _fail(method, exc, context, started, token)
                    raise
                _end(method, "OK", started, token)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                _measuring(handler.request_deserializer, method),
                _measured(handler.response_serializer, method),
            )
        if handler.unary_stream is not None:
            inner_stream = cast(
                Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], handler.unary_stream
            )

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, token = _begin(context)
                try:
                    self._check_token(details)
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:  # noqa: BLE001
                    await _fail(method, exc, context, started, token)
                    raise
                _end(method, "OK", started, token)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                _measuring(handler.request_deserializer, method),
                _measured(handler.response_serializer, method),
            )
        return handler


def _begin(context: grpc.aio.ServicerContext) -> tuple[float, Any]:
    return time.perf_counter(), request_id_var.set(_request_id(context))


def _end(method: str, code: str, started: float, token: Any) -> None:
    RPC_REQUESTS.labels(method, code).inc()
    RPC_LATENCY.labels(method).observe(time.perf_counter() - started)
    # A stream closed from another task ends in another context, where the token is foreign (and the
    # id set by `_begin` dies with its own context anyway).
    with contextlib.suppress(ValueError):
        request_id_var.reset(token)


async def _fail(
    method: str, exc: BaseException, context: grpc.aio.ServicerContext, started: float, token: Any
) -> None:
    """Record the failure; abort with the mapped status for domain errors (abort raises)."""
    if isinstance(exc, asyncio.CancelledError):
        _end(method, "CANCELLED", started, token)
        return
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        _end(method, code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN", started, token)
        return
    if not isinstance(exc, NextGPTError | TimeoutError):
        request_id = request_id_var.get()
        logger.exception("%s failed", method)
        _end(method, "INTERNAL", started, token)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error ({type(exc).__name__}); see the service log for request {request_id}",
        )
    code = status_code_for(exc)
    logger.info("%s -> %s: %s", method, code.name, exc)
    _end(method, code.name, started, token)
    await context.abort(code, str(exc), trailing_metadata=retry_pushback(exc))


@dataclass
class ServiceServer:
    """A started gRPC server with its health servicer."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    port: int

    async def set_serving(self, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def serve_until_signal(
        self, grace_s: float = 30.0, on_drain: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run until SIGTERM/SIGINT, then drain: NOT_SERVING first (probes fail, traffic moves away),
        then let in-flight calls finish for up to `grace_s` seconds."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("draining (grace %.0fs)", grace_s)
        await self.set_serving(False)
        if on_drain is not None:
            await on_drain()
        await self.server.stop(grace_s)
        logger.info("stopped")


async def start_server(
    port: int,
    add_servicers: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    internal: bool = True,
) -> ServiceServer:
    """Start a gRPC server with health (NOT_SERVING until `set_serving`), reflection and metrics.

    `add_servicers` registers the servicers and returns their full service names. An `internal` server
    (every backend; not the gateway's public API) requires the shared service token when one is set."""
    interceptor = ErrorInterceptor(service_token() if internal else None)
    server = grpc.aio.server(interceptors=[interceptor], options=CHANNEL_OPTIONS)
    names = tuple(add_servicers(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    if metrics_port is not None:
        # same interface as gRPC: loopback in the local cluster, 0.0.0.0 where Prometheus scrapes a pod
        start_http_server(metrics_port, addr=host)
    result = ServiceServer(server, health_servicer, names, bound)
    await result.set_serving(False)
    logger.info("gRPC on %s:%d (metrics on %s)", host, bound, metrics_port)
    return result


def channel(target: str) -> grpc.aio.Channel:
    """A client channel with the raised message limits and a reconnect backoff capped at 1 s.

    gRPC's default backoff grows 1 s x 1.6 per failed attempt up to 120 s, so a backend restarted after
    a few seconds down was used again only 9-11 s later. Capped at 1 s (+-20% jitter) it is used within
    ~1.2 s of listening again; a refused loopback connect costs next to nothing, and remote targets get
    at most one attempt a second. No keepalive pings: servers refuse idle pings more often than every
    5 min by default (GOAWAY too_many_pings), and a killed peer on the same host or pod network resets
    its connections anyway."""
    reconnect = [
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 1000),  # also the shortest connect timeout of an attempt
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    return grpc.aio.insecure_channel(target, options=[*CHANNEL_OPTIONS, *reconnect])
