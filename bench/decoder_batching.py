"""What a decoder batch costs against a single item, on the tiny profile's default settings (issue 15).

    OMP_NUM_THREADS=1 .venv/bin/python bench/decoder_batching.py [--repeats 5] [--sizes 1,2,4,8,16]

For each modality and batch size, one decoder batch = `diffuse` (one pipeline call for B items, one seed
each) + `to_media` (PNG / MP4 / WAV). Two variants are timed side by side in one process, interleaved
batch by batch so that both see the same machine load:
- `batched`: the decoders as served (batch-invariant kernels, guidance halves shared; see
  `nextgpt/decoders/invariance.py`);
- `baseline`: the same decoders with the pipelines as diffusers loads them (the decoders before issue 15).
The median over --repeats runs is reported, in wall-clock seconds and in CPU seconds of this process (one
thread, so CPU time is the work done, whatever else the machine runs), with the ratio batch-of-4 / single.
Each variant is also checked for bit-identity: item 0 of every batch against the same item decoded alone.
ImageBind's `encode_batch` is timed the same way per modality (the encoder service batches per modality),
after the decoders and with glibc keeping freed memory as the encoder service does (`keep_freed_memory`).

Writes bench/results/decoder_batching.json and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nextgpt.decoders import audio, image, video  # noqa: E402
from nextgpt.encoders import imagebind as ib  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from services.encoder.server import keep_freed_memory  # noqa: E402

MODULES = {"image": image, "video": video, "audio": audio}
CLASSES = {"image": image.ImageDecoder, "video": video.VideoDecoder, "audio": audio.AudioDecoder}
VARIANTS = ("baseline", "batched")


def load_decoder(profile: Any, modality: str, variant: str) -> Any:
    """The decoder as served, or (baseline) with its pipeline left as diffusers loads it."""
    no_op = mock.patch.object(MODULES[modality], "prepare_for_batching", lambda *a, **k: None)
    with no_op if variant == "baseline" else contextlib.nullcontext():
        return CLASSES[modality].load(profile.decoders[modality])


@contextlib.contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into[f"{name}_wall_s"] = time.perf_counter() - wall
    into[f"{name}_cpu_s"] = time.process_time() - cpu


def run_batch(decoder: Any, cond: torch.Tensor, seeds: list[int]) -> tuple[dict[str, float], np.ndarray]:
    times: dict[str, float] = {}
    with timed(times, "diffuse"):
        outputs = decoder.diffuse(cond, decoder.defaults, seeds=seeds)
    with timed(times, "encode"):
        decoder.to_media(outputs, decoder.defaults)
    times["wall_s"] = times["diffuse_wall_s"] + times["encode_wall_s"]
    times["cpu_s"] = times["diffuse_cpu_s"] + times["encode_cpu_s"]
    return times, outputs


def bench_decoders(
    profile: Any, modalities: list[str], sizes: list[int], repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    decoders = {(v, m): load_decoder(profile, m, v) for v in VARIANTS for m in modalities}
    pool = {
        m: torch.randn(
            max(sizes), *decoders["batched", m].cond_shape, generator=torch.Generator().manual_seed(7)
        )
        for m in modalities
    }  # (N, ...) conditioning rows; row i and seed 1000 + i make item i, in every batch
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    identical = {v: dict.fromkeys(modalities, True) for v in VARIANTS}
    for repeat in range(repeats + 1):  # repeat 0 warms up (oneDNN builds its kernels per shape)
        for m in modalities:
            for b in sizes:
                for v in VARIANTS:
                    times, outputs = run_batch(decoders[v, m], pool[m][:b], [1000 + i for i in range(b)])
                    if repeat:
                        runs.setdefault((v, m, b), []).append(times)
                    if repeat == 0:
                        alone = decoders[v, m].diffuse(pool[m][:1], decoders[v, m].defaults, seeds=[1000])
                        identical[v][m] &= bool(np.array_equal(alone[0], outputs[0]))
        print(f"repeat {repeat}/{repeats} done", flush=True)
    results: dict[str, Any] = {v: {m: {} for m in modalities} for v in VARIANTS}
    for (v, m, b), rs in runs.items():
        median = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        median["per_item_wall_s"] = median["wall_s"] / b
        median["runs_wall_s"] = [r["wall_s"] for r in rs]
        results[v][m][str(b)] = median
    return results, identical


def bench_encoder(profile: Any, sizes: list[int], repeats: int) -> dict[str, Any]:
    keep_freed_memory()
    encoder = ib.ImageBindEncoder.load(profile.encoder)
    shapes: dict[str, tuple[int, ...]] = dict(ib._EXPECTED_SHAPES)
    inputs: dict[str, Callable[[int], list[Any]]] = {
        m: (lambda b, s=s: [torch.randn(*s)] * b) for m, s in shapes.items()
    }
    inputs["text"] = lambda b: [f"a dog barks {i}" for i in range(b)]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for repeat in range(repeats + 1):
        for m, make in inputs.items():
            for b in sizes:
                batch, times = make(b), {}
                with timed(times, "encode"):
                    encoder.encode_batch(m, batch)  # type: ignore[arg-type]
                if repeat:
                    runs.setdefault((m, b), []).append(times)
    return {
        m: {str(b): {k: statistics.median(r[k] for r in runs[m, b]) for k in runs[m, b][0]} for b in sizes}
        for m in inputs
    }


def ratio(table: dict[str, Any], key: str) -> float | None:
    if "1" not in table or "4" not in table:
        return None
    return float(table["4"][key] / table["1"][key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1,2,4,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--modalities", default="image,video,audio")
    parser.add_argument("--no-encoder", action="store_true", help="skip the ImageBind encoder")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "decoder_batching.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sizes = [int(s) for s in args.sizes.split(",")]
    modalities = args.modalities.split(",")
    profile = load_profile("tiny")
    load_before = os.getloadavg()
    started = time.perf_counter()
    results, identical = bench_decoders(profile, modalities, sizes, args.repeats)
    encoder = {} if args.no_encoder else bench_encoder(profile, sizes, args.repeats)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "seconds": time.perf_counter() - started,
        },
        "settings": {m: dataclasses.asdict(profile.decoders[m].defaults) for m in modalities},
        "repeats": args.repeats,
        "ratio_4_to_1_wall": {v: {m: ratio(results[v][m], "wall_s") for m in modalities} for v in VARIANTS},
        "ratio_4_to_1_cpu": {v: {m: ratio(results[v][m], "cpu_s") for m in modalities} for v in VARIANTS},
        "bit_identical_in_batches": identical,
        "decoders_median_s": results,
        "encoder_median_s": encoder,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nseconds per decoder batch (diffuse + to_media), median of {args.repeats}; wall (cpu)")
    print(f"{'modality':<8}{'variant':<10}" + "".join(f"{'B=' + str(b):>15}" for b in sizes) + f"{'4/1':>12}")
    for m in modalities:
        for v in VARIANTS:
            cells = "".join(
                f"{results[v][m][str(b)]['wall_s']:>7.3f} ({results[v][m][str(b)]['cpu_s']:.3f})"
                for b in sizes
            )
            wall, cpu = report["ratio_4_to_1_wall"][v][m], report["ratio_4_to_1_cpu"][v][m]
            ratios = f"{wall:>5.2f} ({cpu:.2f})" if wall is not None else ""
            print(f"{m:<8}{v:<10}{cells}{ratios:>12}  bit-identical: {identical[v][m]}")
    if encoder:
        print(f"\nImageBind encode_batch, cpu seconds, median of {args.repeats}")
        for m, table in encoder.items():
            one = table[str(sizes[0])]["encode_cpu_s"]
            cells = "".join(f"{table[str(b)]['encode_cpu_s']:>9.4f}" for b in sizes)
            print(f"{m:<8}{cells}   4/1: {ratio(table, 'encode_cpu_s') or float('nan'):.2f} (B=1: {one:.4f})")
    print(f"\nload average before {load_before}, after {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
