"""`make load`: headless locust (tests/load/locustfile.py) against a local cluster, CSV + HTML report.

Without `--host` a `LocalCluster` (the `nextgpt up` launcher) is started on free loopback ports with the
models of NEXTGPT_MODELS_DIR and stopped afterwards; with `--host URL --grpc-target HOST:PORT` an
already running gateway is loaded instead. Writes OUT/locust_stats.csv (and the other locust CSVs),
OUT/report.html, OUT/summary.json; prints p50/p95 per request type; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/load"), help="report directory")
    parser.add_argument("--users", type=int, default=4, help="concurrent users (REST and gRPC, half each)")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--run-time", default="60s", help="locust --run-time, e.g. 30s, 5m")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_new_tokens per request (>= 36)")
    parser.add_argument("--host", default="", help="gateway REST URL of a running cluster")
    parser.add_argument("--grpc-target", default="", help="gateway gRPC host:port of a running cluster")
    parser.add_argument("--model", default="nextgpt-tiny", help="served model name")
    parser.add_argument("--models-dir", type=Path, default=None, help="models of the local cluster")
    parser.add_argument("--engine", default="auto", help="LLM engine of the local cluster: auto, hf or vllm")
    return parser.parse_args(argv)


def run_locust(args: argparse.Namespace, host: str, grpc_target: str) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--stop-timeout",
        "120",  # requests in flight when the time is up finish and are counted
        "--host",
        host,
        "--grpc-target",
        grpc_target,
        "--max-tokens",
        str(args.max_tokens),
        "--model",
        args.model,
        "--csv",
        str(args.out / "locust"),
        "--html",
        str(args.out / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode


def summarize(out: Path) -> list[dict[str, object]]:
    """Rows of locust_stats.csv: type, name, count, failures, p50/p95 in ms."""
    rows = []
    with open(out / "locust_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    "type": row["Type"],
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "p50_ms": float(row["50%"] or 0),
                    "p95_ms": float(row["95%"] or 0),
                    "rps": float(row["Requests/s"] or 0),
                }
            )
    return rows


def print_summary(rows: list[dict[str, object]]) -> None:
    print(f"{'request':38} {'n':>5} {'fail':>5} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>6}")
    for r in rows:
        print(
            f"{r['name']!s:38} {r['requests']:>5} {r['failures']:>5} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
            f"{r['rps']:>6.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.host:
        code = run_locust(args, args.host, args.grpc_target or "127.0.0.1:50051")
    else:
        from services.launcher import ClusterPorts, LocalCluster

        models = args.models_dir or Path(os.environ.get("NEXTGPT_MODELS_DIR", "models"))
        cluster = LocalCluster(
            models_dir=models,
            cluster_ports=ClusterPorts.free(),
            log_dir=args.out / "logs",
            engine=args.engine,
        )
        logger.info("starting the local cluster (logs in %s)", args.out / "logs")
        with cluster:
            code = run_locust(args, cluster.rest_url, cluster.grpc_target)
    rows = summarize(args.out)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_summary(rows)
    failures = sum(int(r["failures"]) for r in rows if r["name"] == "Aggregated")  # type: ignore[call-overload]
    print(f"locust exit code {code}, {failures} failures; report: {args.out / 'report.html'}")
    return code or (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
