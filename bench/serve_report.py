"""Reports of `bench/serve.py`: the machine, the markdown tables, the plots and the README blocks.

Works on the report dict alone (the JSON `serve.py` writes), so a stored run can be re-rendered:

    .venv/bin/python bench/serve_report.py bench/results/serve.json \
        --readme docs/benchmarks.md --summary README.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.launcher import MODALITIES

ROOT = Path(__file__).resolve().parent.parent


def kinds_of(report: dict) -> list[str]:
    """The request types of the run's mix, in order."""
    return [kind["name"] for kind in report["settings"]["mix"]]


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], capture_output=True, text=True, cwd=ROOT, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def overhead_at_1(serial: dict, config: dict) -> dict[str, float | None] | None:
    """Cluster p50 - serial p50 per request type (ms) at concurrency 1."""
    level = next((lv for lv in config["levels"] if lv["concurrency"] == 1), None)
    if level is None or not serial.get("levels"):
        return None
    out = {}
    for kind in level["per_type"]:
        a = level["per_type"][kind]["latency_ms"]
        b = serial["levels"][0]["per_type"][kind]["latency_ms"]
        out[kind] = round(a["p50"] - b["p50"], 2) if a and b else None
    return out


def _ms(stats: dict | None, key: str = "p50") -> str:
    return f"{stats[key]:.0f}" if stats else "-"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


HEADER = "configuration,concurrency,req/s,errors,p50 ms,p95 ms,TTFT p50 ms,first media p50 ms".split(",")
HEADER += ["batch mean: llm (hf) / image / video / audio", "load 1m before -> after"]


def speedups(report: dict) -> list[str]:
    """One line per cluster: its best throughput and the one at 16 clients, as multiples of the loop."""
    serial = (report["serial"].get("levels") or [{}])[0].get("requests_per_s")
    if not serial:
        return []
    lines = []
    for c in report["configurations"]:
        levels = {lv["concurrency"]: lv["requests_per_s"] for lv in c.get("levels", [])}
        if not levels:
            continue
        best = max(levels, key=lambda k: levels[k])
        at16 = f"{levels[16] / serial:.2f}x at 16 clients, " if 16 in levels else ""
        lines.append(
            f"- **{c['name']}**: {at16}{levels[best] / serial:.2f}x at best ({best} clients) the serial "
            f"loop's {serial:.2f} requests/s"
        )
    return [*lines, ""] if lines else []


README_BEGIN = "<!-- bench/serve.py: begin (generated; do not edit by hand) -->"
README_END = "<!-- bench/serve.py: end -->"


