"""A real, throw-away redis-server on a free loopback port (no persistence, bounded memory).

Use in a test module or conftest:

    from tests.services.redis_fixture import redis_server  # noqa: F401  (URL, one Redis per module)
    from tests.services.redis_fixture import redis_process  # noqa: F401 (RedisProcess, one per test)

`redis_process` yields the `RedisProcess` itself, for tests that stop and restart Redis mid-run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.launcher import free_ports

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT_S = 10.0


def redis_binary() -> str:
    binary = REDIS_SERVER if Path(REDIS_SERVER).is_file() else shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server is not installed ({REDIS_SERVER} missing): `apt-get install redis-server`")
    return binary


class RedisProcess:
    """One redis-server child; `stop()` and `start()` again keep the port (and so the URL)."""

    def __init__(self, port: int | None = None, maxmemory: str = "64mb") -> None:
        self.port = port or free_ports(1)[0]
        self.maxmemory = maxmemory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._log = Path(self._dir.name) / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", self._dir.name, "--logfile", str(self._log)]
        args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    log = self._log.read_text(errors="replace") if self._log.exists() else ""
                    pytest.fail(f"redis-server exited with {self.proc.returncode}: {err}{log[-2000:]}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server on port {self.port} did not answer PING in {START_TIMEOUT_S}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 5 s) and wait, so the port is free again."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[str]:
    """URL of a fresh redis-server shared by the module's tests."""
    with RedisProcess() as server:
        yield server.url


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A fresh redis-server for one test, which may stop and restart it."""
    with RedisProcess() as server:
        yield server
