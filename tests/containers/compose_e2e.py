"""The compose cluster end to end, from the host: `make compose-test` (scripts/compose_test.sh) runs it once
the CPU images are built. Not a pytest module (`make test` builds no image): standard library only, so
it runs with any python3 beside docker.

Steps, each logged: up (docker-compose.yml + docker-compose.tiny.yml, no build, no pull) -> every service
healthy (models-init completed) -> text->image, image->text (examples/cat.png) and a streaming request
through the gateway's published REST port -> the encoder's embeddings in the Redis container (a restarted
encoder, whose in-process LRU is empty, gets the same image from Redis) -> the llm container recreated on
the image's vLLM CPU build, a request through it -> a stopped decoder: a partial answer (text, the other
media, an error entry) -> down -v, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FILES = ("docker-compose.yml", "docker-compose.tiny.yml")
PROJECT = "nextgpt-compose-test"
ONE_SHOT = {"models-init"}
MODEL = "nextgpt-tiny"
START = time.monotonic()


def log(message: str) -> None:
    print(f"[compose-e2e] {time.monotonic() - START:6.1f}s {message}", flush=True)


class Cluster:
    def __init__(self, compose: list[str], env: dict[str, str], out: Path) -> None:
        self.base = [*compose, "-p", PROJECT, *(a for f in FILES for a in ("-f", str(ROOT / f)))]
        self.env = env
        self.up_log = out / "up.log"

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        done = subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> subprocess.Popen[bytes]:
        """`up -d` in the background, its output in a file (a pipe could fill and block it)."""
        args = ["up", "-d", "--no-build", "--pull", "never"]
        with self.up_log.open("w") as sink:
            return subprocess.Popen([*self.base, *args], cwd=ROOT, env=self.env, stdout=sink, stderr=sink)

    def services(self) -> list[dict[str, Any]]:
        out = self.run("ps", "-a", "--format", "json")
        # compose v2 prints one JSON object per line (older 2.x: one JSON array)
        rows = json.loads(out) if out.lstrip().startswith("[") else [json.loads(x) for x in out.splitlines()]
        return rows

    def container(self, service: str) -> str:
        return self.run("ps", "-a", "-q", service).strip()

    def exec(self, service: str, *cmd: str) -> str:
        done = subprocess.run(
            ["docker", "exec", self.container(service), *cmd], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"exec {service} {cmd}: {done.stderr[-2000:]}")
        return done.stdout

    def wait_healthy(
        self, timeout_s: float, services: set[str] | None = None, up: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Until every service (or those named) is healthy, models-init exited 0 and `up` (when given)
        returned 0; logs each change of state."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            if up is not None and up.poll() is not None:
                if up.returncode != 0:
                    output = self.up_log.read_text()[-2000:]
                    raise RuntimeError(f"compose up: exit {up.returncode}\n{output}")
                up = None
            pending = []
            for row in self.services():
                name = row["Service"]
                if services is not None and name not in services:
                    continue
                state = row["State"] + (f"/{row['Health']}" if row.get("Health") else "")
                if seen.get(name) != state:
                    log(f"  {name:14s} {state}")
                    seen[name] = state
                if name in ONE_SHOT:
                    if row["State"] == "exited" and row.get("ExitCode", 0) != 0:
                        raise RuntimeError(f"{name} exited with {row['ExitCode']}")
                    if row["State"] != "exited":
                        pending.append(name)
                elif row["State"] != "running" or row.get("Health") not in ("healthy", None, ""):
                    if row["State"] in ("exited", "dead", "restarting") or row.get("Health") == "unhealthy":
                        raise RuntimeError(f"{name} is {state} (its log: build/compose-test/containers.log)")
                    pending.append(name)
            if not pending and seen and up is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {pending}")
            time.sleep(3)


class Gateway:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def _post(self, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=300)

    def chat(self, content: Any, modalities: list[str], **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "seed": 0, "modalities": modalities, "max_tokens": 40, **extra}
        body["messages"] = [{"role": "user", "content": content}]
        try:
            with self._post(body) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:2000]!r}") from exc

    def stream(self, content: Any, modalities: list[str]) -> Iterator[dict[str, Any]]:
        body = {"model": MODEL, "seed": 0, "modalities": modalities, "max_tokens": 40, "stream": True}
        body["messages"] = [{"role": "user", "content": content}]
        with self._post(body) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


def media(message: dict[str, Any]) -> dict[str, list[bytes]]:
    """Generated media of a REST message: data-URL parts of content, audio in message.audio."""
    found: dict[str, list[bytes]] = {}
    parts = message.get("content")
    for part in parts if isinstance(parts, list) else []:
        kind = part["type"]
        if kind in ("image_url", "video_url"):
            url = part[kind]["url"]
            found.setdefault(kind.removesuffix("_url"), []).append(base64.b64decode(url.split(",", 1)[1]))
    if message.get("audio"):
        found.setdefault("audio", []).append(base64.b64decode(message["audio"]["data"]))
    return found


def text_of(message: dict[str, Any]) -> str:
    parts = message.get("content")
    if isinstance(parts, str):
        return parts
    return "".join(p.get("text", "") for p in parts or [] if p["type"] == "text")


def cache_hits(cluster: Cluster) -> dict[str, float]:
    """nextgpt_encoder_cache_hits_total by backend, read inside the encoder container (port not published)."""
    script = (
        "import os, urllib.request as u; "
        "p = os.environ.get('NEXTGPT_ENCODER_METRICS_PORT', '9161'); "
        "print(u.urlopen(f'http://127.0.0.1:{p}/metrics', timeout=10).read().decode())"
    )
    hits: dict[str, float] = {}
    for line in cluster.exec("encoder", "python", "-c", script).splitlines():
        if line.startswith("nextgpt_encoder_cache_hits_total{"):
            backend = line.split('backend="', 1)[1].split('"', 1)[0]
            hits[backend] = float(line.rsplit(" ", 1)[1])
    return hits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check(condition: bool, what: str, detail: Any = "") -> None:
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    log(f"  ok: {what}")


def scenario(cluster: Cluster, gateway: Gateway, timeout_s: float, vllm: bool) -> None:
    log(f"step 1/7: up ({' + '.join(FILES)}, project {PROJECT}, gateway REST {gateway.url})")
    # `up -d` itself waits for the depends_on conditions: run it beside the wait loop, which logs progress
    up = cluster.up()
    log("step 2/7: waiting for every healthcheck")
    cluster.wait_healthy(timeout_s, up=up)
    status, ready = gateway.get("/readyz")
    check(status == 200, "gateway /readyz 200 (every backend SERVING)", ready)
    log(f"  encoder cache as the gateway sees it: {json.dumps(ready)[:400]}")

    log("step 3/7: requests through the gateway container")
    t0 = time.monotonic()
    reply = gateway.chat("Draw a red fox in the snow.", ["text", "image"])
    images = media(reply["choices"][0]["message"]).get("image", [])
    check(
        len(images) == 1 and images[0][:8] == b"\x89PNG\r\n\x1a\n" and reply["nextgpt"]["errors"] == [],
        f"text->image: a PNG of {len(images[0]) if images else 0} bytes ({time.monotonic() - t0:.1f} s)",
        reply.get("nextgpt"),
    )
    cat = base64.b64encode((ROOT / "examples/cat.png").read_bytes()).decode()
    image_in = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{cat}"}},
    ]
    t0 = time.monotonic()
    first = gateway.chat(image_in, ["text"])
    answer = text_of(first["choices"][0]["message"])
    check(
        bool(answer) and first["nextgpt"]["errors"] == [],
        f"image->text (examples/cat.png): {len(answer)} characters ({time.monotonic() - t0:.1f} s)",
        first.get("nextgpt"),
    )
    t0 = time.monotonic()
    chunks = list(gateway.stream("A fox, please.", ["text", "image"]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    texts = [d for d in deltas if isinstance(d.get("content"), str) and d["content"]]
    parts = [d["content"][0]["type"] for d in deltas if isinstance(d.get("content"), list) and d["content"]]
    check(
        len(texts) > 1 and "image_url" in parts and "nextgpt" in chunks[-1],
        f"streaming: {len(chunks)} chunks, {len(texts)} text deltas, media {parts}"
        f" ({time.monotonic() - t0:.1f} s)",
        chunks[-1] if chunks else None,
    )

    log("step 4/7: the Redis cache across containers")
    keys = int(cluster.exec("redis", "redis-cli", "dbsize").strip() or 0)
    check(keys >= 1, f"the Redis container holds {keys} key(s) written by the encoder container")
    log("  restarting the encoder (its in-process LRU is lost; Redis keeps the embeddings)")
    cluster.run("restart", "encoder", timeout=120)
    cluster.wait_healthy(timeout_s, {"encoder"})
    before = cache_hits(cluster).get("redis", 0.0)
    again = gateway.chat(image_in, ["text"])
    after = cache_hits(cluster).get("redis", 0.0)
    check(after >= before + 1, f"the same image again: a cache hit from Redis ({before:g} -> {after:g})")
    check(text_of(again["choices"][0]["message"]) == answer, "the same answer from the cached embedding")

    if vllm:
        log("step 5/7: the llm container again, on the image's vLLM CPU build (NEXTGPT_LLM_ENGINE=vllm)")
        cluster.env["NEXTGPT_LLM_ENGINE"] = "vllm"
        cluster.run("up", "-d", "--no-deps", "--no-build", "--pull", "never", "llm", timeout=300)
        cluster.wait_healthy(timeout_s, {"llm"})
        engine = [line for line in cluster.run("logs", "llm").splitlines() if "LLM engine:" in line]
        check(bool(engine) and "LLM engine: vllm" in engine[-1], "the llm service runs vLLM", engine[-1:])
        t0 = time.monotonic()
        reply = gateway.chat("A fox, please.", ["text", "image"])
        check(
            bool(text_of(reply["choices"][0]["message"])) and reply["nextgpt"]["errors"] == [],
            f"text + image through vLLM ({time.monotonic() - t0:.1f} s)",
            reply.get("nextgpt"),
        )
    else:
        log("step 5/7: skipped (--skip-vllm)")

    log("step 6/7: a stopped decoder gives a partial answer")
    cluster.run("stop", "decoder-video", timeout=120)
    reply = gateway.chat("A picture and a video.", ["text", "image", "video"], max_tokens=60)
    got = media(reply["choices"][0]["message"])
    errors = [e["modality"] for e in reply["nextgpt"]["errors"]]
    check(
        sorted(got) == ["image"] and errors == ["video"] and text_of(reply["choices"][0]["message"]) != "",
        f"decoder-video stopped: text + {sorted(got)} + an error entry for {errors}",
        reply["nextgpt"],
    )
    status, ready = gateway.get("/readyz")
    check(status == 503 and "decoder.video" in str(ready), "gateway /readyz 503 naming decoder.video", ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", default="docker compose", help="the Compose v2 command")
    parser.add_argument("--out", type=Path, default=ROOT / "build/compose-test")
    parser.add_argument("--timeout-s", type=float, default=900, help="for every service to turn healthy")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up (debugging)")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out step 5 (the llm on vLLM)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "NEXTGPT_HTTP_PORT": str(http_port), "NEXTGPT_GRPC_PORT": str(grpc_port)}
    cluster = Cluster(shlex.split(args.compose), env, args.out)
    gateway = Gateway(http_port)
    ok = False
    try:
        scenario(cluster, gateway, args.timeout_s, vllm=not args.skip_vllm)
        ok = True
    except Exception as exc:  # noqa: BLE001 - logged with the containers' logs, then torn down
        log(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        logs = cluster.run("logs", "--no-color", "--timestamps", check=False, timeout=120)
        (args.out / "containers.log").write_text(logs)
        if not ok:
            log(f"the containers' logs: {args.out / 'containers.log'} (last lines below)")
            print("\n".join(logs.splitlines()[-60:]), flush=True)
        if args.keep:
            log("--keep: the cluster stays up")
        else:
            log("step 7/7: down -v (containers, network, volumes)")
            cluster.run("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
    log("PASSED: compose cluster end to end" if ok else "compose-test FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
