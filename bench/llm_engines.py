"""Throughput of the LLM service's engines (HF vs vLLM) on the tiny profile at concurrency 1, 8 and 32.

    OMP_NUM_THREADS=1 .venv/bin/python bench/llm_engines.py [--requests-per-level 2] [--max-new-tokens 64]

The README's figures: `--requests-per-level 8` (16, 64 and 256 requests), on an otherwise idle machine
(`load_average_1m` in the JSON: before and after each engine).

Each level sends `max(16, k * concurrency)` requests (half text-only, half with an image embedding, every
one asking for an image span), at most `concurrency` at a time, straight into the engine (no gRPC), and
counts generated tokens and finished requests per second of wall time. Writes
bench/results/llm_engines.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from nextgpt.config import SamplingOptions  # noqa: E402
from nextgpt.encoders.imagebind import ImageBindEncoder  # noqa: E402
from nextgpt.media.samples import sample_inputs  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from nextgpt.types import LLMOutput, Message  # noqa: E402
from services.llm.engine import EngineRequest  # noqa: E402
from services.llm.hf_engine import HFEngine  # noqa: E402 - transformers before ImageBind's import shims

LEVELS = (1, 8, 32)


def requests(n: int, embedding: torch.Tensor, max_new_tokens: int) -> list[EngineRequest]:
    out = []
    for i in range(n):
        options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=0)
        embeds = [embedding] if i % 2 else []
        prompt = [Message("user", f"Request {i}: show me something.")]
        out.append(EngineRequest(prompt, [embeds], options, outputs=("image",)))
    return out


async def run_level(engine, reqs: list[EngineRequest], concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(request: EngineRequest) -> None:
        nonlocal tokens
        async with gate:
            async for event in engine.generate(request):
                if isinstance(event, LLMOutput):
                    tokens += len(event.token_ids)

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(reqs),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(reqs) / wall, 2),
    }


async def bench(name: str, profile, embedding: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    if name == "hf":
        engine = HFEngine.load(profile, max_queue=1024)
    else:
        from services.llm.vllm_engine import VLLMEngine

        engine = await asyncio.to_thread(VLLMEngine.load, profile, max_num_seqs=64, max_queue=1024)
    try:
        await run_level(engine, requests(4, embedding, args.max_new_tokens), 4)  # warm-up
        results = []
        for c in LEVELS:
            n = max(16, args.requests_per_level * c)
            results.append(await run_level(engine, requests(n, embedding, args.max_new_tokens), c))
            print(name, results[-1], flush=True)
        return results
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests-per-level", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_engines.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = load_profile("tiny")
    item = sample_inputs()["image"]
    embedding = ImageBindEncoder.load(profile.encoder).encode(item)  # (E,), as the encoder service sends it
    report: dict = {
        "profile": "tiny",
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        "max_new_tokens": args.max_new_tokens,
        "engines": {},
    }
    report["load_average_1m"] = {}  # other work on the machine skews vLLM (2 cores) more than HF (1 core)
    for name in args.engines.split(","):
        before = os.getloadavg()[0]
        report["engines"][name] = asyncio.run(bench(name, profile, embedding, args))
        report["load_average_1m"][name] = [round(before, 2), round(os.getloadavg()[0], 2)]
    if {"hf", "vllm"} <= set(report["engines"]):
        hf32 = report["engines"]["hf"][-1]
        v32 = report["engines"]["vllm"][-1]
        report["vllm_over_hf_at_32"] = {
            "tokens_per_s": round(v32["tokens_per_s"] / hf32["tokens_per_s"], 2),
            "requests_per_s": round(v32["requests_per_s"] / hf32["requests_per_s"], 2),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| engine | concurrency | requests | tokens/s | requests/s |")
    print("|---|---|---|---|---|")
    for name, rows in report["engines"].items():
        for r in rows:
            cells = [name, r["concurrency"], r["requests"], r["tokens_per_s"], r["requests_per_s"]]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    print("vLLM / HF at concurrency 32:", report.get("vllm_over_hf_at_32"))


if __name__ == "__main__":
    main()
