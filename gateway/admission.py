"""Admission control: at most `max_in_flight` requests are served at once, up to `max_waiting` more wait
(each at most `max_wait_s`) for a slot, and the rest are refused at once with `Overloaded` (HTTP 429 with
`Retry-After`, gRPC RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`).

Without it the only limit was the LLM's queue: 200 simultaneous requests got 135 503s, no retry hint, and
everything admitted waited behind everything else. Past the point where the backends are saturated,
admitting more only adds latency (bench/results/serve.md: the same throughput at 32 clients as at 16,
at twice the latency), so the gateway keeps the excess waiting or tells clients when to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge

from nextgpt.errors import Overloaded

WAITING = Gauge("nextgpt_gateway_admission_waiting", "Requests waiting for an admission slot")
REFUSED = Counter(
    "nextgpt_gateway_admission_refused_total", "Requests refused by admission control", ["reason"]
)


class Admission:
    """`async with admission.slot(): ...` serves one request, or raises `Overloaded`."""

    def __init__(self, max_in_flight: int, max_waiting: int, max_wait_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self.waiting = 0
        self.in_flight = 0
        self._mean_s = 1.0
        """Moving average of the time a request holds its slot: the basis of the retry hint."""

    def retry_after_s(self) -> int:
        """Whole seconds until a slot is likely free for a new request: the requests ahead of it share
        `max_in_flight` slots, each held for about the recent mean time (1..60 s)."""
        ahead = self.waiting + self.in_flight + 1
        return min(60, max(1, math.ceil(self._mean_s * ahead / self.max_in_flight)))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            if self.waiting >= self.max_waiting:
                REFUSED.labels("queue_full").inc()
                raise Overloaded(
                    f"the gateway is at capacity ({self.max_in_flight} requests in flight, "
                    f"{self.waiting} waiting); retry after the Retry-After delay",
                    retry_after_s=self.retry_after_s(),
                )
            self.waiting += 1
            WAITING.set(self.waiting)
            try:
                await asyncio.wait_for(self._slots.acquire(), self.max_wait_s)
            except TimeoutError:
                REFUSED.labels("wait_timeout").inc()
                raise Overloaded(
                    f"no capacity freed up within {self.max_wait_s:g} s ({self.max_in_flight} requests in "
                    "flight); retry after the Retry-After delay",
                    retry_after_s=self.retry_after_s(),
                ) from None
            finally:
                self.waiting -= 1
                WAITING.set(self.waiting)
        else:
            await self._slots.acquire()
        self.in_flight += 1
        started = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
            held = asyncio.get_running_loop().time() - started
            self._mean_s += 0.1 * (held - self._mean_s)
