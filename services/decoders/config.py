"""Settings of a decoder service: flags > `NEXTGPT_DECODER_*` env vars > these defaults."""

from __future__ import annotations

from dataclasses import dataclass

from nextgpt.errors import ConfigError
from nextgpt.types import MODALITIES
from services.common import ports

ENV_PREFIX = "NEXTGPT_DECODER_"

BATCHING: dict[str, dict[str, tuple[int, float]]] = {
    # (max_batch, max_wait_ms) by profile and modality, from bench/decoder_batching.py (CPU, one thread;
    # bench/results/decoder_batching.json). Per item, a batch of 16 costs 0.21x a single image and 0.30x
    # a single sound: 16 pays. Video stops paying past 8 (0.50x a single per item at 8, 0.48x at 16)
    # while a batch of 16 takes 3.6 s. A request in a burst waits up to ~5% of a single decode for company;
    # a lone one starts at once (services/common/batching.py).
    "tiny": {"image": (16, 10.0), "video": (8, 25.0), "audio": (16, 10.0)},
}
FALLBACK_BATCHING = (4, 10.0)
"""Other profiles (real sizes, GPUs): not measured here; a batch of 16 Zeroscope videos may not fit."""
DEFAULT_MAX_QUEUE = 64
"""Requests waiting per decoder before new ones get RESOURCE_EXHAUSTED: four full tiny image batches of 16
(~2 s of queued work, bench/results/decoder_batching.json); a client does better to retry than to wait."""


def default_batching(profile: str, modality: str) -> tuple[int, float]:
    """(max_batch, max_wait_ms) for one decoder of `profile`, when the settings leave them unset."""
    return BATCHING.get(profile, {}).get(modality, FALLBACK_BATCHING)


@dataclass
class DecoderServiceSettings:
    """One modality's decoder service (gRPC nextgpt.v1.DecoderService): output projector + diffusion."""

    modality: str = ""
    """Required: which decoder this process serves, image, video or audio."""
    port: int | None = None
    """gRPC port to listen on (default by modality: image 50063, video 50064, audio 50065; 0 picks a
    free one)."""
    host: str = "127.0.0.1"
    """Interface for the gRPC and /metrics ports: loopback by default (the local cluster); containers
    set 0.0.0.0 (NEXTGPT_DECODER_HOST) so other pods and probes reach them."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics HTTP endpoint (default by modality: 9163 / 9164 / 9165; 0
    disables it)."""
    profile: str | None = None
    """Model profile whose projector and decoder are loaded (default: NEXTGPT_PROFILE or "tiny")."""
    config_file: str | None = None
    """YAML/TOML profile overrides (default: NEXTGPT_CONFIG)."""
    models_dir: str | None = None
    """Directory holding the weights (default: NEXTGPT_MODELS_DIR or ./models)."""
    max_batch: int | None = None
    """Most requests (with equal settings) that run through one projector + pipeline call (default: by
    profile and modality, `BATCHING`: tiny image 16, video 8, audio 16; 4 for other profiles)."""
    max_wait_ms: float | None = None
    """How long the first request of a batch waits for others to join, in milliseconds, when it came in a
    burst (within this long of the previous request; a lone one starts at once). Default: by profile and
    modality, `BATCHING`: tiny image 10, video 25, audio 10; 10 for other profiles."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Most requests waiting for a batch (all settings together); past it a request is refused with
    RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms` (the mean batch time x the batches ahead, >= 1 s)."""
    grace_s: float = 30.0
    """On SIGTERM, how long in-flight batches may take to finish, in seconds."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"modality={self.modality!r}: pass --modality image|video|audio (or set {ENV_PREFIX}MODALITY)"
            )
        if self.port is None:
            self.port = ports.DECODERS[self.modality]
        if self.metrics_port is None:
            self.metrics_port = ports.DECODER_METRICS[self.modality]
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch={self.max_batch} must be at least 1")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue={self.max_queue} must be at least 1")
        if (self.max_wait_ms is not None and self.max_wait_ms < 0) or self.grace_s < 0:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms} and grace_s={self.grace_s} must be >= 0")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ConfigError(f"{name}={getattr(self, name)} is not a TCP port")

    @property
    def metrics_enabled_port(self) -> int | None:
        """The /metrics port to start, or None when disabled (metrics_port 0)."""
        return self.metrics_port or None
