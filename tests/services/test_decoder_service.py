"""Decoder services: in-process grpc.aio servers (one per modality) on the tiny profile, plus one real
`python -m services.decoders.server` process for health, reflection, /metrics and SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import av
import grpc
import pytest
import soundfile as sf
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client import REGISTRY

from nextgpt._proto import common_pb2, decoder_pb2, decoder_pb2_grpc
from nextgpt.config import DecodeOptions, GenerationOptions
from nextgpt.errors import CheckpointError, ConfigError
from nextgpt.llm.prompt import build_prompt
from nextgpt.types import Message, SignalSpan
from services.common import convert, ports
from services.common.server import CHANNEL_OPTIONS, ServiceServer
from services.common.settings import load_settings
from services.common.tensors import to_proto
from services.decoders.config import (
    DEFAULT_MAX_QUEUE,
    ENV_PREFIX,
    FALLBACK_BATCHING,
    DecoderServiceSettings,
    default_batching,
)
from services.decoders.core import DecoderCore
from services.decoders.server import build_core, start
from services.launcher import free_ports

MODALITIES = ("image", "video", "audio")
MAX_BATCH = 4
MAX_WAIT_S = 0.1
"""Generous, so that requests sent together by the test client reliably meet in one batch."""
TIMEOUT = 60.0


class _Loop:
    """An asyncio loop in a thread hosting the servers, so the tests can use plain blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)


@dataclasses.dataclass
class _Service:
    core: DecoderCore
    server: ServiceServer
    channel: grpc.Channel
    stub: decoder_pb2_grpc.DecoderServiceStub


@pytest.fixture(scope="module")
def services(tiny_profile) -> Iterator[dict[str, _Service]]:
    loop = _Loop()

    async def up(modality: str) -> tuple[DecoderCore, ServiceServer]:
        core = DecoderCore(modality, max_batch=MAX_BATCH, max_wait_s=MAX_WAIT_S)
        server = await start(core, 0, host="127.0.0.1")
        await asyncio.to_thread(core.load, tiny_profile)
        await server.set_serving()
        return core, server

    found: dict[str, _Service] = {}
    for m in MODALITIES:
        core, server = loop.run(up(m))
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS)
        found[m] = _Service(core, server, channel, decoder_pb2_grpc.DecoderServiceStub(channel))
    yield found
    for service in found.values():
        service.channel.close()
        loop.run(service.server.server.stop(0))
        loop.run(service.core.close())
    loop.close()


@pytest.fixture(scope="module")
def spans(tiny_model) -> dict[str, SignalSpan]:
    """One real span per modality from the tiny LLM (forced, as the gateway asks for it)."""
    found = {}
    for m in MODALITIES:
        prompt = tiny_model.llm.embed(
            build_prompt([Message("user", f"Make a {m}.")], [[]], tiny_model.profile.llm.prompt_format)
        )
        options = GenerationOptions(seed=1, max_new_tokens=40, modalities=("text", m))
        out = tiny_model.llm.generate(prompt.embeds, options, force=[m])
        found[m] = next(s for s in out.spans if s.modality == m)
    return found


def _request(
    span: SignalSpan, seed: int | None = 5, modality: str | None = None, **options: Any
) -> decoder_pb2.DecodeRequest:
    request = decoder_pb2.DecodeRequest(
        modality=convert.MODALITY_TO_PROTO[modality or span.modality],
        hidden=to_proto(span.hidden),
        token_embeds=to_proto(span.token_embeds),
        options=convert.decode_options_to_proto(DecodeOptions(**options)),
    )
    if seed is not None:
        request.seed = seed
    return request


def _random_span(modality: str, service: _Service, seed: int) -> SignalSpan:
    cfg = service.core.projector.cfg  # type: ignore[union-attr]
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(cfg.num_signal_tokens, cfg.in_dim, generator=gen)
    embeds = torch.randn(cfg.num_signal_tokens, cfg.in_dim, generator=gen)
    return SignalSpan(modality, 0, [], hidden, embeds)  # type: ignore[arg-type]


