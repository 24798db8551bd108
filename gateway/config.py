"""Gateway settings: flags > `NEXTGPT_GATEWAY_*` env vars > defaults (see `services.common.settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nextgpt.errors import ConfigError
from nextgpt.types import MODALITIES
from services.common import ports

ENV_PREFIX = "NEXTGPT_GATEWAY_"


@dataclass
class GatewaySettings:
    """The NExT-GPT gateway: public gRPC (nextgpt.v1.NextGPT) and OpenAI-compatible REST APIs."""

    host: str = "0.0.0.0"
    """Interface both listeners bind to."""
    http_port: int = ports.GATEWAY_HTTP
    """REST (FastAPI) port; also serves /metrics, /healthz, /readyz and /docs."""
    grpc_port: int = ports.GATEWAY_GRPC
    """Public gRPC port (nextgpt.v1.NextGPT, health, reflection)."""
    encoder_target: str = f"127.0.0.1:{ports.ENCODER}"
    """host:port of the encoder service."""
    llm_target: str = f"127.0.0.1:{ports.LLM}"
    """host:port of the LLM service."""
    image_decoder_target: str = f"127.0.0.1:{ports.DECODERS['image']}"
    """host:port of the image decoder service; empty = none (image requests get an error entry)."""
    video_decoder_target: str = f"127.0.0.1:{ports.DECODERS['video']}"
    """host:port of the video decoder service; empty = none."""
    audio_decoder_target: str = f"127.0.0.1:{ports.DECODERS['audio']}"
    """host:port of the audio decoder service; empty = none."""
    model_name: str = "nextgpt-tiny"
    """Served model name (OpenAI `model`); adapter names from the LLM service are accepted too."""
    request_timeout_s: float = 300.0
    """Budget of one request in seconds; every backend call gets the remaining budget as its deadline."""
    encode_timeout_s: float | None = None
    """Optional cap on the encode stage in seconds (else the remaining request budget)."""
    llm_timeout_s: float | None = None
    """Optional cap on the LLM stage in seconds (else the remaining request budget)."""
    decode_timeout_s: float | None = None
    """Optional cap on each decoder call in seconds (else the remaining request budget)."""
    health_timeout_s: float = 1.0
    """Deadline of each backend health check made by /readyz."""
    max_media_bytes: int = 32 * 1024 * 1024
    """Largest accepted medium (decoded bytes); larger ones are rejected with 400 / INVALID_ARGUMENT."""
    max_request_bytes: int = 128 * 1024 * 1024
    """Largest accepted REST request body (base64 inflates media by 4/3); larger ones get 413, with or
    without a Content-Length (chunked bodies are counted as they arrive)."""
    api_keys: list[str] = field(default_factory=list)
    """Comma-separated API keys; when set, REST /v1/* needs `Authorization: Bearer KEY` (gRPC: the same
    `authorization` metadata)."""
    grace_s: float = 30.0
    """On SIGTERM: seconds in-flight requests get to finish before the listeners close."""
    max_in_flight: int = 32
    """Requests served at once (REST and gRPC together); more wait (`max_waiting`, `max_wait_s`). The
    default fits the tiny profile on 2 cores, saturated from 16 clients on (bench/results/serve.md);
    raise it with the backends' capacity (GPU replicas, bigger batches)."""
    max_waiting: int = 64
    """Requests that may wait for a slot; beyond them 429 / RESOURCE_EXHAUSTED at once, with a retry
    hint (`Retry-After` / `grpc-retry-pushback-ms`)."""
    max_wait_s: float = 10.0
    """Longest wait for a slot; then 429 / RESOURCE_EXHAUSTED with a retry hint."""

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}={getattr(self, name)} is not a port number (0..65535)")
        for name in ("request_timeout_s", "health_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0 seconds")
        for name in ("encode_timeout_s", "llm_timeout_s", "decode_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}={value} must be > 0 seconds (or unset)")
        if self.max_media_bytes <= 0 or self.max_request_bytes <= 0:
            raise ConfigError("max_media_bytes and max_request_bytes must be > 0")
        if self.grace_s < 0:
            raise ConfigError(f"grace_s={self.grace_s} must be >= 0")
        if self.max_in_flight < 1 or self.max_waiting < 0 or self.max_wait_s < 0:
            raise ConfigError(
                f"max_in_flight={self.max_in_flight} must be >= 1, max_waiting={self.max_waiting} and "
                f"max_wait_s={self.max_wait_s} >= 0"
            )
        if not self.encoder_target or not self.llm_target:
            raise ConfigError("encoder_target and llm_target must be set (host:port)")
        if not self.model_name:
            raise ConfigError("model_name must not be empty")

    def decoder_targets(self) -> dict[str, str]:
        """Each modality's `<modality>_decoder_target` (a flag / env var per modality, like the others)."""
        return {m: getattr(self, f"{m}_decoder_target") for m in MODALITIES}
