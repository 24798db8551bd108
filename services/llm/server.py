"""`python -m services.llm.server [--engine auto|hf|vllm] [--port 50062] [--metrics-port 9162] ...`

settings -> logging -> gRPC server up (health NOT_SERVING, calls UNAVAILABLE) -> engine load -> SERVING
-> run until SIGTERM/SIGINT -> drain (in-flight generations finish, up to grace_s) -> engine closed -> exit 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import transformers

from nextgpt._proto import llm_pb2, llm_pb2_grpc
from nextgpt.errors import NextGPTError
from nextgpt.profiles import load_profile
from services.common.logs import setup_logging
from services.common.server import start_server
from services.common.settings import load_settings
from services.llm.config import ENV_PREFIX, LLMServiceSettings, resolve_engine
from services.llm.engine import Engine
from services.llm.servicer import LLMServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name


def build_engine(settings: LLMServiceSettings) -> Engine:
    """Load the configured engine (blocking: run it in a thread); "auto" is resolved here and logged."""
    engine, why = resolve_engine(settings.engine)
    logger.info("LLM engine: %s (%s)", engine, why)
    settings = dataclasses.replace(settings, engine=engine)
    profile = load_profile(settings.profile, config_file=settings.config_file, models_dir=settings.models_dir)
    adapters_dir = Path(settings.adapters_dir) if settings.adapters_dir else None
    if settings.engine == "hf":
        from services.llm.hf_engine import HFEngine

        return HFEngine.load(
            profile,
            adapters_dir=adapters_dir,
            max_queue=settings.max_queue,
            max_num_seqs=settings.max_num_seqs,
            text_interval_s=settings.stream_interval_ms / 1000,
        )
    if settings.engine == "vllm":
        from services.llm.vllm_engine import VLLMEngine

        return VLLMEngine.load(
            profile,
            adapters_dir=adapters_dir,
            max_queue=settings.max_queue,
            max_num_seqs=settings.max_num_seqs,
            kv_cache_gib=settings.kv_cache_gib,
            gpu_memory_fraction=settings.gpu_memory_fraction,
        )
    raise AssertionError(f"engine {settings.engine!r} passed settings validation but has no loader")


async def serve(settings: LLMServiceSettings) -> None:
    servicer = LLMServicer(stream_interval_s=settings.stream_interval_ms / 1000)

    def add(server: grpc.aio.Server) -> list[str]:
        llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    server = await start_server(settings.port, add, host=settings.host, metrics_port=settings.metrics_port)
    logger.info("loading the engine (--engine %s)", settings.engine)
    try:
        servicer.engine = await asyncio.to_thread(build_engine, settings)
    except BaseException:
        await server.server.stop(0)
        raise
    await server.set_serving()
    logger.info("LLM service serving on port %d (adapters %s)", server.port, servicer.engine.adapters())
    await server.serve_until_signal(settings.grace_s)
    await servicer.engine.close()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch sizes its thread pool on first use (design 4)
    try:
        settings = load_settings(LLMServiceSettings, ENV_PREFIX, sys.argv[1:] if argv is None else argv)
    except NextGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging("llm", settings.log_level)
    transformers.utils.logging.disable_progress_bar()  # one JSON line per load step is enough
    try:
        asyncio.run(serve(settings))
    except NextGPTError as exc:
        logger.error("LLM service failed to start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
