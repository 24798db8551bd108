"""Pure pieces of the gateway: settings, span selection, data URLs, option checks, status mapping."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.admission import Admission
from gateway.backends import map_rpc_error
from gateway.config import ENV_PREFIX, GatewaySettings
from gateway.openai_serving import parse_data_url
from gateway.serving import check_media, check_options
from nextgpt.config import DecodeOptions, GenerationOptions
from nextgpt.errors import (
    BackendError,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    Overloaded,
)
from nextgpt.spans import SpanChooser
from nextgpt.types import MediaItem, Message
from services.common.settings import load_settings


def test_settings_from_flags_and_env():
    env = {
        f"{ENV_PREFIX}API_KEYS": "a, b",
        f"{ENV_PREFIX}REQUEST_TIMEOUT_S": "12.5",
        f"{ENV_PREFIX}GRPC_PORT": "1",
    }
    s = load_settings(GatewaySettings, ENV_PREFIX, ["--grpc-port", "6000", "--audio-decoder-target", ""], env)
    assert s.api_keys == ["a", "b"] and s.request_timeout_s == 12.5 and s.grpc_port == 6000
    assert s.audio_decoder_target == "" and s.http_port == 8000 and s.encoder_target == "127.0.0.1:50061"
    with pytest.raises(ConfigError, match="request_timeout_s=0"):
        GatewaySettings(request_timeout_s=0)


def test_span_chooser_keeps_the_first_per_modality():
    chooser = SpanChooser(limit=2)
    assert [chooser.take(m) for m in ("audio", "image", "image", "image")] == [0, 0, 1, None]
    assert chooser.warnings() == [
        "the reply holds 3 image spans; decoding the first 2 (raise max_media_per_modality for more)"
    ]
    assert SpanChooser(limit=0).take("image") is None


def test_parse_data_url():
    assert parse_data_url("data:image/png;base64,aGk=", "u", 10) == ("image/png", b"hi")
    for url, expected in [
        ("http://example.com/a.png", "'http' URLs are not supported"),
        ("data:image/png,hi", "must be base64-encoded"),
        ("data:image/png;base64,a", "not valid base64"),
        ("data:image/png;base64,aGk=\u00e9", "non-ASCII"),
        ("data:image/png;base64," + "A" * 100, "over the gateway's limit of 10 bytes"),
    ]:
        with pytest.raises(InvalidInput, match=expected):
            parse_data_url(url, "u", 10)


def test_check_media_and_options():
    with pytest.raises(InvalidInput, match=r"messages\[0\].media\[0\]: MIME type 'video/mp4' is video"):
        check_media([Message("user", "x", [MediaItem("image", b"x", "video/mp4")])], 100)
    with pytest.raises(InvalidInput, match="unsupported media type 'text/plain'"):
        check_media([Message("user", "x", [MediaItem("image", b"x", "text/plain")])], 100)
    check_options(GenerationOptions(image=DecodeOptions(steps=4, height=64, width=64)))
    with pytest.raises(InvalidInput, match=r"options.audio: audio_seconds=0 must be in \(0, 60.0\]"):
        check_options(GenerationOptions(audio=DecodeOptions(audio_seconds=0)))


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


TRANSPORT = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50061: Connection refused"
)


def test_backend_status_codes_become_domain_errors():
    assert type(map_rpc_error("llm", _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad"))) is InvalidInput
    assert str(map_rpc_error("llm", _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad"))) == "bad"
    assert isinstance(map_rpc_error("llm", _RpcError(grpc.StatusCode.UNAVAILABLE, "x")), ModelNotReady)
    assert isinstance(
        map_rpc_error("llm", _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x")), DeadlineExceeded
    )
    assert isinstance(map_rpc_error("llm", _RpcError(grpc.StatusCode.INTERNAL, "x")), BackendError)


def test_backend_errors_hide_transport_texts_and_keep_retry_hints():
    """No internal address or raw gRPC text reaches the client; a backend's pushback does."""
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        message = str(map_rpc_error("image decoder", _RpcError(code, TRANSPORT)))
        assert "127.0.0.1" not in message and "ipv4" not in message and "image decoder" in message
    pushback = (("grpc-retry-pushback-ms", "2500"),)
    busy = map_rpc_error("llm", _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", pushback))
    assert isinstance(busy, Overloaded) and busy.retry_after_s == 2.5
    assert map_rpc_error("llm", _RpcError(grpc.StatusCode.UNAVAILABLE, "x")).retry_after_s == 1.0


def test_admission_serves_waits_then_refuses_with_a_retry_hint():
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_waiting=1, max_wait_s=600)
        release = asyncio.Event()
        order: list[str] = []

        async def request(name: str) -> None:
            async with admission.slot():
                order.append(name)
                await release.wait()

        first = asyncio.ensure_future(request("first"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(request("second"))
        await asyncio.sleep(0)
        assert admission.in_flight == 1 and admission.waiting == 1
        with pytest.raises(Overloaded, match="at capacity") as refused:
            await request("third")
        assert refused.value.retry_after_s is not None and 1 <= refused.value.retry_after_s <= 60
        release.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and admission.in_flight == 0

    asyncio.run(main())


def test_admission_refuses_a_request_that_waited_too_long():
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_waiting=8, max_wait_s=0.05)
        release = asyncio.Event()

        async def hold() -> None:
            async with admission.slot():
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="within 0.05 s"):
            async with admission.slot():
                pass
        assert admission.waiting == 0
        release.set()
        await holder

    asyncio.run(main())


def test_encoder_complaints_name_the_medium_as_the_client_sent_it():
    """The encoder numbers its inputs across the request; the client reads its own indexing."""
    from gateway.backends import CallInfo
    from gateway.serving import GatewayCore

    class Backends:
        async def encode(self, request, call):
            raise InvalidInput("inputs[1].media: cannot decode the image")

    png = MediaItem("image", b"png", "image/png")
    messages = [Message("user", "a", [png]), Message("assistant", "b"), Message("user", "c", [png, png])]
    names = [["messages[0].content[1]"], [], ["messages[2].content[0]", "messages[2].content[2]"]]
    core = GatewayCore(GatewaySettings(), Backends())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^messages\[2\]\.content\[0\]: cannot decode the image$"):
        asyncio.run(core._encode(messages, CallInfo("r", 5.0), names))


def test_rest_error_labels_map_back_to_the_domain_errors():
    """A client reading a REST error gets the error the gateway raised, by the one table."""
    from nextgpt.errors import Unauthenticated, from_label, status_of

    assert type(from_label("invalid_api_key", "no key")) is Unauthenticated
    overloaded = from_label("overloaded", "busy", retry_after_s=3)
    assert isinstance(overloaded, Overloaded) and overloaded.retry_after_s == 3
    client_visible = ("model_not_found", "invalid_argument", "invalid_api_key", "overloaded", "unavailable")
    for label in (*client_visible, "deadline_exceeded", "bad_gateway"):
        assert status_of(from_label(label, "m")).label == label
    assert isinstance(from_label("no_such_label", "m"), BackendError)
