"""`python -m services.decoders.server --modality image|video|audio`: one decoder service process.

settings -> logging -> gRPC up (health NOT_SERVING) -> load projector + pipeline -> SERVING -> serve
until SIGTERM/SIGINT -> drain (NOT_SERVING, in-flight batches finish within --grace-s) -> exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import grpc

from nextgpt._proto import decoder_pb2, decoder_pb2_grpc
from nextgpt.errors import NextGPTError
from nextgpt.profiles import load_profile
from services.common.logs import setup_logging
from services.common.server import ServiceServer, start_server
from services.common.settings import load_settings
from services.decoders.config import ENV_PREFIX, DecoderServiceSettings
from services.decoders.core import DecoderCore
from services.decoders.servicer import DecoderServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name


def build_core(settings: DecoderServiceSettings) -> DecoderCore:
    """The core; batch limits left unset are chosen by profile when it loads (`config.BATCHING`)."""
    max_wait_s = settings.max_wait_ms / 1000.0 if settings.max_wait_ms is not None else None
    return DecoderCore(
        settings.modality, max_batch=settings.max_batch, max_wait_s=max_wait_s, max_queue=settings.max_queue
    )


async def start(
    core: DecoderCore, port: int, *, host: str = "0.0.0.0", metrics_port: int | None = None
) -> ServiceServer:
    """A started server around `core` (NOT_SERVING until the caller loads the core and flips it)."""

    def add(server: grpc.aio.Server) -> list[str]:
        decoder_pb2_grpc.add_DecoderServiceServicer_to_server(DecoderServicer(core), server)
        return [SERVICE_NAME]

    return await start_server(port, add, host=host, metrics_port=metrics_port)


async def serve(settings: DecoderServiceSettings) -> int:
    core = build_core(settings)
    assert settings.port is not None
    server = await start(core, settings.port, host=settings.host, metrics_port=settings.metrics_enabled_port)
    try:
        profile = load_profile(
            settings.profile, config_file=settings.config_file, models_dir=settings.models_dir
        )
        logger.info("loading the %s decoder of profile %s", settings.modality, profile.name)
        await asyncio.to_thread(core.load, profile)
    except NextGPTError:
        logger.exception("cannot load the %s decoder", settings.modality)
        await server.server.stop(0)
        return 1
    await server.set_serving()
    logger.info("%s decoder serving on port %d", settings.modality, server.port)
    # stop() inside serve_until_signal waits for in-flight calls, and so for their batches.
    await server.serve_until_signal(settings.grace_s)
    await core.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(DecoderServiceSettings, ENV_PREFIX, sys.argv[1:] if argv is None else argv)
    except NextGPTError as exc:
        print(f"decoder service: {exc}", file=sys.stderr)
        return 2
    setup_logging(f"decoder-{settings.modality}")
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
