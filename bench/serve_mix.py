"""The mix of `bench/serve.py`: its request types, their REST requests with fresh media (each one costs the
encoder a real encode), one streamed request measured (latency, time to first token and first medium),
and the statistics of a level."""

from __future__ import annotations

import itertools
import json
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np

from nextgpt.types import MediaItem
from nextgpt_serve.rest import content_parts


@dataclass(frozen=True)
class Kind:
    """One request type of the mix: prompt, input media (names in `sample_inputs()`), outputs asked for."""

    name: str
    prompt: str
    inputs: tuple[str, ...]
    modalities: tuple[str, ...]

    @property
    def media_out(self) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m != "text")


# The prompts of bench/pipeline_tiny.py, so both benchmarks time the same requests.
MIX = (
    Kind("text->text", "Hello there.", (), ("text",)),
    Kind("image->text", "Describe this.", ("image",), ("text",)),
    Kind("text->image", "A picture of a cat.", (), ("text", "image")),
    Kind("audio->video", "A video for this.", ("audio",), ("text", "video")),
    Kind("text->audio", "The sound of rain.", (), ("text", "audio")),
)


@dataclass
class Sample:
    """One finished request. Times in seconds from the request's start; `error` None = success."""

    kind: str
    latency: float
    ttft: float | None = None
    ttfm: float | None = None
    tokens: int = 0
    error: str | None = None


_FRESH = itertools.count()
"""Numbers the input media of a run, so that no two requests send the same bytes."""


def fresh(item: MediaItem, n: int) -> MediaItem:
    """`item` in bytes no other request of the run sends (a PNG text chunk, the WAV's last PCM-16
    sample), so that every request costs the encoder a real encode, as varied user media would, in the
    serial loop and in the cluster alike (the cluster's embedding cache keys on the bytes)."""
    if item.mime_type == "image/png":
        chunk = b"tEXt" + b"nonce\x00" + str(n).encode()
        body = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
        return MediaItem(item.modality, item.data[:-12] + body + item.data[-12:], item.mime_type)
    if item.mime_type == "audio/wav":
        return MediaItem(item.modality, item.data[:-2] + struct.pack("<h", n % 32768), item.mime_type)
    raise ValueError(f"no way to vary {item.mime_type}")


def media_for(kind: Kind, inputs: dict[str, MediaItem]) -> list[MediaItem]:
    return [fresh(inputs[m], next(_FRESH)) for m in kind.inputs]


# --- statistics --------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50 / p95 / mean in milliseconds, or None without values."""
    if not values:
        return None
    ms = np.asarray(values) * 1000
    p50, p95 = np.percentile(ms, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "mean": round(float(ms.mean()), 2)}


def timings(ok: list[Sample]) -> dict[str, dict[str, float] | None]:
    return {
        "latency_ms": percentiles([s.latency for s in ok]),
        "ttft_ms": percentiles([s.ttft for s in ok if s.ttft is not None]),
        "ttfm_ms": percentiles([s.ttfm for s in ok if s.ttfm is not None]),
    }


def summarize(samples: list[Sample], wall_s: float) -> dict:
    """A level's numbers: requests/s counts successful requests; latencies are of successful ones."""
    ok = [s for s in samples if s.error is None]
    per_type = {
        k.name: {
            "ok": sum(1 for s in ok if s.kind == k.name),
            "errors": sum(1 for s in samples if s.kind == k.name and s.error),
            **timings([s for s in ok if s.kind == k.name]),
        }
        for k in MIX
    }
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "error_kinds": dict(Counter(s.error.split(":", 1)[0] for s in samples if s.error)),
        "error_samples": list(dict.fromkeys(s.error for s in samples if s.error))[:5],
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 3),
        "tokens_per_s": round(sum(s.tokens for s in ok) / wall_s, 1),
        **timings(ok),
        "per_type": per_type,
    }


def request_body(kind: Kind, inputs: dict[str, MediaItem], max_new_tokens: int, seed: int) -> dict:
    """The JSON body of one request of the mix, with fresh input media (README: API)."""
    content = [{"type": "text", "text": kind.prompt}, *content_parts(media_for(kind, inputs))]
    return {
        "messages": [{"role": "user", "content": content}],
        "modalities": list(kind.modalities),
        "max_tokens": max_new_tokens,
        "stream": True,
        "seed": seed,
    }


async def send_rest(client: httpx.AsyncClient, url: str, kind: Kind, body: dict) -> Sample:
    """One streamed request. TTFT: the first non-empty text delta; first medium: the first image/video
    content part or audio delta, whenever it comes (before or after the text ends)."""
    t0 = time.perf_counter()
    sample = Sample(kind.name, 0.0)
    got: set[str] = set()
    media_errors: list[str] = []
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                sample.error = f"http {response.status_code}: {text}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    now = time.perf_counter() - t0
                    event = json.loads(line[6:])
                    if "error" in event:  # in-band: the status line had been sent
                        sample.error = f"stream: {event['error'].get('message', event['error'])}"
                        continue
                    delta = event["choices"][0]["delta"]
                    content = delta.get("content")
                    if isinstance(content, str) and content and sample.ttft is None:
                        sample.ttft = now
                    parts = content if isinstance(content, list) else []
                    found = {p["type"].removesuffix("_url") for p in parts} | (
                        {"audio"} if delta.get("audio") else set()
                    )
                    if found and sample.ttfm is None:
                        sample.ttfm = now
                    got |= found
                    if event.get("nextgpt", {}).get("error"):
                        e = event["nextgpt"]["error"]
                        media_errors.append(f"{e.get('modality')}: {e.get('message')}")
                    if event.get("usage"):
                        sample.tokens = event["usage"].get("completion_tokens", 0)
    except (httpx.HTTPError, httpx.StreamError, json.JSONDecodeError, KeyError) as exc:
        sample.error = f"client: {type(exc).__name__}: {exc}"
    sample.latency = time.perf_counter() - t0
    missing = [m for m in kind.media_out if m not in got]
    if sample.error is None and (missing or media_errors):
        sample.error = f"media: missing {missing}; {media_errors}"
    return sample
