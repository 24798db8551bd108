"""How long a decoder keeps working for a request nobody waits for any more (issue 14).

    OMP_NUM_THREADS=1 .venv/bin/python bench/decoder_cancel.py [--modality image] [--steps 400]
        [--after-s 0.5] [--repeats 3]

Starts one in-process decoder service (tiny profile, as the tests do), sends one request with many
diffusion steps over gRPC and gives up after `--after-s`: once by cancelling the call, once by letting its
deadline expire. Reports, from the moment the client gave up, how long until
- `idle_s`: the batch's worker thread finished (the pipeline lock is free and no batch is running), and
- `cpu_idle_s`: the process used under 10% of a core over a 100 ms window,
next to `full_s`, the same request run to the end. Writes bench/results/decoder_cancel.json.

Measured (image, 400 steps, given up after 0.5 s, median of 3, 2 shared cores), until the worker is idle:
- before (commit e76e0a6, `PYTHONPATH=<its tree>`; bench/results/decoder_cancel_before.json): cancel
  8.0 s, deadline 6.2 s, i.e. the whole diffusion (the full run took 6.5 s);
- after (the batch stops at its next denoising step): cancel 0.011 s, deadline 0.011 s; the process CPU is
  idle in the first 100 ms window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc  # noqa: E402
import torch  # noqa: E402

from nextgpt._proto import decoder_pb2, decoder_pb2_grpc  # noqa: E402
from nextgpt.config import DecodeOptions  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from services.common import convert  # noqa: E402
from services.common.tensors import to_proto  # noqa: E402
from services.decoders.core import DecoderCore  # noqa: E402
from services.decoders.server import start  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "decoder_cancel.json"


def request(core: DecoderCore, steps: int) -> decoder_pb2.DecodeRequest:
    cfg = core.projector.cfg  # type: ignore[union-attr]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(cfg.num_signal_tokens, cfg.in_dim, generator=gen)
    return decoder_pb2.DecodeRequest(
        modality=convert.MODALITY_TO_PROTO[core.modality],
        hidden=to_proto(hidden),
        token_embeds=to_proto(torch.randn_like(hidden)),
        options=convert.decode_options_to_proto(DecodeOptions(steps=steps)),
        seed=1,
    )


def busy(core: DecoderCore) -> bool:
    """A batch is running: the pipeline lock is held (diffusion), or the batcher awaits its thread."""
    # getattr: the batcher before issue 14 had no `running`; the bench measured it too.
    return bool(core.decoder._lock.locked()) or getattr(core.batcher, "running", False)  # type: ignore


async def until_idle(core: DecoderCore, since: float) -> tuple[float, float]:
    """(seconds until the worker is idle, seconds until the process CPU is idle), both from `since`."""
    idle = cpu_idle = None
    cpu, wall = time.process_time(), time.perf_counter()
    while idle is None or cpu_idle is None:
        await asyncio.sleep(0.005)  # the worker is polled every 5 ms, the CPU over 100 ms windows
        now_cpu, now = time.process_time(), time.perf_counter()
        if idle is None and not busy(core):
            idle = now - since
        if now - wall >= 0.1:
            if cpu_idle is None and (now_cpu - cpu) / (now - wall) < 0.1:
                cpu_idle = now - since
            cpu, wall = now_cpu, now
    return idle, cpu_idle


async def one(stub: Any, core: DecoderCore, req: Any, how: str, after_s: float) -> dict[str, float]:
    started = time.perf_counter()
    if how == "full":
        await stub.Decode(req, timeout=600)
        return {"full_s": time.perf_counter() - started}
    call = stub.Decode(req, timeout=after_s if how == "deadline" else 600)
    if how == "cancel":
        await asyncio.sleep(after_s)
        call.cancel()
    code = None
    try:
        await call
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "CANCELLED"
    gave_up = time.perf_counter()
    idle_s, cpu_idle_s = await until_idle(core, gave_up)
    return {"gave_up_after_s": gave_up - started, "idle_s": idle_s, "cpu_idle_s": cpu_idle_s, "code": code}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    profile = load_profile("tiny", models_dir=args.models_dir, env={})
    core = DecoderCore(args.modality, max_batch=1, max_wait_s=0.0)
    server = await start(core, 0, host="127.0.0.1")
    await asyncio.to_thread(core.load, profile)
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "cancel": [], "deadline": []}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        req = request(core, args.steps)
        await stub.Decode(request(core, 2), timeout=600)  # warm up
        for _ in range(args.repeats):
            for how in runs:
                runs[how].append(await one(stub, core, req, how, args.after_s))
    await server.server.stop(0)
    await core.close()
    summary = {
        how: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "code"}
        for how, rs in runs.items()
    }
    return {
        "modality": args.modality,
        "steps": args.steps,
        "after_s": args.after_s,
        "repeats": args.repeats,
        "median": summary,
        "runs": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modality", default="image", choices=("image", "video", "audio"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--after-s", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models-dir", default=os.environ.get("NEXTGPT_MODELS_DIR", "models"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    print(json.dumps(result["median"], indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
