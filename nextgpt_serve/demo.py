"""`make demo`: start the local cluster, send any-to-any requests through the gateway (REST and gRPC),
save the media under `out/demo/`, and shut the cluster down.

The tiny profile has random weights, so the text is gibberish; the point is that every path through the
cluster runs end to end with the real loading code and writes valid PNG / MP4 / WAV files.
`nextgpt demo --in-process` runs the same requests through `nextgpt.pipeline.NextGPT` in one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from nextgpt.config import GenerationOptions
from nextgpt.media.files import write_media
from nextgpt.media.samples import sample_inputs
from nextgpt.types import MediaItem, Message
from nextgpt_serve import rest

if TYPE_CHECKING:
    from services.launcher import LocalCluster

console = Console()

# (name, prompt, input media, requested outputs)
REQUESTS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("text-to-image", "Show me a picture of a yellow sun.", (), ("text", "image")),
    ("image-to-text", "What is in this image?", ("image",), ("text",)),
    ("audio-to-video", "Make a video for this sound.", ("audio",), ("text", "video")),
    ("text-to-audio", "Play the sound of rain.", (), ("text", "audio")),
    (
        "image+audio-to-all",
        "Answer with a picture, a video and a sound.",
        ("image", "audio"),
        ("text", "image", "video", "audio"),
    ),
]


def run_demo(
    out: Path,
    *,
    profile: str | None = None,
    models_dir: Path | None = None,
    in_process: bool = False,
    engine: str = "auto",
) -> list[Path]:
    """Run every demo request; returns the media files written. `engine`: the cluster LLM's `--engine`."""
    send = _in_process_sender(profile, models_dir) if in_process else None
    if send is not None:
        return _run_all(out, send)
    from services.launcher import ClusterPorts, LocalCluster

    console.print("starting the local cluster (Redis, encoder, LLM, 3 decoders, gateway)...")
    with LocalCluster(
        models_dir=models_dir,
        profile=profile,
        cluster_ports=ClusterPorts.free(),
        log_dir=out / "logs",
        engine=engine,
    ) as cluster:
        console.print(f"gateway: REST {cluster.rest_url}  gRPC {cluster.grpc_target}")
        return _run_all(out, _cluster_sender(cluster))


Reply = tuple[str, list[MediaItem], list[str], str]
"""Text, media, error lines, and how the request went (in-process, gRPC, REST)."""
Sender = Callable[[int, str, list[MediaItem], tuple[str, ...]], Reply]


def _run_all(out: Path, send: Sender) -> list[Path]:
    inputs = sample_inputs()
    written: list[Path] = []
    summary = []
    for index, (name, prompt, media_names, modalities) in enumerate(REQUESTS):
        started = time.perf_counter()
        text, media, errors, via = send(index, prompt, [inputs[m] for m in media_names], modalities)
        paths = write_media(media, out, prefix=f"{name}-")
        written += paths
        console.print(f"[bold]{name}[/bold] via {via} ({time.perf_counter() - started:.1f}s): {text[:60]!r}")
        for path in paths:
            console.print(f"  wrote {path}")
        for error in errors:
            console.print(f"  [red]{error}[/red]")
        summary.append({"request": name, "via": via, "text": text, "media": [str(p) for p in paths]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"media saved under [bold]{out}[/bold]")
    return written


def _in_process_sender(profile: str | None, models_dir: Path | None) -> Sender:
    from nextgpt.pipeline import NextGPT
    from nextgpt.profiles import load_profile

    model = NextGPT.from_profile(load_profile(profile, models_dir=models_dir), progress=True)

    def send(index: int, prompt: str, media: list[MediaItem], modalities: tuple[str, ...]) -> Reply:
        options = GenerationOptions(seed=0, max_new_tokens=48, modalities=modalities)
        result = model.generate([Message("user", prompt, media)], options)
        return result.text, result.media, [f"{e.modality}: {e.message}" for e in result.errors], "in-process"

    return send


def _cluster_sender(cluster: LocalCluster) -> Sender:
    """Even requests go over REST (OpenAI-compatible), odd ones over gRPC (Python client)."""
    from nextgpt_serve.client import NextGPTClient

    def send(index: int, prompt: str, media: list[MediaItem], modalities: tuple[str, ...]) -> Reply:
        if index % 2:
            with NextGPTClient(cluster.grpc_target, timeout_s=300) as client:
                options = GenerationOptions(seed=0, max_new_tokens=48, modalities=modalities)
                grpc_reply = client.generate([Message("user", prompt, media)], options)
            errors = [f"{e.modality}: {e.message}" for e in grpc_reply.errors]
            return grpc_reply.text, grpc_reply.media, errors, "gRPC"
        options = GenerationOptions(seed=0, max_new_tokens=48, modalities=modalities)
        result = rest.chat(cluster.rest_url, rest.chat_body(prompt, media, options, "nextgpt-tiny"))
        return result.text, result.media, [f"{e.modality}: {e.message}" for e in result.errors], "REST"

    return send
