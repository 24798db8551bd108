"""Dynamic batching: concurrent requests run as one batch.

While a batch runs, new requests queue up and form the next one (no timer needed under load). A request
that finds the batcher idle starts at once after a quiet spell, and waits up to `max_wait_s` for company
only when it came within `max_wait_s` of the previous request (a burst): a lone client never pays the
window (it was 5-25 ms of every media request at one client), a burst still runs as one batch.

Items are grouped by a key (e.g. modality, or equal diffusion settings); only items with the same key
share a batch. The batch function runs in a worker thread so the event loop keeps accepting calls.

Sizes and waits are the services' business: `services/decoders/config.py` holds the decoders' defaults,
measured with `bench/decoder_batching.py`. Every batch is observed in the service's batch-size histogram.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Gauge, Histogram

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)
    after_previous_s: float = float("inf")
    """Time since the request before it arrived (any key)."""


class MicroBatcher(Generic[T, R]):
    """`await batcher.submit(key, item)` -> result of `run_batch(key, items)[i]` for that item.

    One batch runs at a time (the model is one device); while it runs, new items queue up and form the
    next batch. A batch closes at `max_batch` items, or `max_wait_s` after its first item if that one came
    in a burst (see the module docstring), else at once."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_gauge: Gauge,
        batch_histogram: Histogram,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queues: dict[Hashable, list[_Pending[T, R]]] = {}
        self._wakeup = asyncio.Event()
        self._queue_gauge = queue_gauge.labels(*labels) if labels else queue_gauge
        self._batch_histogram = batch_histogram.labels(*labels) if labels else batch_histogram
        self._worker: asyncio.Task[None] | None = None
        self._last_arrival = float("-inf")

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def submit(self, key: Hashable, item: T) -> R:
        self.start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        pending.after_previous_s, self._last_arrival = pending.enqueued - self._last_arrival, pending.enqueued
        self._queues.setdefault(key, []).append(pending)
        self._queue_gauge.set(self.depth)
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self.depth:
                self._wakeup.clear()
                await self._wakeup.wait()
            key = min(self._queues, key=lambda k: self._queues[k][0].enqueued)
            first = self._queues[key][0]
            burst = first.after_previous_s <= self.max_wait_s
            wait = first.enqueued + self.max_wait_s - time.perf_counter() if burst else 0.0
            while wait > 0 and len(self._queues[key]) < self.max_batch:
                await asyncio.sleep(min(wait, 0.002))
                wait = self._queues[key][0].enqueued + self.max_wait_s - time.perf_counter()
            pending = self._queues[key][: self.max_batch]
            del self._queues[key][: self.max_batch]
            if not self._queues[key]:
                del self._queues[key]
            pending = [p for p in pending if not p.future.cancelled()]
            self._queue_gauge.set(self.depth)
            if not pending:
                continue
            self._batch_histogram.observe(len(pending))
            try:
                results = await asyncio.to_thread(self.run_batch, key, [p.item for p in pending])
            except Exception as exc:  # noqa: BLE001 - every waiter gets the batch's error
                for p in pending:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(pending, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
