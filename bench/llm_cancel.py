"""How soon the LLM service goes idle after a REST client gives up, streaming or not.

    OMP_NUM_THREADS=1 .venv/bin/python bench/llm_cancel.py

Starts the local cluster (HF engine, tiny profile), asks for a 4000-token reply and gives up after 0.5 s:
a non-streaming client by timing out (the gateway watches the connection), a streaming one by closing the
stream. Then samples the LLM process's CPU time every 0.5 s for 5 s. Issue 14 asks for idle within 3 s.
Writes bench/results/llm_cancel.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402

from services.launcher import ClusterPorts, LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BODY = {
    "model": "nextgpt-tiny",
    "messages": [{"role": "user", "content": "Talk for a long time."}],
    "max_tokens": 4000,
    "temperature": 1.0,
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def give_up(url: str, stream: bool, after_s: float = 0.5) -> None:
    started = time.monotonic()
    try:
        if stream:
            with httpx.stream("POST", url, json={**BODY, "stream": True}, timeout=30) as response:
                for _ in response.iter_lines():
                    if time.monotonic() - started > after_s:
                        break
        else:
            httpx.post(url, json=BODY, timeout=after_s)
    except httpx.ReadTimeout:
        pass  # the client gave up; httpx closed the connection


def main() -> None:
    models = Path(os.environ.get("NEXTGPT_MODELS_DIR", ROOT / "models"))
    results = {}
    with LocalCluster(models_dir=models, cluster_ports=ClusterPorts.free(), engine="hf") as cluster:
        pid = cluster.children["llm"].process.pid
        url = f"{cluster.rest_url}/v1/chat/completions"
        for stream in (False, True):
            before = cpu_seconds(pid)
            give_up(url, stream)
            busy = cpu_seconds(pid) - before
            samples, previous = [], cpu_seconds(pid)
            for _ in range(10):
                time.sleep(0.5)
                now = cpu_seconds(pid)
                samples.append(round(now - previous, 3))
                previous = now
            name = "stream" if stream else "non_stream"
            results[name] = {"llm_cpu_s_while_waiting": round(busy, 3), "llm_cpu_s_per_500ms_after": samples}
            print(f"{name}: LLM CPU {busy:.2f} s while the client waited; after it gave up: {samples}")
    out = ROOT / "bench" / "results" / "llm_cancel.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
