"""Mixed any-to-any traffic for locust: REST (OpenAI-compatible) and gRPC (nextgpt.v1.NextGPT) users.

Request types, weighted roughly as a chat product sees them: text chat, image understanding,
text->image, audio->video, and all-modality (image + audio in, text + image + video + audio out).
A request fails when the status is not OK or a requested medium is missing (an error entry counts as a
failure here, though the gateway degrades gracefully), so "0 failures" means every path worked.

    locust -f tests/load/locustfile.py --headless -u 4 -r 2 -t 30s --host http://127.0.0.1:8000 \
        --grpc-target 127.0.0.1:50051
(`make load` / tests/load/run_load.py start a local cluster and do this for you.)
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
import soundfile as sf
from locust import FastHttpUser, User, between, events, task
from PIL import Image

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc

grpc_gevent.init_gevent()  # gRPC's I/O must cooperate with locust's gevent loop


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--grpc-target", default="127.0.0.1:50051", help="gateway gRPC host:port")
    parser.add_argument("--api-key", default=os.environ.get("NEXTGPT_LOAD_API_KEY", ""), help="gateway key")
    parser.add_argument(
        "--max-tokens", type=int, default=48, help="max_new_tokens (all-modality needs >= 36)"
    )
    parser.add_argument("--model", default="nextgpt-tiny", help="served model name")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")


def _png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _wav() -> bytes:
    t = np.arange(16000 * 2) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), 16000, format="WAV")
    return buf.getvalue()


PNG, WAV = _png(), _wav()

# name -> (prompt, input media, requested outputs, weight)
REQUESTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], int]] = {
    "text-chat": ("Tell me about foxes.", (), ("text",), 4),
    "image-understanding": ("What is in this image?", ("image",), ("text",), 3),
    "text-to-image": ("Show me a picture of a red fox.", (), ("text", "image"), 2),
    "audio-to-video": ("Make a video for this sound.", ("audio",), ("text", "video"), 1),
    "all-modality": (
        "Answer with a picture, a video and a sound.",
        ("image", "audio"),
        ("text", "image", "video", "audio"),
        1,
    ),
}
MODALITY = {
    "text": common_pb2.MODALITY_TEXT,
    "image": common_pb2.MODALITY_IMAGE,
    "video": common_pb2.MODALITY_VIDEO,
    "audio": common_pb2.MODALITY_AUDIO,
}


def _missing(requested: tuple[str, ...], produced: list[str], errors: list[str]) -> str | None:
    """Why a reply does not hold every requested medium, or None."""
    absent = [m for m in requested if m != "text" and m not in produced]
    if absent or errors:
        return f"missing {absent}; errors {errors}"
    return None


class RestUser(FastHttpUser):
    """OpenAI-compatible REST: POST /v1/chat/completions with data-URL / input_audio parts."""

    wait_time = between(0.5, 1.5)
    network_timeout = 300.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        for kind in REQUESTS:  # every request type once first: a short run still covers each path
            self._send(kind)

    def _send(self, kind: str) -> None:
        opts = self.environment.parsed_options
        prompt, inputs, outputs, _ = REQUESTS[kind]
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if "image" in inputs:
            url = "data:image/png;base64," + base64.b64encode(PNG).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        if "audio" in inputs:
            content.append(
                {
                    "type": "input_audio",
                    "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"},
                }
            )
        body = {
            "model": opts.model,
            "messages": [{"role": "user", "content": content}],
            "modalities": list(outputs),
            "max_tokens": opts.max_tokens,
            "seed": 0,
        }
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, name=f"REST {kind}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            reply = response.json()
            message = reply["choices"][0]["message"]
            parts = message["content"] if isinstance(message["content"], list) else []
            produced = [p["type"].removesuffix("_url") for p in parts if p["type"] != "text"]
            if message.get("audio"):
                produced.append("audio")
            errors = [f"{e['modality']}: {e['message']}" for e in reply["nextgpt"]["errors"]]
            if problem := _missing(outputs, produced, errors):
                response.failure(problem)

    @task(REQUESTS["text-chat"][3])
    def text_chat(self) -> None:
        self._send("text-chat")

    @task(REQUESTS["image-understanding"][3])
    def image_understanding(self) -> None:
        self._send("image-understanding")

    @task(REQUESTS["text-to-image"][3])
    def text_to_image(self) -> None:
        self._send("text-to-image")

    @task(REQUESTS["audio-to-video"][3])
    def audio_to_video(self) -> None:
        self._send("audio-to-video")

    @task(REQUESTS["all-modality"][3])
    def all_modality(self) -> None:
        self._send("all-modality")


class GrpcUser(User):
    """gRPC nextgpt.v1.NextGPT/Generate; results reported to locust as request type "gRPC"."""

    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.channel = grpc.insecure_channel(
            opts.grpc_target,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.stub = nextgpt_pb2_grpc.NextGPTStub(self.channel)
        self.metadata = [("authorization", f"Bearer {opts.api_key}")] if opts.api_key else []
        for kind in REQUESTS:  # every request type once first: a short run still covers each path
            self._send(kind)

    def on_stop(self) -> None:
        self.channel.close()

    def _send(self, kind: str) -> None:
        opts = self.environment.parsed_options
        prompt, inputs, outputs, _ = REQUESTS[kind]
        media = []
        if "image" in inputs:
            media.append(
                common_pb2.Media(modality=common_pb2.MODALITY_IMAGE, data=PNG, mime_type="image/png")
            )
        if "audio" in inputs:
            media.append(
                common_pb2.Media(modality=common_pb2.MODALITY_AUDIO, data=WAV, mime_type="audio/wav")
            )
        request = nextgpt_pb2.GenerateRequest(
            messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=prompt, media=media)],
            options=common_pb2.GenerationOptions(
                max_new_tokens=opts.max_tokens, seed=0, modalities=[MODALITY[m] for m in outputs]
            ),
        )
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            reply = self.stub.Generate(request, timeout=opts.request_timeout, metadata=self.metadata)
            length = reply.ByteSize()
            produced = [
                common_pb2.Modality.Name(m.modality).removeprefix("MODALITY_").lower() for m in reply.media
            ]
            errors = [f"{common_pb2.Modality.Name(e.modality)}: {e.message}" for e in reply.errors]
            if problem := _missing(outputs, produced, errors):
                exception = RuntimeError(problem)
        except grpc.RpcError as exc:
            exception = RuntimeError(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        self.environment.events.request.fire(
            request_type="gRPC",
            name=f"gRPC {kind}",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    @task(REQUESTS["text-chat"][3])
    def text_chat(self) -> None:
        self._send("text-chat")

    @task(REQUESTS["image-understanding"][3])
    def image_understanding(self) -> None:
        self._send("image-understanding")

    @task(REQUESTS["text-to-image"][3])
    def text_to_image(self) -> None:
        self._send("text-to-image")

    @task(REQUESTS["audio-to-video"][3])
    def audio_to_video(self) -> None:
        self._send("audio-to-video")

    @task(REQUESTS["all-modality"][3])
    def all_modality(self) -> None:
        self._send("all-modality")
