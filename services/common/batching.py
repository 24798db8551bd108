"""Dynamic batching: concurrent requests run as one batch.

While a batch runs, new requests queue up and form the next one (no timer needed under load). A request
that finds the batcher idle starts at once after a quiet spell, and waits up to `max_wait_s` for company
only when it came within `max_wait_s` of the previous request (a burst): a lone client never pays the
window (it was 5-25 ms of every media request at one client), a burst still runs as one batch.

Items are grouped by a key (e.g. modality, or equal diffusion settings); only items with the same key
share a batch. The batch function runs in a worker thread so the event loop keeps accepting calls.

Sizes and waits are the services' business: `services/decoders/config.py` holds the decoders' defaults,
measured with `bench/decoder_batching.py`. Every batch is observed in the service's batch-size histogram.

Nobody's work is done for nothing: a request cancelled while queued (gRPC cancel, expired deadline) leaves
the queue at once, and with `stoppable=True` the batch function gets a `should_stop()` callable that turns
true when every request of the running batch has been cancelled (a diffusion stops at its next step).
With `max_queue`, a request that finds that many items waiting is refused with `Overloaded` and a retry
hint, rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Gauge, Histogram

from nextgpt.errors import Overloaded

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

StopCheck = Callable[[], bool]
"""Called from the batch's worker thread: True once nobody waits for the batch's results any more."""

_BATCH_TIME_WEIGHT = 0.2
"""Weight of the latest batch in the running mean of batch times behind the retry hint."""


@dataclass(eq=False)  # compared by identity: a queue removes exactly its own entry
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
    in a burst (see the module docstring), else at once. With `stoppable=True` the call is
    `run_batch(key, items, should_stop)` (see `StopCheck`); `max_queue` bounds the items waiting, all keys
    together (None: unbounded)."""

    def __init__(
        self,
        run_batch: Callable[..., Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_gauge: Gauge,
        batch_histogram: Histogram,
        labels: tuple[str, ...] = (),
        max_queue: int | None = None,
        stoppable: bool = False,
        name: str = "the",
    ) -> None:
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue={max_queue} must be at least 1 (or None for no bound)")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stoppable = stoppable
        self.name = name
        """Names the queue in the `Overloaded` message, e.g. "the image decoder"."""
        self._queues: dict[Hashable, list[_Pending[T, R]]] = {}
        self._wakeup = asyncio.Event()
        self._queue_gauge = queue_gauge.labels(*labels) if labels else queue_gauge
        self._batch_histogram = batch_histogram.labels(*labels) if labels else batch_histogram
        self._worker: asyncio.Task[None] | None = None
        self._last_arrival = float("-inf")
        self._mean_batch_s = 0.0
        self.running = False
        """A batch is in its worker thread."""

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

    def retry_after_s(self) -> float:
        """Seconds until a refused request may find room: the running mean batch time x the batches ahead
        of it (those queued, plus the running one), at least 1 s."""
        ahead = math.ceil(self.depth / max(self.max_batch, 1)) + int(self.running)
        return max(1.0, self._mean_batch_s * ahead)

    async def submit(self, key: Hashable, item: T) -> R:
        self.start()
        if self.max_queue is not None and self.depth >= self.max_queue:
            retry = self.retry_after_s()
            raise Overloaded(
                f"{self.name} queue is full ({self.depth} waiting, max_queue={self.max_queue}); "
                f"retry in {math.ceil(retry)} s",
                retry_after_s=retry,
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        pending.after_previous_s, self._last_arrival = pending.enqueued - self._last_arrival, pending.enqueued
        self._queues.setdefault(key, []).append(pending)
        self._queue_gauge.set(self.depth)
        self._wakeup.set()
        try:
            return await future
        finally:
            # Cancelled while queued (the caller's task was cancelled): leave the queue now, not when
            # its batch forms, so that it neither holds a place under max_queue nor delays a batch.
            if future.cancelled():
                self._discard(key, pending)

    def _discard(self, key: Hashable, pending: _Pending[T, R]) -> None:
        queue = self._queues.get(key)
        if queue is None or pending not in queue:
            return  # already taken into a batch
        queue.remove(pending)
        if not queue:
            del self._queues[key]
        self._queue_gauge.set(self.depth)

    def _take(self, key: Hashable) -> list[_Pending[T, R]]:
        """Up to max_batch items of `key` off the queue, skipping any already cancelled."""
        queue = self._queues.get(key, [])
        pending = queue[: self.max_batch]
        del queue[: self.max_batch]
        if not queue:
            self._queues.pop(key, None)
        self._queue_gauge.set(self.depth)
        return [p for p in pending if not p.future.cancelled()]

    async def _run(self) -> None:
        while True:
            if not self.depth:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key = min(self._queues, key=lambda k: self._queues[k][0].enqueued)
            first = self._queues[key][0]
            burst = first.after_previous_s <= self.max_wait_s
            wait = first.enqueued + self.max_wait_s - time.perf_counter() if burst else 0.0
            while wait > 0 and 0 < len(self._queues.get(key, ())) < self.max_batch:
                await asyncio.sleep(min(wait, 0.002))
                if key in self._queues:  # its waiters may all have gone meanwhile
                    wait = self._queues[key][0].enqueued + self.max_wait_s - time.perf_counter()
            pending = self._take(key)
            if pending:
                await self._run_one(key, pending)

    async def _run_one(self, key: Hashable, pending: list[_Pending[T, R]]) -> None:
        """Run one batch in a worker thread and hand every waiter its result (or the batch's error)."""
        self._batch_histogram.observe(len(pending))
        items = [p.item for p in pending]
        stop = threading.Event()

        def on_done(_: asyncio.Future[R]) -> None:
            if all(p.future.cancelled() for p in pending):
                stop.set()  # the last waiter of the batch has gone: nobody wants its results

        for p in pending:
            p.future.add_done_callback(on_done)
        args = (key, items, stop.is_set) if self.stoppable else (key, items)
        started = time.perf_counter()
        self.running = True
        try:
            results = await asyncio.to_thread(self.run_batch, *args)
        except Exception as exc:  # noqa: BLE001 - every waiter gets the batch's error
            if stop.is_set():
                logger.info("%s batch of %d stopped: every request was cancelled", self.name, len(items))
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self.running = False
            for p in pending:
                p.future.remove_done_callback(on_done)
        elapsed = time.perf_counter() - started
        w = _BATCH_TIME_WEIGHT if self._mean_batch_s else 1.0
        self._mean_batch_s += w * (elapsed - self._mean_batch_s)
        for p, result in zip(pending, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
