"""Where a request's serving overhead goes, hop by hop (issue 15): the same request in process, straight to
the LLM service over gRPC, through the gateway's gRPC API and through its REST API (streamed and not),
interleaved round by round so that the machine's drift cancels out.

    OMP_NUM_THREADS=1 .venv/bin/python bench/overhead_hops.py --rounds 40
    OMP_NUM_THREADS=1 .venv/bin/python bench/overhead_hops.py --kind 'text->audio'

`--kind` takes a request type of `bench/serve.py`'s mix (default text->text, with the mix's prompt); a
type with media in or out is sent in process and over REST only (streamed, fresh input media each round).

Starts a local tiny cluster (HF engine, no Redis) and loads the tiny pipeline in this process. Prints, per
path, the p50 latency and the median of the per-round differences to the in-process call; no file is
written. Each hop adds its difference to the one before it: LLM gRPC - in process is the LLM service
(gRPC stream, engine thread), gateway gRPC - LLM gRPC the gateway's flow, REST - gateway gRPC the HTTP
layer. Beside the times it prints the CPU each service spent per request of each path (from /proc, summed
over the rounds), and the in-process call's own CPU: where the overhead is work rather than waiting.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_mix, as bench/serve.py imports it

import grpc  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from serve_mix import MIX, Kind, media_for, request_body  # noqa: E402

from nextgpt._proto import common_pb2, llm_pb2, llm_pb2_grpc, nextgpt_pb2, nextgpt_pb2_grpc  # noqa: E402
from nextgpt.config import GenerationOptions  # noqa: E402
from nextgpt.media.samples import sample_inputs  # noqa: E402
from nextgpt.pipeline import NextGPT  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from nextgpt.types import Message  # noqa: E402
from services.launcher import ClusterPorts, LocalCluster  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads (Linux /proc; clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_lines(http: httpx.Client, url: str, body: dict) -> list[str]:
    """POST `body` on the client's kept-alive connection and read the whole answer (SSE lines or JSON)."""
    with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        return list(response.iter_lines())


def senders(
    model: NextGPT, cluster: LocalCluster, kind: Kind, tokens: int
) -> dict[str, Callable[[int], object]]:
    """Per path, a function that sends the request with seed `i` and waits for all of its answer."""
    if kind.inputs or kind.media_out:
        return media_senders(model, cluster, kind, tokens)
    prompt = kind.prompt
    llm = llm_pb2_grpc.LLMServiceStub(grpc.insecure_channel(f"127.0.0.1:{cluster.ports.llm}"))
    gateway = nextgpt_pb2_grpc.NextGPTStub(grpc.insecure_channel(cluster.grpc_target))
    http = httpx.Client(timeout=60)  # one kept-alive connection, as a real client keeps it
    url = f"{cluster.rest_url}/v1/chat/completions"

    def in_process(i: int) -> object:
        return model.generate([Message("user", prompt)], GenerationOptions(seed=i, max_new_tokens=tokens))

    def llm_grpc(i: int) -> object:
        turn = llm_pb2.Turn(role=common_pb2.ROLE_USER, text=prompt)
        sampling = llm_pb2.SamplingOptions(max_new_tokens=tokens, seed=i)
        return list(llm.Generate(llm_pb2.LLMGenerateRequest(turns=[turn], sampling=sampling)))

    def gateway_grpc(i: int) -> object:
        message = nextgpt_pb2.Message(role=common_pb2.ROLE_USER, text=prompt)
        options = common_pb2.GenerationOptions(max_new_tokens=tokens, seed=i)
        return list(gateway.GenerateStream(nextgpt_pb2.GenerateRequest(messages=[message], options=options)))

    def rest(stream: bool) -> Callable[[int], object]:
        def send(i: int) -> object:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "seed": i}
            return post_lines(http, url, {**body, "stream": stream})

        return send

    return {
        "in process": in_process,
        "LLM gRPC": llm_grpc,
        "gateway gRPC": gateway_grpc,
        "REST streamed": rest(True),
        "REST whole": rest(False),
    }


def media_senders(
    model: NextGPT, cluster: LocalCluster, kind: Kind, tokens: int
) -> dict[str, Callable[[int], object]]:
    """In process and over REST (streamed, one kept-alive connection), with fresh input media each call."""
    inputs = sample_inputs()
    http = httpx.Client(timeout=120)
    url = f"{cluster.rest_url}/v1/chat/completions"

    def in_process(i: int) -> object:
        options = GenerationOptions(seed=i, max_new_tokens=tokens, modalities=kind.modalities)
        return model.generate([Message("user", kind.prompt, media_for(kind, inputs))], options)

    def rest(i: int) -> object:
        return post_lines(http, url, request_body(kind, inputs, tokens, i))

    return {"in process": in_process, "REST streamed": rest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds (each path once per round)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--kind", default="text->text", choices=[k.name for k in MIX], help="request type of the serve mix"
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()

    model = NextGPT.from_profile(load_profile("tiny", models_dir=args.models_dir))
    ports = ClusterPorts.free()
    cluster = LocalCluster(
        models_dir=args.models_dir, profile="tiny", cluster_ports=ports, engine="hf", use_redis=False
    )
    cluster.start(180)
    try:
        kind = next(k for k in MIX if k.name == args.kind)
        paths = senders(model, cluster, kind, args.max_new_tokens)
        for send in paths.values():  # warm-up: connections, first compilations
            for i in range(3):
                send(i)
        pids = {name: child.process.pid for name, child in cluster.children.items()}
        ms: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(["in process", *pids], 0.0) for name in paths}
        for r in range(args.rounds):
            for name, send in paths.items():
                before = {service: cpu_s(pid) for service, pid in pids.items()}
                own, started = time.process_time(), time.perf_counter()
                send(100 + r)
                ms[name].append(1000 * (time.perf_counter() - started))
                if name == "in process":
                    cpu[name]["in process"] += time.process_time() - own
                for service, pid in pids.items():
                    cpu[name][service] += cpu_s(pid) - before[service]
    finally:
        cluster.stop()
    base = np.array(ms["in process"])
    print(f"{args.kind}, {args.max_new_tokens} new tokens, {args.rounds} interleaved rounds (ms)")
    for name, values in ms.items():
        v = np.array(values)
        spent = ", ".join(f"{svc} {1000 * s / args.rounds:.1f}" for svc, s in cpu[name].items() if s)
        diff = np.median(v - base)
        print(f"{name:14s} p50 {np.median(v):6.1f}   vs in process {diff:+6.1f}   CPU ms: {spent}")


if __name__ == "__main__":
    main()
