"""Settings of the encoder service: flags > `NEXTGPT_ENCODER_*` env vars > these defaults."""

from __future__ import annotations

from dataclasses import dataclass

from nextgpt.errors import ConfigError
from nextgpt.media import budgets
from nextgpt.media.budgets import MediaBudgets
from services.common import ports

ENV_PREFIX = "NEXTGPT_ENCODER_"


@dataclass
class EncoderServiceSettings:
    """The ImageBind encoder service (gRPC nextgpt.v1.EncoderService)."""

    port: int = ports.ENCODER
    """gRPC port to listen on (0 picks a free one)."""
    host: str = "127.0.0.1"
    """Interface for the gRPC and /metrics ports: loopback by default (the local cluster); containers
    set 0.0.0.0 (NEXTGPT_ENCODER_HOST) so other pods and probes reach them."""
    metrics_port: int | None = ports.ENCODER_METRICS
    """Port of the Prometheus /metrics HTTP endpoint ("none" disables it)."""
    profile: str | None = None
    """Model profile whose `encoder` section is loaded (default: NEXTGPT_PROFILE or "tiny")."""
    config_file: str | None = None
    """YAML/TOML profile overrides (default: NEXTGPT_CONFIG)."""
    models_dir: str | None = None
    """Directory holding the weights (default: NEXTGPT_MODELS_DIR or ./models)."""
    max_batch: int = 16
    """Most inputs of one modality that run through ImageBind as one batch."""
    max_wait_ms: float = 5.0
    """How long the first input of a batch waits for others to join, in milliseconds, when it came in a
    burst (within this long of the previous input; a lone one starts at once)."""
    max_inputs: int = 16
    """Most inputs (media and texts) one Encode request may carry; the gateway sends every medium of a
    chat request in one Encode call, so this is also the most media per chat request (HTTP 400 above)."""
    max_media_bytes: int = 32 * 1024 * 1024
    """Largest accepted input (file bytes, or UTF-8 bytes for text); larger is INVALID_ARGUMENT."""
    max_image_pixels: int = budgets.MAX_IMAGE_PIXELS
    """Most pixels (width x height) of an input image, read from its header before decoding (4096 x 4096
    by default: ~50 MB as RGB). A 63 KB PNG can declare 8192 x 8192; it is refused undecoded."""
    max_audio_seconds: float = budgets.MAX_AUDIO_SECONDS
    """Longest input audio, in seconds (header duration, then decoded samples)."""
    max_audio_channels: int = budgets.MAX_AUDIO_CHANNELS
    """Most channels of an input audio stream."""
    max_video_seconds: float = budgets.MAX_VIDEO_SECONDS
    """Longest input video, in seconds (frames / average frame rate)."""
    max_video_frame_pixels: int = budgets.MAX_VIDEO_FRAME_PIXELS
    """Most pixels of one input video frame (1920 x 1088 by default). Only the <= 10 frames ImageBind
    samples are decoded to RGB and kept, so a video costs at most 10 frames of this size."""
    max_video_decoded_pixels: int = budgets.MAX_VIDEO_DECODED_PIXELS
    """Most pixels decoded for one input video, frames skipped on the way to a sampled one included
    (2^31: ~1000 frames of 1080p); bounds the CPU time of long videos with few keyframes."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the shared embedding cache; empty = no Redis (in-process LRU only). Run Redis with
    `maxmemory` and `maxmemory-policy allkeys-lru` (the launcher does): that bounds its size."""
    cache_ttl_s: int = 7 * 24 * 3600
    """Lifetime of a cached embedding in Redis, in seconds."""
    cache_max_entries: int = 4096
    """Entries of the in-process LRU cache (fallback and warm standby for Redis)."""
    max_queue: int = 256
    """Inputs that may wait for a batch (cache misses, all modalities); more are refused with
    RESOURCE_EXHAUSTED and a retry hint. 16 full requests of `max_inputs`; a tiny batch takes ~10 ms."""
    grace_s: float = 30.0
    """On SIGTERM, how long in-flight requests may take to finish, in seconds."""

    def __post_init__(self) -> None:
        for name in (
            "max_batch",
            "max_inputs",
            "max_media_bytes",
            "cache_ttl_s",
            "cache_max_entries",
            "max_queue",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_wait_ms < 0 or self.grace_s < 0:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms} and grace_s={self.grace_s} must be >= 0")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port={self.port} is not a TCP port")
        self.media_budgets()  # checks the budget settings

    def media_budgets(self) -> MediaBudgets:
        """The per-input decoding budgets these settings give (`nextgpt.media.budgets`)."""
        return MediaBudgets(
            max_image_pixels=self.max_image_pixels,
            max_audio_seconds=self.max_audio_seconds,
            max_audio_channels=self.max_audio_channels,
            max_video_seconds=self.max_video_seconds,
            max_video_frame_pixels=self.max_video_frame_pixels,
            max_video_decoded_pixels=self.max_video_decoded_pixels,
        )
