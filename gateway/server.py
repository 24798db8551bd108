"""`python -m gateway.server`: one process, one asyncio loop, REST (uvicorn) + gRPC (grpc.aio).

settings -> backends + core -> gRPC server (health SERVING once both listeners run) + uvicorn; on
SIGTERM drain: NOT_SERVING and /readyz 503, stop accepting, let in-flight requests finish for
`grace_s`, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence

import grpc
import uvicorn

from gateway.app import build_app
from gateway.backends import Backends
from gateway.config import ENV_PREFIX, GatewaySettings
from gateway.grpc_api import SERVICE_NAME, NextGPTServicer
from gateway.serving import GatewayCore
from nextgpt._proto import nextgpt_pb2_grpc
from services.common.logs import setup_logging
from services.common.server import ServiceServer, start_server
from services.common.settings import load_settings

logger = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway drains REST and gRPC together, and
    uvicorn's re-raising of the captured signal would turn a clean drain into a non-zero exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """The REST listening socket (made here so that port 0 is known before uvicorn starts).

    Its accepted sockets must have TCP_NODELAY: uvicorn writes a response's head and body in two
    `send`s, and with Nagle on the body waits for the client's ACK of the head, which a kept-alive
    client delays by 40 ms. asyncio sets TCP_NODELAY on accepted sockets only when the listener's
    `proto` is IPPROTO_TCP (`base_events._set_nodelay`), and `socket.socket(family, SOCK_STREAM)`
    leaves it 0, so name it; Linux also copies TCP_NODELAY from the listener to accepted sockets,
    which covers event loops that set nothing themselves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


class Gateway:
    """Both listeners over one `GatewayCore` (tests run it in a thread on port 0)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.backends = Backends(settings)
        self.core = GatewayCore(settings, self.backends)
        self.grpc: ServiceServer | None = None
        self.http: _Uvicorn | None = None
        self.http_port = 0
        self._http_task: asyncio.Task | None = None

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc else 0

    async def start(self, startup_timeout_s: float = 30.0) -> None:
        def add(server: grpc.aio.Server) -> list[str]:
            nextgpt_pb2_grpc.add_NextGPTServicer_to_server(NextGPTServicer(self.core), server)
            return [SERVICE_NAME]

        s = self.settings
        self.grpc = await start_server(s.grpc_port, add, host=s.host, internal=False)
        sock = _listen(s.host, s.http_port)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.core),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(s.grace_s) or None,
        )
        self.http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
        deadline = time.monotonic() + startup_timeout_s
        while not self.http.started:
            if self._http_task.done() or time.monotonic() > deadline:
                await self.grpc.server.stop(0)
                raise RuntimeError(f"the REST listener did not start on {s.host}:{self.http_port}")
            await asyncio.sleep(0.01)
        await self.grpc.set_serving()
        logger.info(
            "gateway ready: REST http://%s:%d (docs /docs, metrics /metrics), gRPC %s:%d",
            s.host,
            self.http_port,
            s.host,
            self.grpc_port,
        )

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to grace_s), close the backend channels."""
        logger.info("draining (grace %.0fs)", self.settings.grace_s)
        self.core.draining = True
        if self.grpc is not None:
            await self.grpc.set_serving(False)
        if self.http is not None:
            self.http.should_exit = True
        await asyncio.gather(
            self.grpc.server.stop(self.settings.grace_s) if self.grpc else asyncio.sleep(0),
            self._http_task if self._http_task else asyncio.sleep(0),
        )
        await self.backends.close()
        logger.info("stopped")


async def serve(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    await stop.wait()
    await gateway.drain()


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(GatewaySettings, ENV_PREFIX, sys.argv[1:] if argv is None else argv)
    setup_logging("gateway")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
