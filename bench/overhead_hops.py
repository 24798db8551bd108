"""Where a text->text request's serving overhead goes, hop by hop (issue 15): the same request in process,
straight to the LLM service over gRPC, through the gateway's gRPC API and through its REST API (streamed
and not), interleaved round by round so that the machine's drift cancels out.

    OMP_NUM_THREADS=1 .venv/bin/python bench/overhead_hops.py --rounds 40

Starts a local tiny cluster (HF engine, no Redis) and loads the tiny pipeline in this process. Prints, per
path, the p50 latency and the median of the per-round differences to the in-process call; no file is
written. Each hop adds its difference to the one before it: LLM gRPC - in process is the LLM service
(gRPC stream, engine thread), gateway gRPC - LLM gRPC the gateway's flow, REST - gateway gRPC the HTTP
layer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from nextgpt._proto import common_pb2, llm_pb2, llm_pb2_grpc, nextgpt_pb2, nextgpt_pb2_grpc  # noqa: E402
from nextgpt.config import GenerationOptions  # noqa: E402
from nextgpt.pipeline import NextGPT  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from nextgpt.types import Message  # noqa: E402
from services.launcher import ClusterPorts, LocalCluster  # noqa: E402

PROMPT = "Hello there."


def senders(model: NextGPT, cluster: LocalCluster, tokens: int) -> dict[str, Callable[[int], object]]:
    """Per path, a function that sends the text request with seed `i` and waits for all of its answer."""
    llm = llm_pb2_grpc.LLMServiceStub(grpc.insecure_channel(f"127.0.0.1:{cluster.ports.llm}"))
    gateway = nextgpt_pb2_grpc.NextGPTStub(grpc.insecure_channel(cluster.grpc_target))
    http = httpx.Client(timeout=60)  # one kept-alive connection, as a real client keeps it
    url = f"{cluster.rest_url}/v1/chat/completions"

    def in_process(i: int) -> object:
        return model.generate([Message("user", PROMPT)], GenerationOptions(seed=i, max_new_tokens=tokens))

    def llm_grpc(i: int) -> object:
        turn = llm_pb2.Turn(role=common_pb2.ROLE_USER, text=PROMPT)
        sampling = llm_pb2.SamplingOptions(max_new_tokens=tokens, seed=i)
        return list(llm.Generate(llm_pb2.LLMGenerateRequest(turns=[turn], sampling=sampling)))

    def gateway_grpc(i: int) -> object:
        message = nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=PROMPT)
        options = common_pb2.GenerationOptions(max_new_tokens=tokens, seed=i)
        return list(gateway.GenerateStream(nextgpt_pb2.GenerateRequest(messages=[message], options=options)))

    def rest(stream: bool) -> Callable[[int], object]:
        def send(i: int) -> object:
            body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "seed": i}
            with http.stream("POST", url, json={**body, "stream": stream}) as response:
                response.raise_for_status()
                return list(response.iter_lines())

        return send

    return {
        "in process": in_process,
        "LLM gRPC": llm_grpc,
        "gateway gRPC": gateway_grpc,
        "REST streamed": rest(True),
        "REST whole": rest(False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds (each path once per round)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()

    model = NextGPT.from_profile(load_profile("tiny", models_dir=args.models_dir))
    ports = ClusterPorts.free()
    cluster = LocalCluster(
        models_dir=args.models_dir, profile="tiny", cluster_ports=ports, engine="hf", use_redis=False
    )
    cluster.start(180)
    try:
        paths = senders(model, cluster, args.max_new_tokens)
        for send in paths.values():  # warm-up: connections, first compilations
            for i in range(3):
                send(i)
        ms: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds):
            for name, send in paths.items():
                started = time.perf_counter()
                send(100 + r)
                ms[name].append(1000 * (time.perf_counter() - started))
    finally:
        cluster.stop()
    base = np.array(ms["in process"])
    print(f"text->text, {args.max_new_tokens} new tokens, {args.rounds} interleaved rounds (ms)")
    for name, values in ms.items():
        v = np.array(values)
        print(f"{name:14s} p50 {np.median(v):6.1f}   vs in process {np.median(v - base):+6.1f}")


if __name__ == "__main__":
    main()
