"""Time the in-process pipeline on the tiny profile, per request type.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pipeline_tiny.py [--repeats 3]

Writes bench/results/pipeline_tiny.json and prints a table (median seconds per stage).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from nextgpt.config import GenerationOptions  # noqa: E402
from nextgpt.media.samples import sample_inputs  # noqa: E402
from nextgpt.pipeline import NextGPT  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from nextgpt.types import Message  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_tiny.json")
    args = parser.parse_args()
    started = time.perf_counter()
    model = NextGPT.from_profile(load_profile("tiny"))
    load_s = time.perf_counter() - started
    inputs = sample_inputs()
    cases = {
        "text->text": (Message("user", "Hello there."), ("text",)),
        "image->text": (Message("user", "Describe this.", [inputs["image"]]), ("text",)),
        "text->image": (Message("user", "A picture of a cat."), ("text", "image")),
        "audio->video": (Message("user", "A video for this.", [inputs["audio"]]), ("text", "video")),
        "text->audio": (Message("user", "The sound of rain."), ("text", "audio")),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (message, modalities) in cases.items():
        runs = []
        for seed in range(args.repeats):
            options = GenerationOptions(seed=seed, max_new_tokens=32, modalities=modalities)
            t0 = time.perf_counter()
            result = model.generate([message], options)
            runs.append({"total": time.perf_counter() - t0, **result.timings})
        results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_s": load_s, "median_s": results}, indent=2) + "\n")
    print(f"load: {load_s:.2f}s")
    print(f"{'request':<14}{'total':>8}{'encode':>8}{'llm':>8}{'decode':>8}")
    for name, r in results.items():
        print(f"{name:<14}{r['total']:>8.2f}{r['encode']:>8.2f}{r['llm']:>8.2f}{r['decode']:>8.2f}")


if __name__ == "__main__":
    main()
