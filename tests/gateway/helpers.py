"""Request builders shared by the gateway tests."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import httpx

from services.launcher import free_ports
from tests.gateway.fakes import FakeCluster, sample_mp4, sample_png, sample_wav


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_part(data: bytes | None = None, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(data or sample_png())}"}}


def video_part(data: bytes | None = None, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{b64(data or sample_mp4())}"}}


def audio_part(data: bytes | None = None, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data or sample_wav()), "format": fmt}}


def user(*parts: dict | str) -> dict:
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": "user", "content": parts[0]}
    return {
        "role": "user",
        "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts],
    }


def chat(cluster: FakeCluster, *messages: dict, headers: dict | None = None, **body) -> httpx.Response:
    body = {"model": "nextgpt-tiny", "messages": list(messages), **body}
    return httpx.post(f"{cluster.http_url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def media_of(content) -> list[tuple[str, bytes]]:
    """(part type, bytes) of every media part of a response message's content."""
    out = []
    for part in content if isinstance(content, list) else []:
        if part["type"] != "text":
            url = part[part["type"]]["url"]
            out.append((part["type"], base64.b64decode(url.split(",", 1)[1])))
    return out


ROOT = Path(__file__).resolve().parents[2]


def start_gateway_process(
    cluster: FakeCluster, env: dict[str, str] | None = None, *, output: int | None = subprocess.DEVNULL
) -> tuple[subprocess.Popen, int, int]:
    """`python -m gateway.server` against the fake backends, on free ports: (process, REST, gRPC port)."""
    http_port, grpc_port = free_ports(2)
    targets = {name: f"127.0.0.1:{server.port}" for name, server in cluster.servers.items()}
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NEXTGPT_GATEWAY_ENCODER_TARGET": targets["encoder"],
        "NEXTGPT_GATEWAY_LLM_TARGET": targets["llm"],
        **(env or {}),
    }
    args = ["--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    for m in ("image", "video", "audio"):
        args += [f"--{m}-decoder-target", targets[f"decoder.{m}"]]
    stderr = subprocess.STDOUT if output == subprocess.PIPE else output
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.server", *args], cwd=ROOT, env=full_env, stdout=output, stderr=stderr
    )
    return proc, http_port, grpc_port
