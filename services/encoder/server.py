"""`python -m services.encoder.server [--port 50061] [--redis-url ...]`: the ImageBind encoder service.

settings -> logging -> gRPC server (health NOT_SERVING) -> load weights -> connect the cache ->
SERVING -> on SIGTERM: NOT_SERVING, finish in-flight requests (their batches included), exit 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Sequence

import grpc

from nextgpt._proto import encoder_pb2_grpc
from nextgpt.errors import ConfigError, NextGPTError
from nextgpt.profiles import load_profile
from services.common.logs import setup_logging
from services.common.server import ServiceServer, start_server
from services.common.settings import load_settings
from services.encoder.cache import make_cache
from services.encoder.config import ENV_PREFIX, EncoderServiceSettings
from services.encoder.core import EncoderCore
from services.encoder.servicer import SERVICE_NAME, EncoderServicer

logger = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for the next batch rather than hand it back to the OS.

    A preprocessed video is 15 x 3 x 2 x 224 x 224 floats (18 MB); a batch of them, and ImageBind's
    copies of it, outgrow glibc's largest dynamic mmap threshold (32 MB), so every batch mapped fresh
    pages and page-faulted them in again. Measured on the tiny encoder (CPU seconds, one thread): a batch
    of 4 videos cost 6.8x one video before, 4.0x after (16 videos: 28x -> 17x; 16 images: 10.7x ->
    8.0x). The heap then stays at its peak, which max_batch and max_inputs bound. glibc only; returns
    whether it applied."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def build_core(settings: EncoderServiceSettings) -> EncoderCore:
    """The core with its cache, weights not loaded yet."""
    cache = make_cache(settings.redis_url, ttl_s=settings.cache_ttl_s, max_entries=settings.cache_max_entries)
    return EncoderCore(settings, cache)


async def start(settings: EncoderServiceSettings, core: EncoderCore) -> ServiceServer:
    """Serve `core` on gRPC; health stays NOT_SERVING until the caller calls `set_serving()`."""

    def add(server: grpc.aio.Server) -> list[str]:
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(EncoderServicer(core), server)
        return [SERVICE_NAME]

    return await start_server(settings.port, add, host=settings.host, metrics_port=settings.metrics_port)


async def serve(settings: EncoderServiceSettings) -> None:
    profile = load_profile(settings.profile, config_file=settings.config_file, models_dir=settings.models_dir)
    core = build_core(settings)
    # 1. listen first, so probes see NOT_SERVING (not a refused port) while the weights load
    server = await start(settings, core)
    try:
        # 2. weights, then the cache (a missing Redis is logged; the LRU takes over)
        await core.load(profile.encoder)
        await core.cache.connect()
        logger.info(
            "encoder %s ready (preprocess %s, cache %s)",
            core.model_id,
            core.preprocess_version,
            core.cache.state(),
        )
        # 3. serve until SIGTERM/SIGINT, then drain in-flight requests
        await server.set_serving()
        await server.serve_until_signal(settings.grace_s)
    finally:
        await server.server.stop(0)
        await core.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(EncoderServiceSettings, ENV_PREFIX, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"encoder service: {exc}", file=sys.stderr)
        return 2
    setup_logging("encoder")
    if not keep_freed_memory():
        logger.info("not glibc: freed memory goes back to the OS between batches")
    try:
        asyncio.run(serve(settings))
    except NextGPTError as exc:  # missing weights, bad profile: say why and exit non-zero
        logger.error("encoder service cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
