"""Serving benchmark: the in-process serial loop against the local cluster (HF and vLLM engines) under load.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py [--quick] [--engines hf,vllm]
        [--concurrency 1,2,4,8,16,32] [--duration-s 20 | --requests N] [--warmup 10] [--profile]
        [--out bench/results/serve.json]

One run measures, side by side, on the five-request mix (text->text, image->text, text->image,
audio->video, text->audio; 32 new tokens, default decoder steps, seed = --seed + request index):

1. the serial loop: one `NextGPT` pipeline in this process answering the mix one request at a time;
2. per engine, the cluster `nextgpt up` starts (`LocalCluster`, free ports): at each concurrency, that
   many closed-loop clients send the mix over REST (`/v1/chat/completions`, streamed SSE, one kept-alive
   httpx connection each) for `--duration-s` seconds or `--requests` requests, after `--warmup` requests.

Per configuration and level: requests/s (successful), p50/p95 latency per request type, time to first
text token and to first medium (from the SSE events as they arrive), errors, each decoder's
`nextgpt_decoder_batch_size` histogram and the encoder cache counters (Prometheus, before/after), load
average before/after; at concurrency 1 the serving overhead (cluster p50 - serial p50 per type). Writes
the JSON, `<stem>_throughput.png`, `<stem>_latency.png` and `<stem>.md` (the printed tables);
`--profile` adds a py-spy flame graph per service at the highest concurrency (`<stem>_flame_<engine>_
<service>.svg`). A cluster that fails to start is reported and the run goes on; the exit code is 1 then.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from serve_mix import MIX, Sample, media_for, request_body, send_rest, summarize  # noqa: E402
from serve_report import machine_info, markdown, overhead_at_1, plot, write_blocks  # noqa: E402

from nextgpt.media.samples import sample_inputs  # noqa: E402
from nextgpt.types import MediaItem  # noqa: E402
from services.launcher import MODALITIES, ClusterPorts, LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "serve.json"
SERVICES = ("gateway", "encoder", "llm", *(f"decoder-{m}" for m in MODALITIES))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- load --------------------------------------------------------------------------------------------


async def run_load(
    send: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[Sample], float]:
    """Closed loop: `concurrency` workers each send the next request of the mix (request i is
    `MIX[i % 5]` with seed SEED + i) as soon as theirs ends, until `requests` were started,
    `duration_s` passed or `stop` is set; requests in flight then finish and count."""
    counter = itertools.count()
    samples: list[Sample] = []
    started = time.perf_counter()

    async def worker() -> None:
        while not (stop is not None and stop.is_set()):
            if duration_s is not None and time.perf_counter() - started >= duration_s:
                return
            i = next(counter)
            if requests is not None and i >= requests:
                return
            samples.append(await send(i))
            if on_done is not None:
                on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


Scrape = Callable[[], Awaitable[dict[str, dict]]]
Send = Callable[[int], Awaitable[Sample]]


async def measure_level(
    name: str,
    send: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    args: argparse.Namespace,
    progress: Progress,
    scrape: Scrape | None = None,
) -> dict:
    """Warm up, then one measured level; with `scrape`, the Prometheus deltas over it."""
    await run_load(send, concurrency, requests=args.warmup)
    task = progress.add_task(f"{name} concurrency {concurrency}", total=args.requests)
    before, load_before = (await scrape() if scrape else {}), load_average()
    samples, wall = await run_load(
        send,
        concurrency,
        requests=args.requests,
        duration_s=None if args.requests is not None else args.duration_s,
        on_done=lambda: progress.advance(task),
    )
    level = {"concurrency": concurrency, **summarize(samples, wall)}
    if scrape:
        level.update(metric_deltas(before, await scrape()))
        ok = level["requests"] - level["errors"]
        level["cpu_ms_per_request"] = (
            {k: round(1000 * v / ok, 1) for k, v in level["cpu_s"].items()} if ok else {}
        )
        wire = level["wire_bytes"]
        level["wire_kb_per_request"] = (
            {k: {way: round(n / ok / 1000, 1) for way, n in v.items()} for k, v in wire.items()} if ok else {}
        )
    level["load_average"] = {"before": load_before, "after": load_average()}
    progress.update(task, visible=False)
    p50 = (level["latency_ms"] or {}).get("p50", float("nan"))
    progress.console.print(
        f"{name} c={concurrency}: {level['requests_per_s']:.2f} req/s, p50 {p50:.0f} ms, "
        f"{level['errors']} errors of {level['requests']}"
    )
    return level


# --- the serial loop (in process) --------------------------------------------------------------------


def load_serial(args: argparse.Namespace, inputs: dict[str, MediaItem]) -> tuple[Send, float]:
    """One tiny `NextGPT` pipeline in this process and a sender that runs one request of the mix on it
    (the event loop runs nothing else meanwhile); returns (send, seconds to load)."""
    import diffusers
    import transformers

    from nextgpt.config import GenerationOptions
    from nextgpt.pipeline import NextGPT
    from nextgpt.profiles import load_profile
    from nextgpt.types import Message

    diffusers.utils.logging.disable_progress_bar()  # their loading bars would break the rich display
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    model = NextGPT.from_profile(load_profile("tiny", models_dir=args.models_dir))
    load_s = time.perf_counter() - started

    async def send(i: int) -> Sample:
        kind = MIX[i % len(MIX)]
        options = GenerationOptions(
            seed=args.seed + i, max_new_tokens=args.max_new_tokens, modalities=kind.modalities
        )
        message = Message("user", kind.prompt, media_for(kind, inputs))
        first_text: list[float] = []
        t0 = time.perf_counter()
        try:
            result = model.generate(
                [message], options, on_text=lambda _: first_text or first_text.append(time.perf_counter())
            )
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
            return Sample(kind.name, time.perf_counter() - t0, error=f"exception: {exc!r}")
        latency = time.perf_counter() - t0
        missing = [m for m in kind.media_out if m not in {x.modality for x in result.media}]
        errors = [f"{e.modality}: {e.message}" for e in result.errors]
        return Sample(
            kind.name,
            latency,
            ttft=first_text[0] - t0 if first_text else None,
            ttfm=latency if result.media else None,
            tokens=result.completion_tokens,
            error=f"media: missing {missing}; {errors}" if missing or errors else None,
        )

    return send, load_s


async def bench_serial(send: Send, load_s: float, args: argparse.Namespace, progress: Progress) -> dict:
    """The serial loop: one request at a time on the in-process pipeline. The media come with the
    result, so the time to first medium is the request's latency."""
    level = await measure_level("serial", send, 1, args, progress)
    return {"name": "serial", "status": "ok", "load_s": round(load_s, 2), "levels": [level]}


