"""Overload: many simultaneous requests against the local cluster, and how every one of them ends.

    OMP_NUM_THREADS=1 .venv/bin/python bench/overload.py [--rest 200] [--grpc 100]

Starts the local cluster (HF engine, tiny profile, default settings: the gateway serves 32 requests at
once and lets 64 wait), then sends `--rest` REST requests (each on its own connection) and `--grpc` gRPC
calls all at the same moment: half text->text, half text->image. Every outcome is classified:

- answered: HTTP 200 / gRPC OK;
- refused with a retry hint: HTTP 429 or 503 with `Retry-After`, gRPC RESOURCE_EXHAUSTED or UNAVAILABLE
  with `grpc-retry-pushback-ms`;
- anything else (connection error, timeout, other status, a refusal without a hint) is a failure.

Writes bench/results/overload.{json,md}; exits 1 if any request failed (issue 14's acceptance).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc  # noqa: E402
import httpx  # noqa: E402

from nextgpt._proto import common_pb2, nextgpt_pb2, nextgpt_pb2_grpc  # noqa: E402
from nextgpt.errors import RETRY_PUSHBACK_KEY  # noqa: E402
from services.launcher import ClusterPorts, LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def rest_body(i: int) -> dict:
    return {
        "model": "nextgpt-tiny",
        "messages": [{"role": "user", "content": f"Request {i}: show me something."}],
        "modalities": ["text", "image"] if i % 2 else ["text"],
        "max_tokens": 24,
        "seed": i,
    }


async def one_rest(url: str, i: int, timeout_s: float) -> str:
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:  # its own connection, like 200 users
            response = await client.post(f"{url}/v1/chat/completions", json=rest_body(i))
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__}"
    if response.status_code == 200:
        return "answered"
    hint = response.headers.get("retry-after", "")
    if response.status_code in (429, 503) and hint.isdigit() and int(hint) >= 1:
        return f"refused {response.status_code} with Retry-After"
    return f"failed: HTTP {response.status_code} (Retry-After {hint!r})"


async def one_grpc(stub: nextgpt_pb2_grpc.NextGPTStub, i: int, timeout_s: float) -> str:
    modalities = [common_pb2.MODALITY_IMAGE] if i % 2 else []
    request = nextgpt_pb2.GenerateRequest(
        messages=[nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=f"Request {i}: show me something.")],
        options=common_pb2.GenerationOptions(max_new_tokens=24, seed=i, modalities=modalities),
    )
    try:
        await stub.Generate(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        pushback = dict(exc.trailing_metadata() or ()).get(RETRY_PUSHBACK_KEY, "")
        retryable = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
        if exc.code() in retryable and str(pushback).isdigit():
            return f"refused {exc.code().name} with pushback"
        return f"failed: {exc.code().name} (pushback {pushback!r})"
    return "answered"


async def burst(cluster: LocalCluster, n_rest: int, n_grpc: int, timeout_s: float) -> dict:
    async with grpc.aio.insecure_channel(cluster.grpc_target) as channel:
        stub = nextgpt_pb2_grpc.NextGPTStub(channel)
        await channel.channel_ready()
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(one_rest(cluster.rest_url, i, timeout_s) for i in range(n_rest)),
            *(one_grpc(stub, 10_000 + i, timeout_s) for i in range(n_grpc)),
        )
        wall_s = time.perf_counter() - started
    rest, grpc_ = outcomes[:n_rest], outcomes[n_rest:]
    return {
        "wall_s": round(wall_s, 2),
        "rest": dict(collections.Counter(rest)),
        "grpc": dict(collections.Counter(grpc_)),
        "failed": sum(o.startswith("failed") for o in outcomes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rest", type=int, default=200)
    parser.add_argument("--grpc", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    models = Path(os.environ.get("NEXTGPT_MODELS_DIR", ROOT / "models"))
    parser.add_argument("--models-dir", type=Path, default=models)
    parser.add_argument("--out", type=Path, default=RESULTS / "overload.json")
    args = parser.parse_args()
    with LocalCluster(models_dir=args.models_dir, cluster_ports=ClusterPorts.free(), engine="hf") as cluster:
        httpx.post(
            f"{cluster.rest_url}/v1/chat/completions", json=rest_body(1), timeout=120
        ).raise_for_status()
        result = asyncio.run(burst(cluster, args.rest, args.grpc, args.timeout_s))
    header = (
        f"{os.cpu_count()} CPUs ({platform.machine()}), {datetime.now(UTC).isoformat(timespec='seconds')}; "
        f"tiny profile, HF engine, default admission (32 in flight + 64 waiting); {args.rest} REST + "
        f"{args.grpc} gRPC requests sent at once"
    )
    report = {"machine": header, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [header, "", "| API | outcome | requests |", "| --- | --- | --- |"]
    for api in ("rest", "grpc"):
        lines += [f"| {api} | {outcome} | {n} |" for outcome, n in sorted(result[api].items())]
    lines += ["", f"{result['failed']} failed; all done in {result['wall_s']} s."]
    markdown = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
