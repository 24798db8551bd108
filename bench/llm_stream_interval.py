"""What the LLM service's `stream_interval_ms` costs and saves: CPU per request (server and client) and
latency, at one client and at 16, for several intervals side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/llm_stream_interval.py [--intervals 0,20,50] [--rounds 4]

One LLM service process (HF engine, tiny profile) per interval, all started at once; each round sends the
same requests to every server in turn (so a drifting machine hits them alike). Requests are text-only
with 32 new tokens, streamed as the gateway reads them. Writes bench/results/stream_interval.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from nextgpt._proto import common_pb2, llm_pb2, llm_pb2_grpc  # noqa: E402
from services.launcher import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONCURRENCY = (1, 16)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(interval_ms: float, models_dir: Path, stack: ExitStack) -> tuple[subprocess.Popen, str]:
    port, metrics_port = free_ports(2)
    cmd = [sys.executable, "-m", "services.llm.server", "--engine", "hf", "--host", "127.0.0.1"]
    cmd += [
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--stream-interval-ms",
        str(interval_ms),
    ]
    env = {**os.environ, "NEXTGPT_MODELS_DIR": str(models_dir), "NEXTGPT_PROFILE": "tiny"}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    return process, f"127.0.0.1:{port}"


async def wait_serving(address: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING in {timeout_s} s")
            await asyncio.sleep(0.5)


def request(i: int, max_new_tokens: int) -> llm_pb2.LLMGenerateRequest:
    sampling = llm_pb2.SamplingOptions(max_new_tokens=max_new_tokens, temperature=1.0, seed=i)
    turn = llm_pb2.Turn(role=common_pb2.ROLE_USER, text=f"Request {i}: tell me about shapes.")
    return llm_pb2.LLMGenerateRequest(turns=[turn], sampling=sampling)


async def run_level(
    stub: llm_pb2_grpc.LLMServiceStub, pid: int, concurrency: int, n: int, max_new_tokens: int
) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    messages = 0

    async def one(i: int) -> None:
        nonlocal messages
        async with gate:
            started = time.perf_counter()
            async for _ in stub.Generate(request(i, max_new_tokens), timeout=120):
                messages += 1
            latencies.append(time.perf_counter() - started)

    server0, client0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "server_cpu_ms": 1000 * (cpu_seconds(pid) - server0) / n,
        "client_cpu_ms": 1000 * (time.process_time() - client0) / n,
        "p50_ms": 1000 * statistics.median(latencies),
        "requests_per_s": n / (time.perf_counter() - wall0),
        "messages": messages / n,
    }


async def measure(args: argparse.Namespace, servers: dict[float, tuple[subprocess.Popen, str]]) -> dict:
    for _, address in servers.values():
        await wait_serving(address)
    channels = {ms: grpc.aio.insecure_channel(address) for ms, (_, address) in servers.items()}
    stubs = {ms: llm_pb2_grpc.LLMServiceStub(channel) for ms, channel in channels.items()}
    samples: dict[float, dict[int, list[dict[str, float]]]] = {
        ms: {c: [] for c in CONCURRENCY} for ms in servers
    }
    for ms, stub in stubs.items():  # warm-up
        await run_level(stub, servers[ms][0].pid, 4, 8, args.max_new_tokens)
    for r in range(args.rounds):
        for concurrency in CONCURRENCY:
            n = args.requests * max(1, concurrency // 2)
            for ms, stub in stubs.items():
                samples[ms][concurrency].append(
                    await run_level(stub, servers[ms][0].pid, concurrency, n, args.max_new_tokens)
                )
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for channel in channels.values():
        await channel.close()
    return {
        str(ms): {
            str(c): {key: round(statistics.median(s[key] for s in runs), 2) for key in runs[0]}
            for c, runs in by_c.items()
        }
        for ms, by_c in samples.items()
    }


def table(results: dict) -> str:
    lines = [
        "| stream_interval_ms | clients | server CPU ms/request | client CPU ms/request | p50 ms | "
        "requests/s | messages/request |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ms, by_c in results.items():
        for c, row in by_c.items():
            lines.append(
                f"| {ms} | {c} | {row['server_cpu_ms']} | {row['client_cpu_ms']} | {row['p50_ms']} | "
                f"{row['requests_per_s']} | {row['messages']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", default="0,20,50", help="stream_interval_ms values, comma-separated")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="requests per level and round (x c/2)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("NEXTGPT_MODELS_DIR", ROOT / "models"))
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "stream_interval.json")
    args = parser.parse_args()
    intervals = [float(x) for x in args.intervals.split(",")]
    with ExitStack() as stack:
        servers = {ms: start_server(ms, args.models_dir.resolve(), stack) for ms in intervals}
        results = asyncio.run(measure(args, servers))
    header = (
        f"{os.cpu_count()} CPUs ({platform.machine()}), {datetime.now(UTC).isoformat(timespec='seconds')}; "
        f"tiny profile, HF engine, {args.max_new_tokens} new tokens, "
        f"medians of {args.rounds} interleaved rounds."
    )
    report = {"machine": header, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    markdown = f"{header}\n\n{table(results)}\n"
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