def update_readme(readme: Path, report: dict, table: str, out: Path) -> None:
    """Replace the block between the markers in `readme` with `table` and this run's plots."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_BEGIN!r} ... {README_END!r} block to fill")
    base = Path(os.path.relpath(out.parent.resolve(), readme.parent.resolve()))  # docs/ -> ../bench/results
    images = [f"![{p}]({(base / p).as_posix()})" for p in report["plots"]]
    block = "\n".join([README_BEGIN, "", table.rstrip(), "", *images, "", README_END])
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + block + rest.split(README_END, 1)[1])


def _header(report: dict) -> str:
    m, settings = report["machine"], report["settings"]
    dirty = " (dirty)" if m["git_dirty"] else ""
    return (
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), {m['date']}, commit {m['git_commit'][:10]}{dirty}; "
        f"tiny profile, {settings['max_new_tokens']} new tokens."
    )


def _overhead_table(report: dict, key: str, kinds: list[str]) -> list[str]:
    lines = [_row(["configuration", *kinds]), _row(["---"] * (1 + len(kinds)))]
    for c in report["configurations"]:
        if over := c.get(key):
            lines.append(_row([c["name"], *("-" if over[k] is None else f"{over[k]:+.0f}" for k in kinds)]))
    return lines


INTERLEAVED = (
    "Serving overhead at one client, interleaved (the same requests alternately in process and to the"
    " cluster; median of the per-pair differences, ms):"
)


def summary_markdown(report: dict) -> str:
    """The short version for the README: the machine, each cluster's speed-up over the serial loop and
    the serving overhead at one client."""
    return (
        "\n".join(
            [
                _header(report),
                "",
                *speedups(report),
                INTERLEAVED,
                "",
                *_overhead_table(report, "overhead_c1_interleaved_ms", kinds_of(report)),
            ]
        )
        + "\n"
    )


def _per_service_table(
    configs: list[dict], title: str, key: str, services: list[str], cell: Callable[[Any], str]
) -> list[str]:
    """A titled table of one per-service figure (`level[key][service]`), a row per measured level;
    nothing when no level has it (a report from before the figure existed)."""
    rows = []
    for c in configs:
        for lv in c.get("levels", []):
            if figures := lv.get(key):
                cells = [cell(figures[name]) if name in figures else "-" for name in services]
                rows.append(_row([c["name"], lv["concurrency"], *cells]))
    if not rows:
        return []
    header = [_row(["configuration", "concurrency", *services]), _row(["---"] * (2 + len(services)))]
    return ["", title, "", *header, *rows]


def markdown(report: dict) -> str:
    """The tables printed at the end (and written to `<stem>.md`)."""
    configs = [report["serial"], *report["configurations"]]
    kinds = kinds_of(report)
    lines = [
        _header(report),
        "",
        *speedups(report),
        _row(HEADER),
        _row(["---"] * len(HEADER)),
    ]
    for c in configs:
        if not c.get("levels"):
            lines.append(_row([c["name"], f"{c['status']}: {c.get('note') or c.get('error')}"]))
        for lv in c.get("levels", []):
            batch = lv.get("decoder_batch_size")
            means = "/".join(str((batch[x] or {}).get("mean") or "-") for x in MODALITIES) if batch else "-"
            means = f"{(lv.get('llm_batch_size') or {}).get('mean') or '-'} / {means}"
            cells = [
                c["name"],
                lv["concurrency"],
                f"{lv['requests_per_s']:.2f}",
                f"{lv['errors']}/{lv['requests']}",
            ]
            cells += [
                _ms(lv["latency_ms"]),
                _ms(lv["latency_ms"], "p95"),
                _ms(lv["ttft_ms"]),
                _ms(lv["ttfm_ms"]),
            ]
            cells += [
                means,
                "{} -> {}".format(lv["load_average"]["before"][0], lv["load_average"]["after"][0]),
            ]
            lines.append(_row(cells))
    lines += ["", "Latency p50 / p95 (ms) per request type:", ""]
    lines += [_row(["configuration", "concurrency", *kinds]), _row(["---"] * (2 + len(kinds)))]
    for c in configs:
        for lv in c.get("levels", []):
            stats = [lv["per_type"][k]["latency_ms"] for k in kinds]
            lines.append(
                _row([c["name"], lv["concurrency"], *(f"{_ms(x)} / {_ms(x, 'p95')}" for x in stats)])
            )
    lines += ["", "Serving overhead at concurrency 1 (cluster p50 - in-process p50, ms):", ""]
    lines += _overhead_table(report, "overhead_c1_ms", kinds)
    lines += ["", INTERLEAVED, ""]
    lines += _overhead_table(report, "overhead_c1_interleaved_ms", kinds)
    services = ["gateway", "encoder", "llm", *(f"decoder-{m}" for m in MODALITIES)]
    lines += _per_service_table(
        configs,
        "CPU ms per request by service (the mix's average; vLLM's engine processes not counted):",
        "cpu_ms_per_request",
        services,
        str,
    )
    lines += _per_service_table(
        configs,
        "gRPC kB per request by backend, received / sent (as encoded on the wire; the mix's average):",
        "wire_kb_per_request",
        services[1:],
        lambda w: f"{w['received']} / {w['sent']}",
    )
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> list[Path]:
    """`<stem>_throughput.png` (req/s per configuration, the serial loop as a line) and
    `<stem>_latency.png` (p50 solid and p95 dashed per request type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, ScalarFormatter

    serial = report["serial"]["levels"][0] if report["serial"].get("levels") else None
    configs = [c for c in report["configurations"] if c.get("levels")]
    levels, m = report["settings"]["concurrency"], report["machine"]
    tokens = report["settings"]["max_new_tokens"]
    subtitle = f"{m['cpu_count']} CPUs, {m['date'][:10]}, tiny profile, {tokens} new tokens"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def axis(ax, ylabel: str) -> None:  # type: ignore[no-untyped-def]
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(levels) / 1.3, max(levels) * 1.3)  # also where an axis holds only the serial line
        ax.set_xticks(levels)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="concurrent clients", ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)

    paths = [out.with_name(f"{out.stem}_throughput.png"), out.with_name(f"{out.stem}_latency.png")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, c in zip(colors, configs, strict=False):
        xs, ys = [lv["concurrency"] for lv in c["levels"]], [lv["requests_per_s"] for lv in c["levels"]]
        ax.plot(xs, ys, "o-", color=color, label=c["name"])
    if serial:
        ax.axhline(serial["requests_per_s"], color="gray", ls="--", label="serial loop (in process)")
    axis(ax, "successful requests/s")
    ax.set_title(f"Throughput on the five-request mix\n{subtitle}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for ax, kind in zip(axes.flat, kinds_of(report), strict=False):
        for color, c in zip(colors, configs, strict=False):
            points = [(lv["concurrency"], lv["per_type"][kind]["latency_ms"]) for lv in c["levels"]]
            points = [(x, st) for x, st in points if st]
            xs = [x for x, _ in points]
            ax.plot(xs, [st["p50"] for _, st in points], "o-", color=color, label=f"{c['name']} p50")
            ax.plot(
                xs, [st["p95"] for _, st in points], "o--", color=color, alpha=0.6, label=f"{c['name']} p95"
            )
        if serial and serial["per_type"][kind]["latency_ms"]:
            p50 = serial["per_type"][kind]["latency_ms"]["p50"]
            ax.axhline(p50, color="gray", ls=":", label="serial loop p50")
        axis(ax, "latency (ms)")
        ax.set_title(kind)
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(*axes.flat[0].get_legend_handles_labels(), loc="center")
    fig.suptitle(f"Latency per request type\n{subtitle}")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def write_blocks(report: dict, out: Path, readmes: list[Path], summaries: list[Path]) -> None:
    """The full tables into each of `readmes`' generated blocks, the short version into `summaries`'."""
    for readme in readmes:
        update_readme(readme, report, markdown(report), out.resolve())
        print(f"updated the benchmark block of {readme}")
    for summary in summaries:
        update_readme(summary, report, summary_markdown(report), out.resolve())
        print(f"updated the benchmark summary of {summary}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-render a stored bench/serve.py run into documents.")
    parser.add_argument("report", type=Path, help="the run's JSON (bench/results/serve.json)")
    parser.add_argument("--readme", type=Path, action="append", default=[], help="full tables (repeatable)")
    parser.add_argument("--summary", type=Path, action="append", default=[], help="short block (repeatable)")
    args = parser.parse_args(argv)
    write_blocks(json.loads(args.report.read_text()), args.report, args.readme, args.summary)


if __name__ == "__main__":
    main()
