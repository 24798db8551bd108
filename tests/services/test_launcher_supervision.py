"""`LocalCluster`'s supervisor, with stand-in children (plain Python processes, no models).

A child that exits on its own is started again after 1 s, 2 s, 4 s ... (here scaled down), each restart
is logged with name, exit code, attempt and delay, and `stop()` ends everything without restarts.
"""

from __future__ import annotations

import logging
import sys
import time

import pytest

from services.launcher import Backoff, LocalCluster

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _wait(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path):
    running = LocalCluster(
        log_dir=tmp_path,
        supervise=True,
        backoff=Backoff(initial_s=0.2, factor=2.0, max_s=0.4, healthy_after_s=60.0),
    )
    yield running
    running.stop(timeout_s=5)


def test_backoff_doubles_up_to_its_cap_and_rejects_nonsense():
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=10, max_s=5)


def test_a_killed_child_is_restarted_and_the_restart_logged(cluster, caplog):
    caplog.set_level(logging.WARNING, logger="services.launcher")
    cluster._spawn("sleeper", SLEEPER, health_target=None)
    cluster.start_supervisor()
    first = cluster.children["sleeper"].process
    cluster.kill("sleeper")
    _wait(lambda: cluster.children["sleeper"].process is not first)
    assert cluster.children["sleeper"].process.poll() is None
    [(name, code, attempt, delay)] = cluster.restarts
    assert (name, code, attempt, delay) == ("sleeper", -9, 1, 0.2)
    assert "sleeper exited unexpectedly with code -9; restart attempt 1 in 0.2s" in caplog.text
    assert "restarted sleeper" in caplog.text


def test_a_crash_loop_backs_off_and_stop_restarts_nothing(cluster):
    cluster._spawn("crasher", CRASHER, health_target=None)
    cluster._spawn("sleeper", SLEEPER, health_target=None)
    cluster.start_supervisor()
    _wait(lambda: len(cluster.restarts) >= 3)
    assert [r for r in cluster.restarts[:3]] == [
        ("crasher", 3, 1, 0.2),
        ("crasher", 3, 2, 0.4),
        ("crasher", 3, 3, 0.4),
    ]
    processes = [c.process for c in cluster.children.values()]
    cluster.stop(timeout_s=5)
    count = len(cluster.restarts)
    time.sleep(1.0)  # longer than the largest delay: a supervisor still running would restart now
    assert len(cluster.restarts) == count and not cluster.children
    assert all(p.poll() is not None for p in processes), [(p.args, p.poll()) for p in processes]
