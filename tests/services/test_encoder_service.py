"""The encoder service over real gRPC on loopback, backed by the tiny ImageBind (real weights path)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client import REGISTRY

from nextgpt._proto import common_pb2, encoder_pb2, encoder_pb2_grpc
from nextgpt.encoders.imagebind import ImageBindEncoder
from nextgpt.encoders.preprocess import PREPROCESS_VERSION
from nextgpt.types import MediaItem
from services.common.server import channel
from services.common.tensors import from_proto
from services.encoder.cache import EmbeddingCache, LRUCache, RedisCache
from services.encoder.config import EncoderServiceSettings
from services.encoder.core import EncoderCore
from services.encoder.server import start
from services.launcher import free_ports
from tests.nextgpt.encoders.media_factory import indexed_frames, png_bytes, sine, video_bytes, wav_bytes
from tests.services.redis_fixture import RedisProcess, redis_process  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PROTO_MODALITY = {
    "image": common_pb2.MODALITY_IMAGE,
    "audio": common_pb2.MODALITY_AUDIO,
    "video": common_pb2.MODALITY_VIDEO,
}


@pytest.fixture(scope="module")
def encoder(tiny_profile) -> ImageBindEncoder:
    return ImageBindEncoder.load(tiny_profile.encoder)


def image(seed: int) -> MediaItem:
    rng = np.random.default_rng(seed)
    return MediaItem(
        "image", png_bytes(Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))), "image/png"
    )


MEDIA = {
    "image": image(0),
    "audio": MediaItem("audio", wav_bytes(sine(0.5, 16000)), "audio/wav"),
    "video": MediaItem("video", video_bytes(indexed_frames(4, 32, 32), fps=4), "video/mp4"),
}


def media_input(item: MediaItem) -> encoder_pb2.EncodeInput:
    return encoder_pb2.EncodeInput(
        media=common_pb2.Media(
            modality=PROTO_MODALITY[item.modality], data=item.data, mime_type=item.mime_type
        )
    )


def request(*inputs: MediaItem | str) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(
        inputs=[encoder_pb2.EncodeInput(text=x) if isinstance(x, str) else media_input(x) for x in inputs]
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def serving(
    encoder: ImageBindEncoder | None, cache: EmbeddingCache | None = None, **overrides: object
) -> AsyncIterator[encoder_pb2_grpc.EncoderServiceStub]:
    """An in-process encoder service on a free loopback port; yields a client stub."""
    settings = EncoderServiceSettings(port=0, host="127.0.0.1", metrics_port=None, redis_url="", **overrides)  # type: ignore[arg-type]
    core = EncoderCore(settings, cache or LRUCache(64), encoder)
    await core.cache.connect()
    server = await start(settings, core)
    await server.set_serving()
    client = channel(f"127.0.0.1:{server.port}")
    try:
        yield encoder_pb2_grpc.EncoderServiceStub(client)
    finally:
        await client.close()
        await server.server.stop(0)
        await core.close()


def test_encodes_every_modality_like_the_encoder(encoder: ImageBindEncoder) -> None:
    async def main() -> encoder_pb2.EncodeResponse:
        async with serving(encoder) as stub:
            return await stub.Encode(
                request(MEDIA["image"], MEDIA["audio"], MEDIA["video"], "a dog"), timeout=60
            )

    response = asyncio.run(main())
    assert response.model_id == encoder.cfg.model_id and response.preprocess_version == PREPROCESS_VERSION
    expected = [encoder.encode(MEDIA[m]) for m in ("image", "audio", "video")]
    expected.append(encoder.encode_batch("text", ["a dog"])[0])
    payloads = [MEDIA[m].data for m in ("image", "audio", "video")] + [b"a dog"]
    for got, want, payload in zip(response.embeddings, expected, payloads, strict=True):
        assert got.embedding.dtype == "float32" and list(got.embedding.shape) == [32]
        assert torch.allclose(from_proto(got.embedding), want, atol=1e-6)
        assert not got.cache_hit and got.sha256 == hashlib.sha256(payload).hexdigest()


def test_same_input_twice_is_a_cache_hit_with_identical_bytes(encoder: ImageBindEncoder) -> None:
    async def main() -> list[encoder_pb2.EncodeResponse]:
        async with serving(encoder) as stub:
            return [await stub.Encode(request(MEDIA["audio"], "hi"), timeout=60) for _ in range(2)]

    first, second = asyncio.run(main())
    assert [e.cache_hit for e in first.embeddings] == [False, False]
    assert [e.cache_hit for e in second.embeddings] == [True, True]
    for a, b in zip(first.embeddings, second.embeddings, strict=True):
        assert a.embedding.data == b.embedding.data and a.sha256 == b.sha256


def test_concurrent_requests_share_a_batch(encoder: ImageBindEncoder) -> None:
    items = [image(100 + i) for i in range(8)]
    count, total = metric("nextgpt_encoder_batch_size_count"), metric("nextgpt_encoder_batch_size_sum")

    async def main() -> list[encoder_pb2.EncodeResponse]:
        async with serving(encoder, max_wait_ms=200.0) as stub:
            return await asyncio.gather(*(stub.Encode(request(x), timeout=60) for x in items))

    responses = asyncio.run(main())
    batches = metric("nextgpt_encoder_batch_size_count") - count
    assert metric("nextgpt_encoder_batch_size_sum") - total == 8
    assert batches < 8, "8 concurrent requests ran as 8 batches of one"
    for response, item in zip(responses, items, strict=True):
        assert torch.allclose(from_proto(response.embeddings[0].embedding), encoder.encode(item), atol=1e-5)


PNG = MEDIA["image"].data
NO_MODALITY = encoder_pb2.EncodeRequest(
    inputs=[encoder_pb2.EncodeInput(media=common_pb2.Media(data=PNG, mime_type="image/png"))]
)
CORRUPT_MP4 = b"\x00\x00\x00\x18ftypmp42" + b"x" * 300
CORRUPT_WAV = b"RIFF\x10\x00\x00\x00WAVEjunk"
BAD_REQUESTS = [
    ("corrupt png", request(MediaItem("image", PNG[: len(PNG) // 2], "image/png")), r"inputs\[0\].*image"),
    ("corrupt mp4", request(MediaItem("video", CORRUPT_MP4, "video/mp4")), r"inputs\[0\].*decode the video"),
    (
        "corrupt wav",
        request(MEDIA["image"], MediaItem("audio", CORRUPT_WAV, "audio/wav")),
        r"inputs\[1\].*audio",
    ),
    (
        "wrong mime",
        request(MediaItem("image", PNG, "audio/wav")),
        r"inputs\[0\]: MIME type 'audio/wav' is audio",
    ),
    (
        "unsupported mime",
        request(MediaItem("image", PNG, "image/gif")),
        r"inputs\[0\]: unsupported .*'image/gif'",
    ),
    ("no modality", NO_MODALITY, r"inputs\[0\]\.media\.modality is unset"),
    ("empty bytes", request(MediaItem("image", b"", "image/png")), r"inputs\[0\]: empty image"),
    ("empty text", request(""), r"inputs\[0\]: empty text"),
    (
        "too large",
        request(MediaItem("image", PNG * 3, "image/png")),
        r"\[0\]: the image is \d+ bytes, over .* 4096",
    ),
    ("too many", request(*[f"t{i}" for i in range(17)]), r"17 inputs .* limit of 16"),
    ("no inputs", encoder_pb2.EncodeRequest(), r"no inputs"),
    ("unset input", encoder_pb2.EncodeRequest(inputs=[encoder_pb2.EncodeInput()]), r"inputs\[0\] is empty"),
]


def test_malformed_inputs_are_invalid_argument_and_the_server_keeps_serving(
    encoder: ImageBindEncoder,
) -> None:
    async def main() -> None:
        async with serving(encoder, max_media_bytes=4096) as stub:
            for name, bad, pattern in BAD_REQUESTS:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Encode(bad, timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert re.search(pattern, info.value.details() or ""), (name, info.value.details())
            # a corrupt input sent alongside good ones never poisons their shared batch
            bad_png = request(MediaItem("image", PNG[:40], "image/png"))
            results = await asyncio.gather(
                stub.Encode(request(image(7)), timeout=30),
                stub.Encode(bad_png, timeout=30),
                stub.Encode(request(image(8)), timeout=30),
                return_exceptions=True,
            )
            assert isinstance(results[1], grpc.aio.AioRpcError)
            assert results[1].code() == grpc.StatusCode.INVALID_ARGUMENT
            assert all(isinstance(r, encoder_pb2.EncodeResponse) for r in (results[0], results[2]))

    asyncio.run(main())


def test_not_loaded_is_unavailable_and_deadlines_are_honoured(encoder: ImageBindEncoder) -> None:
    async def main() -> None:
        async with serving(None) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(request("x"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in (
                info.value.details() or ""
            )
        # a batch window far beyond the deadline: the call ends with DEADLINE_EXCEEDED, not a hang (the
        # window applies to a request that comes right after another, so one goes first)
        async with serving(encoder, max_wait_ms=60_000.0) as stub:
            await stub.Encode(request("first"), timeout=30)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(request("slow"), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2.5

    asyncio.run(main())


def test_service_survives_redis_stopping_mid_run(
    encoder: ImageBindEncoder,
    redis_process: RedisProcess,  # noqa: F811
) -> None:
    redis_hits = metric("nextgpt_encoder_cache_hits_total", backend="redis")

    async def main() -> None:
        cache = RedisCache(redis_process.url, max_entries=64, backoff_s=0.05)
        async with serving(encoder, cache=cache) as stub:
            await stub.Encode(request(MEDIA["image"]), timeout=30)
            again = await stub.Encode(request(MEDIA["image"]), timeout=30)
            assert again.embeddings[0].cache_hit
            status = await stub.GetCacheStatus(encoder_pb2.CacheStatusRequest(), timeout=5)
            assert (status.backend, status.redis_connected) == ("redis", True)
            assert metric("nextgpt_encoder_cache_hits_total", backend="redis") == redis_hits + 1
            redis_process.stop()
            during = await stub.Encode(request(MEDIA["image"], "new text"), timeout=30)
            assert [e.cache_hit for e in during.embeddings] == [True, False]  # LRU, then the model
            assert during.embeddings[0].embedding.data == again.embeddings[0].embedding.data
            assert cache.state()["serving_from"] == "lru"
            status = await stub.GetCacheStatus(encoder_pb2.CacheStatusRequest(), timeout=5)
            assert (status.backend, status.redis_connected) == ("redis", False)
            assert status.lru_entries >= 2 and status.redis_url.startswith("redis://")

    asyncio.run(main())


def test_server_process_health_reflection_metrics_and_sigterm(tiny_models_dir: Path) -> None:
    port, metrics_port = free_ports(2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEXTGPT_MODELS_DIR": str(tiny_models_dir)}
    env["NEXTGPT_ENCODER_REDIS_URL"] = ""
    args = [sys.executable, "-m", "services.encoder.server", "--port", str(port)]
    args += ["--metrics-port", str(metrics_port), "--grace-s", "5"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            status = None
            while status != health_pb2.HealthCheckResponse.SERVING:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "encoder server never became SERVING"
                try:
                    status = health.Check(
                        health_pb2.HealthCheckRequest(service="nextgpt.v1.EncoderService"), timeout=1
                    ).status
                except grpc.RpcError:
                    time.sleep(0.1)
            reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
            answers = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for a in answers for s in a.list_services_response.service}
            assert "nextgpt.v1.EncoderService" in names and "grpc.health.v1.Health" in names
            response = encoder_pb2_grpc.EncoderServiceStub(ch).Encode(request("hello"), timeout=30)
            assert list(response.embeddings[0].embedding.shape) == [32]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
            text = page.read().decode()
        for name in (
            "nextgpt_encoder_batch_size",
            "nextgpt_encoder_cache_misses_total",
            "nextgpt_encoder_queue_depth",
        ):
            assert name in text
        assert 'nextgpt_encoder_inputs_total{modality="text"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_freed_memory_is_kept_for_the_next_batch_on_glibc() -> None:
    from services.encoder.server import keep_freed_memory

    applied = keep_freed_memory()
    assert applied == (platform.libc_ver()[0] == "glibc")
