"""`nextgpt up`: the whole cluster on one machine — Redis, every service and the gateway as processes.

Each service is started exactly as in production (`python -m services.<name>.server`), with its port
and the models directory passed by environment variables, and the launcher waits until each reports
SERVING on grpc.health.v1. Backends and their metrics listen on 127.0.0.1 (the services' default host);
only the gateway's public ports follow its own `host`. With `supervise=True` (`nextgpt up`) a child that
exits on its own is started again with exponential backoff, as Kubernetes and compose restart containers.
Stopping sends SIGTERM (graceful drain) and SIGKILL only after a timeout, and restarts nothing.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nextgpt.types import MODALITIES
from services.common import ports

logger = logging.getLogger(__name__)


@dataclass
class ClusterPorts:
    """Where each part listens. `free()` picks unused ports (tests); defaults are the documented ones."""

    gateway_http: int = ports.GATEWAY_HTTP
    gateway_grpc: int = ports.GATEWAY_GRPC
    encoder: int = ports.ENCODER
    llm: int = ports.LLM
    decoders: dict[str, int] = field(default_factory=lambda: dict(ports.DECODERS))
    redis: int = ports.REDIS
    encoder_metrics: int = ports.ENCODER_METRICS
    llm_metrics: int = ports.LLM_METRICS
    decoder_metrics: dict[str, int] = field(default_factory=lambda: dict(ports.DECODER_METRICS))

    @classmethod
    def free(cls) -> ClusterPorts:
        picked = iter(free_ports(13))
        return cls(
            gateway_http=next(picked),
            gateway_grpc=next(picked),
            encoder=next(picked),
            llm=next(picked),
            decoders={m: next(picked) for m in MODALITIES},
            redis=next(picked),
            encoder_metrics=next(picked),
            llm_metrics=next(picked),
            decoder_metrics={m: next(picked) for m in MODALITIES},
        )


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out as the source of outgoing connections (Linux's default where the
    file is missing)."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now, picked outside the kernel's ephemeral range.

    A port from inside it (what `bind(0)` gives) can also become the source port of an outgoing
    connection: a client that connects to it while nothing listens there yet, or on ::1 where
    `localhost` resolves first, may then connect to itself and read its own request back as the reply
    (seen as httpx's "illegal request line" in the README examples' test)."""
    low, high = ephemeral_range()
    ranges = [r for r in (range(LOWEST_PORT, low), range(high + 1, 65536)) if len(r) > 0]
    candidates = [port for r in ranges for port in r]
    rng = random.Random()  # not seeded: parallel launchers must not try the same ports in order
    picked: list[int] = []
    for port in rng.sample(candidates, min(len(candidates), 50 * n + 100)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        picked.append(port)
        if len(picked) == n:
            return picked
    raise RuntimeError(f"no {n} free ports outside the ephemeral range {low}-{high} on 127.0.0.1")


@dataclass
class Backoff:
    """Delays between restarts of a crashing child: 1 s, 2 s, 4 s ... up to `max_s`."""

    initial_s: float = 1.0
    """Wait before the first restart after a healthy spell."""
    factor: float = 2.0
    """Growth of the wait per further crash, so a child that cannot start costs little CPU."""
    max_s: float = 30.0
    """Longest wait between restarts."""
    healthy_after_s: float = 60.0
    """A child up this long (and SERVING, where it has a health port) is healthy again: its next crash
    waits `initial_s` rather than continuing the series."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.factor < 1 or self.healthy_after_s <= 0:
            raise ValueError(f"{self} needs 0 < initial_s <= max_s, factor >= 1 and healthy_after_s > 0")

    def delay(self, attempt: int) -> float:
        """The wait before restart number `attempt` (1-based) of a series."""
        return min(self.max_s, self.initial_s * self.factor ** (attempt - 1))


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    health_target: str | None
    env: dict[str, str]
    started_at: float = field(default_factory=time.monotonic)
    """When the current process started (monotonic seconds)."""
    attempt: int = 0
    """Restarts in the current crash series (0: healthy)."""
    restart_at: float | None = None
    """When the supervisor starts it again (set while it is down)."""


class LocalCluster:
    """Start and stop the local cluster. Use as a context manager or call `start()` / `stop()`.

    `engine` is the LLM service's `--engine`: "auto" (vLLM on a GPU where it imports, else HF), "hf" or
    "vllm". `supervise` restarts children that exit on their own (after `start()`, until `stop()`), with
    `backoff` between tries; tests that kill a service to see the cluster degrade leave it off.
    """

    def __init__(
        self,
        *,
        models_dir: Path | None = None,
        profile: str | None = None,
        cluster_ports: ClusterPorts | None = None,
        log_dir: Path | None = None,
        use_redis: bool = True,
        extra_env: dict[str, str] | None = None,
        engine: str = "auto",
        supervise: bool = False,
        backoff: Backoff | None = None,
        on_progress: Callable[[list[str], list[str]], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir or os.environ.get("NEXTGPT_MODELS_DIR", "models")).resolve()
        self.profile = profile
        self.ports = cluster_ports or ClusterPorts()
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="nextgpt-cluster-"))
        self.use_redis = use_redis
        self.extra_env = extra_env or {}
        self.engine = engine
        self.children: dict[str, Child] = {}
        self.redis_url = ""
        self.supervise = supervise
        self.backoff = backoff or Backoff()
        self.on_progress = on_progress
        """Called with (ready, still loading) service names while the cluster starts (a CLI's progress)."""
        self.restarts: list[tuple[str, int | None, int, float]] = []
        """Every supervised restart: (name, exit code, attempt, delay before it in s)."""
        # one lock for `children` and their processes: the supervisor and `restart()` / `kill()` race
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------ urls
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway_http}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.gateway_grpc}"

    def describe(self) -> dict[str, str]:
        urls = {
            "chat page": f"{self.rest_url}/",
            "REST (OpenAI-compatible)": f"{self.rest_url}/v1/chat/completions",
            "API docs": f"{self.rest_url}/docs",
            "gateway gRPC (nextgpt.v1.NextGPT)": self.grpc_target,
            "encoder gRPC": f"127.0.0.1:{self.ports.encoder}",
            "llm gRPC": f"127.0.0.1:{self.ports.llm}",
        }
        for m in MODALITIES:
            urls[f"{m} decoder gRPC"] = f"127.0.0.1:{self.ports.decoders[m]}"
        urls["metrics"] = f"{self.rest_url}/metrics (+ :{self.ports.encoder_metrics}..)"
        urls["redis"] = self.redis_url or "not running (in-process LRU cache)"
        if self.supervise:
            b = self.backoff
            urls["supervision"] = f"crashed services restart after {b.initial_s:g} s .. {b.max_s:g} s"
        urls["logs"] = str(self.log_dir)
        return urls

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> None:
        """Start everything and wait until every service is SERVING; on failure stop what started."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self._spawn_all()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.start_supervisor()

    def start_redis(self) -> None:
        if not self.use_redis:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            logger.warning("redis-server not found: the encoder falls back to its in-process LRU cache")
            return
        if not self.redis_url and _listening(self.ports.redis):  # the first start only
            # another Redis (a system one, a second cluster): ours goes elsewhere rather than fail to bind
            # and be restarted forever; a restart (`stop_redis` / `start_redis`) keeps its port
            self.ports.redis = free_ports(1)[0]
            logger.warning("port of Redis in use: this cluster's Redis listens on %d", self.ports.redis)
        args = [binary, "--port", str(self.ports.redis), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += [
            "no",
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "allkeys-lru",
            "--dir",
            str(self.log_dir),
        ]
        self._spawn("redis", args, health_target=None)
        self.redis_url = f"redis://127.0.0.1:{self.ports.redis}/0"
        _wait_for_port(self.ports.redis, 20.0, self.children["redis"])

    def stop_redis(self) -> None:
        """Stop Redis only (tests use this to show the cluster survives without it)."""
        with self._lock:
            child = self.children.pop("redis", None)
        if child is not None:
            _terminate([child], 10.0)

    def _spawn_all(self) -> None:
        p = self.ports
        py = [sys.executable, "-m"]
        self._spawn(
            "encoder",
            py
            + ["services.encoder.server", "--port", str(p.encoder), "--metrics-port", str(p.encoder_metrics)],
            env={"NEXTGPT_ENCODER_REDIS_URL": self.redis_url},
            health_target=f"127.0.0.1:{p.encoder}",
        )
        self._spawn(
            "llm",
            py
            + ["services.llm.server", "--port", str(p.llm), "--metrics-port", str(p.llm_metrics)]
            + ["--engine", self.engine],
            health_target=f"127.0.0.1:{p.llm}",
        )
        for m in MODALITIES:
            args = ["services.decoders.server", "--modality", m, "--port", str(p.decoders[m])]
            args += ["--metrics-port", str(p.decoder_metrics[m])]
            self._spawn(f"decoder-{m}", py + args, health_target=f"127.0.0.1:{p.decoders[m]}")
        gateway_env = {
            "NEXTGPT_GATEWAY_ENCODER_TARGET": f"127.0.0.1:{p.encoder}",
            "NEXTGPT_GATEWAY_LLM_TARGET": f"127.0.0.1:{p.llm}",
            **{
                f"NEXTGPT_GATEWAY_{m.upper()}_DECODER_TARGET": f"127.0.0.1:{p.decoders[m]}"
                for m in MODALITIES
            },
        }
        self._spawn(
            "gateway",
            py + ["gateway.server", "--http-port", str(p.gateway_http), "--grpc-port", str(p.gateway_grpc)],
            env=gateway_env,
            health_target=f"127.0.0.1:{p.gateway_grpc}",
        )

    def _spawn(
        self, name: str, args: list[str], *, health_target: str | None, env: dict | None = None
    ) -> None:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "NEXTGPT_MODELS_DIR": str(self.models_dir)}
        if self.profile:
            full_env["NEXTGPT_PROFILE"] = self.profile
        full_env.update(self.extra_env)
        full_env.update(env or {})
        log_path = self.log_dir / f"{name}.log"
        process = _popen(args, full_env, log_path)
        with self._lock:
            self.children[name] = Child(name, process, log_path, health_target, full_env)
        logger.info("started %s (pid %d), log %s", name, process.pid, log_path)

    def restart(self, name: str, timeout_s: float = 120.0) -> None:
        """Start a stopped service again with its original command line (tests: kill then revive)."""
        with self._lock:
            child = self.children[name]
            if child.process.poll() is not None:
                self._respawn(child)
        self.wait_ready(timeout_s, names=[name])

    def kill(self, name: str) -> None:
        """SIGKILL one service (fault injection: no drain; a supervised cluster starts it again)."""
        with self._lock:
            process = self.children[name].process
        process.kill()
        process.wait(10)

    def _respawn(self, child: Child) -> None:
        child.process = _popen(cast(list[str], child.process.args), child.env, child.log_path)  # as started
        child.started_at = time.monotonic()
        child.restart_at = None

    # ------------------------------------------------------------------ supervision
    def start_supervisor(self) -> None:
        """Watch the children from a thread (`start()` calls this when `supervise` is set)."""
        if self._supervisor is not None:
            return
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self, poll_s: float = 0.25) -> None:
        """Until `stop()`: notice children that exited, restart each after its backoff delay."""
        while not self._stopping.wait(poll_s):
            with self._lock:
                children = list(self.children.values())
            for child in children:
                try:
                    self._look_after(child)
                except Exception:  # a failed spawn is logged and tried again, never ends supervision
                    logger.exception("supervising %s failed", child.name)

    def _look_after(self, child: Child) -> None:
        now = time.monotonic()
        up_long_enough = now - child.started_at >= self.backoff.healthy_after_s
        if child.attempt and up_long_enough and child.process.poll() is None:
            # the health check (up to 1 s) runs outside the lock
            if child.health_target is None or is_serving(child.health_target):
                logger.info("%s healthy again after %d restart(s)", child.name, child.attempt)
                child.attempt = 0
            return
        with self._lock:
            if self._stopping.is_set() or self.children.get(child.name) is not child:
                return
            code = child.process.poll()
            if code is None:
                return
            if child.restart_at is None:  # just found dead: schedule the restart
                if up_long_enough:  # it had served a while: a new series, not the next step of one
                    child.attempt = 0
                child.attempt += 1
                delay = self.backoff.delay(child.attempt)
                child.restart_at = now + delay
                self.restarts.append((child.name, code, child.attempt, delay))
                logger.warning(
                    "%s exited unexpectedly with code %s; restart attempt %d in %gs (log %s)",
                    child.name,
                    code,
                    child.attempt,
                    delay,
                    child.log_path,
                )
            elif now >= child.restart_at:
                self._respawn(child)
                logger.warning(
                    "restarted %s (pid %d, attempt %d)", child.name, child.process.pid, child.attempt
                )

    def wait_ready(self, timeout_s: float, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [
            c for c in self.children.values() if c.health_target and (names is None or c.name in names)
        ]
        ready: list[str] = []
        while pending:
            if self.on_progress is not None:
                self.on_progress(ready, [c.name for c in pending])
            for child in list(pending):
                if child.process.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} exited with code {child.process.returncode} during start; "
                        f"last log lines:\n{_tail(child.log_path)}"
                    )
                if is_serving(child.health_target or ""):
                    pending.remove(child)
                    ready.append(child.name)
            if pending and time.monotonic() > deadline:
                names_left = ", ".join(c.name for c in pending)
                raise TimeoutError(
                    f"not SERVING after {timeout_s:.0f}s: {names_left} (logs in {self.log_dir})"
                )
            if pending:
                time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM everything (gateway first, Redis last), SIGKILL what is left after `timeout_s`."""
        self._stopping.set()  # first, so nothing that exits from here on is restarted
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        order = ["gateway", "llm", "encoder", *(f"decoder-{m}" for m in MODALITIES), "redis"]
        with self._lock:
            names = [n for n in order if n in self.children] + [n for n in self.children if n not in order]
            children = [self.children[n] for n in names]
            self.children.clear()
        _terminate(children, timeout_s)


def _popen(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C reaches only the launcher, which then stops it gracefully)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_repo_root(), start_new_session=True
        )


def _terminate(children: list[Child], timeout_s: float) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs: killing it", child.name, timeout_s)
            child.process.kill()
            child.process.wait(10)


def is_serving(target: str, timeout_s: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as ch:
            # typeshed's HealthStub declares no methods (the generated class sets them in __init__).
            stub = health_pb2_grpc.HealthStub(ch)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)  # type: ignore[attr-defined]
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited during start:\n{_tail(child.log_path)}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not open port {port} in {timeout_s:.0f}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