async def interleaved_overhead(serial: Send, cluster: Send, rounds: int) -> dict:
    """Serving overhead at one client with the machine's speed drift taken out: the same requests go
    alternately to the in-process pipeline and to the cluster (`rounds` of each request type), and the
    overhead is the median of the per-pair differences (cluster - in-process), per request type."""
    pairs: dict[str, list[float]] = {k.name: [] for k in MIX}
    for i in range(rounds * len(MIX)):
        a, b = await serial(i), await cluster(i)
        if not a.error and not b.error:
            pairs[a.kind].append(1000 * (b.latency - a.latency))
    return {k: round(float(np.median(v)), 1) if v else None for k, v in pairs.items()}


# --- the cluster over REST ---------------------------------------------------------------------------


async def scrape(client: httpx.AsyncClient, url: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted labels): value}; empty when the endpoint fails."""
    try:
        text = (await client.get(url, timeout=10)).text
    except httpx.HTTPError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_cluster(client: httpx.AsyncClient, cluster: LocalCluster) -> dict[str, dict]:
    ports = {f"decoder-{m}": cluster.ports.decoder_metrics[m] for m in MODALITIES}
    ports["encoder"] = cluster.ports.encoder_metrics
    ports["llm"] = cluster.ports.llm_metrics
    return {"gateway": await scrape(client, f"{cluster.rest_url}/metrics")} | {
        name: await scrape(client, f"http://127.0.0.1:{port}/metrics") for name, port in ports.items()
    }


def metric_deltas(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Over one level: each decoder's batch sizes (`histogram`: batches per size range) and the encoder's
    embedding cache hits and misses; None where a service's /metrics did not answer."""

    def delta(service: str, name: str, **labels: str) -> list[tuple[dict, float]]:
        return [
            (dict(key[1]), v - before[service].get(key, 0.0))
            for key, v in after[service].items()
            if key[0] == name and labels.items() <= dict(key[1]).items()
        ]

    batches: dict[str, dict | None] = {}
    for m in MODALITIES:
        service = f"decoder-{m}"
        if not after.get(service) or not before.get(service):
            batches[m] = None
            continue
        count = sum(v for _, v in delta(service, "nextgpt_decoder_batch_size_count", modality=m))
        total = sum(v for _, v in delta(service, "nextgpt_decoder_batch_size_sum", modality=m))
        cumulative = sorted(
            (float(lb["le"]), v) for lb, v in delta(service, "nextgpt_decoder_batch_size_bucket", modality=m)
        )
        histogram, low, seen = {}, 1, 0.0
        for le, v in cumulative:  # Prometheus buckets are cumulative: <= 1, <= 2, ... <= +Inf
            name = (
                f">{low - 1}" if le == float("inf") else (f"{low}" if low == int(le) else f"{low}-{int(le)}")
            )
            if round(v - seen):
                histogram[name] = round(v - seen)
            seen, low = v, (int(le) + 1 if le != float("inf") else low)
        mean = round(total / count, 2) if count else None
        batches[m] = {"batches": round(count), "items": round(total), "mean": mean, "histogram": histogram}
    cache = None
    if after.get("encoder") and before.get("encoder"):
        cache = {
            kind: round(sum(v for _, v in delta("encoder", f"nextgpt_encoder_cache_{kind}_total")))
            for kind in ("hits", "misses")
        }
    # CPU seconds each service process spent over the level (prometheus_client's process collector;
    # vLLM's engine-core processes are children of the llm service and not counted in it).
    cpu = {
        service: round(sum(v for _, v in delta(service, "process_cpu_seconds_total")), 3)
        for service in after
        if after.get(service) and before.get(service)
    }
    # Bytes each backend's gRPC API read and wrote over the level, as encoded on the wire
    # (`nextgpt_grpc_message_bytes`): the hops between the gateway and the backends.
    wire = {
        service: {
            way: round(sum(v for _, v in delta(service, "nextgpt_grpc_message_bytes_sum", direction=way)))
            for way in ("received", "sent")
        }
        for service in after
        if service != "gateway" and after.get(service) and before.get(service)
    }
    llm_batch = None  # rows per decode step of the HF engine (vLLM schedules its own batches)
    if after.get("llm") and before.get("llm"):
        steps = sum(v for _, v in delta("llm", "nextgpt_llm_batch_size_count"))
        rows = sum(v for _, v in delta("llm", "nextgpt_llm_batch_size_sum"))
        llm_batch = {"steps": round(steps), "mean": round(rows / steps, 2) if steps else None}
    return {
        "decoder_batch_size": batches,
        "llm_batch_size": llm_batch,
        "encoder_cache": cache,
        "cpu_s": cpu,
        "wire_bytes": wire,
    }