def _check_media(media: common_pb2.Media, modality: str) -> None:
    assert convert.PROTO_TO_MODALITY[media.modality] == modality
    if modality == "image":
        assert media.mime_type == "image/png" and Image.open(io.BytesIO(media.data)).format == "PNG"
    elif modality == "video":
        assert media.mime_type == "video/mp4"
        with av.open(io.BytesIO(media.data)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
    else:
        assert media.mime_type == "audio/wav"
        _, rate = sf.read(io.BytesIO(media.data))
        assert rate == 16000


def _concurrently(call: Callable[[decoder_pb2.DecodeRequest], Any], requests: list) -> list:
    """Send every request before waiting for any answer."""
    futures: list[Future] = [call.future(r, timeout=TIMEOUT) for r in requests]  # type: ignore[attr-defined]
    return [f.result() for f in futures]


def _batches(modality: str) -> tuple[float, float]:
    """(batches run, requests in them) so far, from the batch-size histogram."""
    labels = {"modality": modality}
    count = REGISTRY.get_sample_value("nextgpt_decoder_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("nextgpt_decoder_batch_size_sum", labels) or 0.0
    return count, total


@pytest.mark.parametrize("modality", MODALITIES)
def test_decode_equals_the_in_process_pipeline(services, spans, tiny_model, modality) -> None:
    span = spans[modality]
    response = services[modality].stub.Decode(_request(span, seed=5), timeout=TIMEOUT)
    _check_media(response.media, modality)
    assert response.batch_size == 1
    decoder = tiny_model.decoders[modality]
    cond = tiny_model.project_spans(modality, [span])
    [expected] = decoder.decode(cond, DecodeOptions().resolve(decoder.defaults), seed=5)
    assert response.media.data == expected.data  # bytes-identical
    assert response.media.mime_type == expected.mime_type


def test_equal_settings_share_a_batch(services) -> None:
    service = services["image"]
    before = _batches("image")
    requests = [_request(_random_span("image", service, i), seed=i, steps=3) for i in range(6)]
    responses = _concurrently(service.stub.Decode, requests)
    count, total = (a - b for a, b in zip(_batches("image"), before, strict=True))
    assert total == 6 and count < 6  # some batch held more than one request
    sizes = [r.batch_size for r in responses]
    assert max(sizes) > 1 and all(1 <= s <= MAX_BATCH for s in sizes)
    assert sum(1 / s for s in sizes) == pytest.approx(count)  # every response names its own batch
    # Each answer belongs to its own request: the same bytes as decoding that request alone (batch
    # invariance, nextgpt/decoders/invariance.py).
    alone = service.stub.Decode(requests[4], timeout=TIMEOUT)
    assert alone.batch_size == 1
    assert alone.media.data == responses[4].media.data
    assert len({r.media.data for r in responses}) == 6


def test_different_settings_never_share_a_batch(services) -> None:
    service = services["image"]
    requests = [
        _request(_random_span("image", service, i), seed=i, steps=2, height=32 if i % 2 else 48)
        for i in range(6)
    ]
    responses = _concurrently(service.stub.Decode, requests)
    for i, response in enumerate(responses):
        assert Image.open(io.BytesIO(response.media.data)).size == (64, 32 if i % 2 else 48)
        assert response.batch_size <= 3  # 3 of each size: a batch of 4 would have mixed them
    assert max(r.batch_size for r in responses) > 1


def _code_and_message(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _bad_tensor(span: SignalSpan) -> decoder_pb2.DecodeRequest:
    request = _request(span)
    request.hidden.data = request.hidden.data[:-3]
    return request


def _nan_span(span: SignalSpan) -> SignalSpan:
    hidden = span.hidden.clone()
    hidden[0, 0] = float("nan")
    return dataclasses.replace(span, hidden=hidden)


def _resized(span: SignalSpan, n: int, h: int) -> SignalSpan:
    return dataclasses.replace(span, hidden=torch.zeros(n, h), token_embeds=torch.zeros(n, h))


@pytest.mark.parametrize(
    ("modality", "make", "fragment"),
    [
        ("audio", lambda s: _request(s, modality="image"), "modality=image sent to the audio decoder"),
        ("audio", lambda s: decoder_pb2.DecodeRequest(hidden=to_proto(s.hidden)), "modality is unset"),
        ("image", lambda s: _request(_resized(s, 3, 64)), "hidden must have shape [4, 64]"),
        ("image", lambda s: _request(_resized(s, 4, 32)), "got [4, 32]"),
        ("video", _bad_tensor, "do not hold shape [24, 64]"),
        ("image", lambda s: _request(_nan_span(s)), "NaN"),
        ("image", lambda s: _request(s, steps=0), "steps=0 must be in [1, 500]"),
        ("image", lambda s: _request(s, height=100), "size 100x64"),
        ("video", lambda s: _request(s, num_frames=0), "num_frames=0"),
        ("audio", lambda s: _request(s, audio_seconds=-1.0), "audio_seconds=-1.0 must be in (0, 60.0]"),
    ],
)
def test_bad_input_is_invalid_argument(services, spans, modality, make, fragment) -> None:
    stub = services[modality].stub
    code, message = _code_and_message(lambda: stub.Decode(make(spans[modality]), timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in message
    # ... and the service keeps serving.
    _check_media(stub.Decode(_request(spans[modality], steps=1), timeout=TIMEOUT).media, modality)


def test_not_serving_and_unavailable_until_loaded() -> None:
    async def main() -> None:
        core = DecoderCore("audio")
        server = await start(core, 0, host="127.0.0.1")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
                span = SignalSpan("audio", 0, [], torch.zeros(8, 64), torch.zeros(8, 64))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await decoder_pb2_grpc.DecoderServiceStub(channel).Decode(_request(span))
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "still loading" in (info.value.details() or "")
        finally:
            await server.server.stop(0)

    asyncio.run(main())


def test_projector_width_must_fit_the_decoder(tiny_profile) -> None:
    """The 768-vs-1024 trap: an SD-width projector in front of Zeroscope is refused at load."""
    projectors = dict(tiny_profile.output_projectors)
    projectors["video"] = dataclasses.replace(projectors["video"], out_dim=projectors["image"].out_dim)
    profile = dataclasses.replace(tiny_profile, delta_checkpoint=None, output_projectors=projectors)
    with pytest.raises(
        CheckpointError, match=r"produces 77 x 32 but the video decoder conditions on 77 x 48"
    ):
        DecoderCore("video").load(profile)


def test_settings() -> None:
    settings = load_settings(DecoderServiceSettings, ENV_PREFIX, [], {f"{ENV_PREFIX}MODALITY": "video"})
    assert (settings.port, settings.metrics_port) == (ports.DECODERS["video"], ports.DECODER_METRICS["video"])
    assert (settings.max_batch, settings.max_wait_ms) == (None, None)  # chosen by profile at load
    assert default_batching("tiny", "image") == (16, 10.0) and default_batching("tiny", "video") == (8, 25.0)
    assert default_batching("nextgpt-7b-tiva-v0", "video") == FALLBACK_BATCHING == (4, 10.0)
    flags = ["--modality", "audio", "--port", "0", "--metrics-port", "0", "--max-batch", "8"]
    settings = load_settings(DecoderServiceSettings, ENV_PREFIX, flags, {f"{ENV_PREFIX}MODALITY": "video"})
    assert (settings.modality, settings.port, settings.metrics_enabled_port, settings.max_batch) == (
        "audio",
        0,
        None,
        8,
    )
    with pytest.raises(ConfigError, match="--modality image|video|audio"):
        load_settings(DecoderServiceSettings, ENV_PREFIX, [], {})
    with pytest.raises(ConfigError, match="max_batch=0"):
        DecoderServiceSettings(modality="image", max_batch=0)


# -- cancellation and bounded queues -----------------------------------------------------------------

LONG = 400
"""Denoising steps of a request that is cancelled: ~10-30 s to the end on the tiny profile."""


class _Steps:
    """Counts the UNet calls (one per denoising step) of a decoder, by batch size."""

    def __init__(self, service: _Service) -> None:
        self.by_batch: dict[int, int] = {}
        self.seen = threading.Event()
        self.watch: int | None = None
        """Batch size whose first step sets `seen` (None: any)."""
        unet = service.core.decoder.pipe.unet  # type: ignore[union-attr]
        self._handle = unet.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        batch = int(args[0].shape[0]) // 2  # classifier-free guidance: two rows per item
        self.by_batch[batch] = self.by_batch.get(batch, 0) + 1
        if self.watch is None or batch == self.watch:
            self.seen.set()

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def steps(services) -> Iterator[Callable[[str], _Steps]]:
    made: list[_Steps] = []

    def make(modality: str) -> _Steps:
        made.append(_Steps(services[modality]))
        return made[-1]

    yield make
    for counter in made:
        counter.close()


def _until_idle(service: _Service, timeout: float = TIMEOUT) -> float:
    """Seconds until no batch runs (the worker thread finished); fails after `timeout`."""
    started = time.monotonic()
    _poll(lambda: not service.core.batcher.running, "the decoder to go idle", timeout)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("modality", "how"),
    [("image", "cancel"), ("image", "deadline"), ("video", "cancel"), ("audio", "cancel")],
)
def test_cancelled_request_stops_the_diffusion(services, spans, steps, modality, how) -> None:
    """A gRPC cancel or an expired deadline stops the running diffusion at its next step: the worker
    thread ends after a few of the 400 steps instead of all of them."""
    service = services[modality]
    counter = steps(modality)
    timeout = 2.0 if how == "deadline" else TIMEOUT
    call = service.stub.Decode.future(_request(spans[modality], seed=3, steps=LONG), timeout=timeout)
    if how == "cancel":
        assert counter.seen.wait(TIMEOUT), "no denoising step ran"
        call.cancel()
    with pytest.raises(grpc.FutureCancelledError if how == "cancel" else grpc.RpcError) as info:
        call.result()
    ran_before = counter.by_batch.get(1, 0)
    if how == "deadline":
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    _until_idle(service)
    ran = counter.by_batch.get(1, 0)
    # Counted from when the client saw the call end: how many steps run within the 2 s deadline
    # depends on the machine (a fast one runs more than half of them).
    assert ran < LONG, "the diffusion ran to its end"
    after = ran - ran_before
    assert after < LONG // 8, f"{after} of {LONG} steps ran after the request was gone"
    # The decoder serves the next request as usual.
    _check_media(service.stub.Decode(_request(spans[modality], steps=1), timeout=TIMEOUT).media, modality)


def test_batch_runs_on_for_the_request_still_wanted(services, steps) -> None:
    """Of two requests decoded as one batch, one is cancelled mid-diffusion: the other still gets every
    step, and the same bytes as decoding it alone."""
    service = services["image"]
    counter = steps("image")
    counter.watch = 2
    # A first request (other settings) holds the decoder so that the next two queue up and meet.
    blocker = service.stub.Decode.future(
        _request(_random_span("image", service, 20), steps=100), timeout=TIMEOUT
    )
    _poll(lambda: service.core.batcher.running, "the first batch")
    pair = [_request(_random_span("image", service, 21 + i), seed=i, steps=12) for i in range(2)]
    gone, kept = (service.stub.Decode.future(r, timeout=TIMEOUT) for r in pair)
    assert counter.seen.wait(TIMEOUT), "the two requests did not run as one batch"
    gone.cancel()
    response = kept.result()
    blocker.result()
    assert response.batch_size == 2
    assert counter.by_batch[2] >= 12  # every step (PNDM adds one)
    alone = service.stub.Decode(pair[1], timeout=TIMEOUT)
    assert alone.batch_size == 1 and alone.media.data == response.media.data


def test_full_queue_is_resource_exhausted_with_pushback(services, spans, steps) -> None:
    service = services["image"]
    counter = steps("image")
    limit, service.core.batcher.max_queue = service.core.batcher.max_queue, 1
    calls = []
    try:
        calls.append(service.stub.Decode.future(_request(spans["image"], steps=LONG), timeout=TIMEOUT))
        assert counter.seen.wait(TIMEOUT)  # running: not in the queue
        calls.append(service.stub.Decode.future(_request(spans["image"], steps=LONG), timeout=TIMEOUT))
        _poll(lambda: service.core.batcher.depth == 1, "one queued request")
        with pytest.raises(grpc.RpcError) as info:
            service.stub.Decode(_request(spans["image"], steps=1), timeout=TIMEOUT)
    finally:
        service.core.batcher.max_queue = limit
        for call in calls:
            call.cancel()
    error: Any = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the image decoder queue is full (1 waiting, max_queue=1)" in error.details()
    pushback = dict(error.trailing_metadata())["grpc-retry-pushback-ms"]
    assert int(pushback) >= 1000
    _until_idle(service)
    assert service.core.batcher.depth == 0
    assert REGISTRY.get_sample_value("nextgpt_decoder_queue_depth", {"modality": "image"}) == 0


def test_max_queue_setting() -> None:
    assert DecoderServiceSettings(modality="image").max_queue == DEFAULT_MAX_QUEUE == 64
    flags = ["--modality", "image", "--max-queue", "8"]
    settings = load_settings(DecoderServiceSettings, ENV_PREFIX, flags, {})
    assert settings.max_queue == 8 and build_core(settings).batcher.max_queue == 8
    with pytest.raises(ConfigError, match="max_queue=0"):
        DecoderServiceSettings(modality="image", max_queue=0)


# -- a real process ---------------------------------------------------------------------------------


def _poll(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


BYTES = "nextgpt_grpc_message_bytes_sum"


def test_server_process(tiny_models_dir: Path, spans) -> None:
    port, metrics_port = free_ports(2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEXTGPT_MODELS_DIR": str(tiny_models_dir)}
    env.pop("NEXTGPT_CONFIG", None)
    env["NEXTGPT_PROFILE"] = "tiny"
    args = [
        "--modality",
        "audio",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--host",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.decoders.server", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    return False
                return status == health_pb2.HealthCheckResponse.SERVING

            _poll(serving, "health SERVING")
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
            )
            names = {s.name for s in answer.list_services_response.service}
            assert {"nextgpt.v1.DecoderService", "grpc.health.v1.Health"} <= names
            stub = decoder_pb2_grpc.DecoderServiceStub(channel)
            request = _request(spans["audio"], steps=2)
            response = stub.Decode(request, timeout=TIMEOUT)
            _check_media(response.media, "audio")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        for name in (
            'nextgpt_decoder_media_total{modality="audio"} 1.0',
            'nextgpt_decoder_batch_size_count{modality="audio"} 1.0',
            'nextgpt_decoder_stage_seconds_count{modality="audio",stage="diffuse"} 1.0',
            'nextgpt_decoder_queue_depth{modality="audio"} 0.0',
            # the bytes on the wire, read off the serializers: exactly the messages' encoded sizes
            f'{BYTES}{{direction="received",method="Decode"}} {float(request.ByteSize())}',
            f'{BYTES}{{direction="sent",method="Decode"}} {float(response.ByteSize())}',
        ):
            assert name in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