def vllm_unusable() -> str | None:
    """Why `import vllm` fails in this interpreter (the launcher starts the services with it), or None."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import vllm"], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return "`import vllm` took over 300 s"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"`import vllm` fails here ({last}); `make setup-vllm` installs it"
    return None


async def bench_cluster(
    engine: str,
    args: argparse.Namespace,
    inputs: dict[str, MediaItem],
    progress: Progress,
    serial: Send | None,
) -> dict:
    result: dict = {"name": f"cluster-{engine}", "engine": engine, "status": "ok", "levels": []}
    say = progress.console.print
    if engine == "vllm" and (why := vllm_unusable()):
        say(f"[yellow]skipping cluster-vllm: {why}[/yellow]")
        return {**result, "status": "skipped", "note": why}
    extra_env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log_dir = args.log_dir / engine
    cluster = LocalCluster(
        models_dir=args.models_dir,
        profile="tiny",
        cluster_ports=ClusterPorts.free(),
        log_dir=log_dir,
        engine=engine,
        extra_env=extra_env,
    )
    result["log_dir"] = str(log_dir)
    say(f"starting the cluster with --engine {engine} (logs in {log_dir})...")
    t0 = time.perf_counter()
    try:
        await asyncio.to_thread(cluster.start, args.start_timeout_s)
    except Exception as exc:  # noqa: BLE001 - report it and go on with the other configurations
        say(f"[red]cluster-{engine} did not start: {exc}[/red]")
        return {**result, "status": "failed", "error": f"the cluster did not start: {exc}"}
    result["start_s"] = round(time.perf_counter() - t0, 1)
    url = f"{cluster.rest_url}/v1/chat/completions"
    top = max(args.concurrency)
    limits = httpx.Limits(max_connections=top, max_keepalive_connections=top)
    try:
        async with httpx.AsyncClient(timeout=args.request_timeout_s, limits=limits) as client:

            async def send(i: int) -> Sample:
                kind = MIX[i % len(MIX)]
                body = request_body(kind, inputs, args.max_new_tokens, args.seed + i)
                return await send_rest(client, url, kind, body)

            async def scrape() -> dict[str, dict]:
                return await scrape_cluster(client, cluster)

            for c in args.concurrency:
                result["levels"].append(await measure_level(result["name"], send, c, args, progress, scrape))
            if serial is not None and args.overhead_rounds:
                say(f"cluster-{engine}: overhead at one client, {args.overhead_rounds} interleaved rounds...")
                result["overhead_c1_interleaved_ms"] = await interleaved_overhead(
                    serial, send, args.overhead_rounds
                )
            if args.profile:
                result["profiles"] = await profile_cluster(cluster, engine, send, top, args, say)
    except Exception as exc:  # noqa: BLE001 - keep what was measured, go on with the rest
        say(f"[red]cluster-{engine} failed during the run: {exc!r}[/red]")
        result.update(status="failed", error=f"during the run: {exc!r}")
    finally:
        await asyncio.to_thread(cluster.stop)
    return result


async def profile_cluster(
    cluster: LocalCluster,
    engine: str,
    send: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, str]:
    """A py-spy flame graph of every service at `concurrency`, in a load phase of its own so that the
    sampling does not slow the measured levels. The LLM's child processes (vLLM's engines) are included."""
    py_spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if py_spy is None:
        say("[yellow]--profile: py-spy not found (requirements/test.txt installs it)[/yellow]")
        return {"error": "py-spy not found"}
    say(f"profiling cluster-{engine} at concurrency {concurrency} for {args.profile_s:.0f}s with py-spy...")
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(send, concurrency, stop=stop))
    await asyncio.sleep(1.0)  # let every worker get its first request in
    runs = {}
    for name in SERVICES:
        svg = args.out.with_name(f"{args.out.stem}_flame_{engine}_{name}.svg")
        command = [
            py_spy,
            "record",
            "--pid",
            str(cluster.children[name].process.pid),
            "--format",
            "flamegraph",
        ]
        command += ["--duration", str(int(args.profile_s)), "--output", str(svg), "--nonblocking"]
        if name == "llm":
            command.append("--subprocesses")
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        runs[name] = (proc, svg)
    profiles = {}
    for name, (proc, svg) in runs.items():
        output, _ = await proc.communicate()
        if proc.returncode == 0 and svg.exists():
            profiles[name] = svg.name
        else:
            tail = output.decode(errors="replace").strip().splitlines()[-1:]
            profiles[name] = f"error: py-spy exited {proc.returncode}: {' '.join(tail)}"
            say(f"[yellow]py-spy on {name}: {profiles[name]}[/yellow]")
    stop.set()
    await load
    return profiles


# --- command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument(
        "--concurrency", type=ints, help="levels, e.g. 1,2,4,8,16,32 (the default; --quick: 1,4)"
    )
    parser.add_argument("--engines", help="cluster LLM engines, e.g. hf,vllm (the default; --quick: hf)")
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds per level (default 20)")
    parser.add_argument(
        "--requests", type=int, help="requests per level instead of --duration-s (--quick: 10)"
    )
    parser.add_argument(
        "--warmup", type=int, help="unrecorded requests before each level (default 10; --quick: 2)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="request i gets seed SEED + i")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: concurrency 1,4, 10 requests, hf only"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy flame graph of each service at the top level"
    )
    parser.add_argument("--profile-s", type=float, default=10.0, help="seconds py-spy records (default 10)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON path; plots and tables go beside it"
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("NEXTGPT_MODELS_DIR", ROOT / "models"))
    )
    parser.add_argument("--log-dir", type=Path, help="service logs (default: a new temporary directory)")
    parser.add_argument(
        "--start-timeout-s", type=float, default=300.0, help="per cluster, until all are SERVING"
    )
    parser.add_argument("--request-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--overhead-rounds",
        type=int,
        help="per cluster, rounds of the mix sent alternately in process and to the cluster (default 20;"
        " --quick: 1; 0: skip)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        action="append",
        default=[],
        help="also write the tables and plots into this file's generated block (repeatable)",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        action="append",
        default=[],
        help="also write the short version (speed-ups, overhead at one client, plots) into this file's"
        " generated block (repeatable)",
    )
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 2, 4, 8, 16, 32])
    args.engines = [e for e in (args.engines or ("hf" if args.quick else "hf,vllm")).split(",") if e]
    if args.overhead_rounds is None:
        args.overhead_rounds = 1 if args.quick else 20
    if args.quick and args.requests is None:
        args.requests = 10
    if args.warmup is None:
        args.warmup = 2 if args.quick else 10
    for e in args.engines:
        if e not in ("hf", "vllm"):
            parser.error(f"--engines: {e!r} is not an engine; use hf and/or vllm")
    if min(args.concurrency, default=0) < 1:
        parser.error(f"--concurrency {args.concurrency}: every level must be >= 1")
    args.models_dir = args.models_dir.resolve()
    args.out = args.out.resolve()
    args.log_dir = (args.log_dir or Path(tempfile.mkdtemp(prefix="nextgpt-bench-serve-"))).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    inputs = sample_inputs()
    report: dict = {
        "benchmark": "serve",
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "settings": {
            "profile": "tiny",
            "concurrency": args.concurrency,
            "engines": args.engines,
            "duration_s": None if args.requests is not None else args.duration_s,
            "requests_per_level": args.requests,
            "warmup": args.warmup,
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "py_spy": {"seconds": args.profile_s, "concurrency": max(args.concurrency)}
            if args.profile
            else None,
            "api": "REST /v1/chat/completions, stream=true, one kept-alive connection per client",
            "mix": [
                {"name": k.name, "prompt": k.prompt, "inputs": k.inputs, "modalities": k.modalities}
                for k in MIX
            ],
        },
        "machine": machine_info(),
    }
    report["machine"]["load_average_start"] = load_average()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns) as progress:
        progress.console.print("serial loop: loading the tiny pipeline in this process...")
        serial: Send | None = None
        try:
            serial, load_s = load_serial(args, inputs)
            report["serial"] = asyncio.run(bench_serial(serial, load_s, args, progress))
        except Exception as exc:  # noqa: BLE001 - the clusters are still worth measuring
            progress.console.print(f"[red]the serial loop failed: {exc!r}[/red]")
            report["serial"] = {"name": "serial", "status": "failed", "error": repr(exc), "levels": []}
            serial = None
        # The pipeline stays loaded (idle) for the interleaved overhead measurement of each cluster.
        report["configurations"] = [
            asyncio.run(bench_cluster(engine, args, inputs, progress, serial)) for engine in args.engines
        ]
        del serial
        gc.collect()
    for config in report["configurations"]:
        config["overhead_c1_ms"] = overhead_at_1(report["serial"], config)
    report["machine"]["load_average_end"] = load_average()
    table = markdown(report)
    report["plots"] = [p.name for p in plot(report, args.out)]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out}, {args.out.with_suffix('.md').name} and {', '.join(report['plots'])} beside it")
    write_blocks(report, args.out, args.readme, args.summary)
    failed = [c["name"] for c in [report["serial"], *report["configurations"]] if c["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see 'error' in the JSON and the logs in {args.log_dir})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
