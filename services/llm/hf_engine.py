"""The reference engine: `NextGPTLanguageModel` on plain transformers, with continuous batching.

Requests queue FIFO in front of one worker thread that decodes every admitted request together
(`BatchDecoder`: one forward per step for all rows; a new request is prefilled alone and joins at the
next step, a finished one leaves at once). Rows share the model's active LoRA adapter, so a request
for another adapter waits until the batch of the current one has drained (FIFO order is kept). The
worker pushes text deltas and complete spans into the request's asyncio queue with
`loop.call_soon_threadsafe`, holding a request's text deltas for up to `text_interval_s` between
hand-overs (each one wakes the event loop, whose thread then contends for the GIL with the decoding
thread); a per-request cancel flag is checked before every step, so a client that
goes away leaves the batch within one step. Alone in its batch, a request gets exactly what the
in-process pipeline (`NextGPT.generate`) produces for the same inputs and seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextgpt.checkpoint import check_against_profile, load_delta
from nextgpt.config import ProfileConfig
from nextgpt.events import TextDelta
from nextgpt.llm.batch import BatchDecoder, DecodeRequest
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.signal_tokens import get_layout
from nextgpt.projectors.loading import load_input_projector
from nextgpt.types import LLMOutput
from services.llm.adapters import AdapterSet
from services.llm.engine import (
    BATCH_SIZE,
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_SECONDS,
    EngineEvent,
    EngineRequest,
    QueueFull,
    prompt_segments,
)

logger = logging.getLogger(__name__)


class _Cancelled(Exception):
    """Raised inside the worker when the consumer stopped listening."""


@dataclass
class _Job:
    """One request on its way through the worker."""

    request: EngineRequest
    adapter: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[EngineEvent | BaseException]
    """What the consumer reads; filled on `loop`, from the worker's outbox."""
    done: asyncio.Future[None]
    """Set once the worker is done with this request."""
    context: contextvars.Context
    """The caller's context: the worker's log lines about this request carry its request id."""
    cancel: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    decode_started: float = 0.0
    decoded: int = 0
    text_handed_at: float | None = None
    """When the worker last handed this job's text over (None: not yet, the first delta goes at once)."""


class HFEngine:
    """Input projector + LLM (+ LoRA adapters) of one profile."""

    def __init__(
        self,
        profile: ProfileConfig,
        lm: NextGPTLanguageModel,
        input_projector: torch.nn.Module,
        adapters: AdapterSet,
        *,
        max_queue: int = 64,
        max_num_seqs: int = 64,
        text_interval_s: float = 0.0,
    ) -> None:
        self.profile = profile
        self.lm = lm
        self.input_projector = input_projector
        self._adapters = adapters
        self.max_queue = max_queue
        self.max_num_seqs = max_num_seqs
        self.text_interval_s = text_interval_s
        """A request's text deltas cross to its event loop at most this often (the first at once; spans,
        the result and errors at once, with the text before them); 0: every step. Each crossing is a
        wake-up of the loop: one per token cost ~7 ms per 32-token request at one client, in wall and CPU
        time, mostly the two threads handing the GIL back and forth."""
        self.layout = get_layout(profile.llm.signal_layout)
        self._pending: deque[_Job] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._outbox: list[tuple[_Job, EngineEvent | BaseException | None]] = []
        """Events the worker produced since it last handed them over (None: the job is finished)."""
        self.running = 0
        """Requests in the batch now (written by the worker)."""

    @classmethod
    def load(
        cls,
        profile: ProfileConfig,
        *,
        adapters_dir: Path | None = None,
        max_queue: int = 64,
        max_num_seqs: int = 64,
        text_interval_s: float = 0.0,
    ) -> HFEngine:
        """Load the language side of a profile: delta (checked), LLM + LoRA, input projector, adapters."""
        delta = None
        if profile.delta_checkpoint is not None:
            delta = load_delta(profile.delta_checkpoint)
            check_against_profile(delta, profile)
        lm = NextGPTLanguageModel.load(
            profile.llm,
            embed_tokens=delta.embed_tokens if delta else None,
            lm_head=delta.lm_head if delta else None,
            lora=delta.lora if delta else None,
        )
        projector = load_input_projector(profile, delta)
        adapters = AdapterSet.load(lm.model, adapters_dir)
        logger.info("HF engine ready: profile %s, adapters %s", profile.name, adapters.names)
        return cls(
            profile,
            lm,
            projector,
            adapters,
            max_queue=max_queue,
            max_num_seqs=max_num_seqs,
            text_interval_s=text_interval_s,
        )

    @property
    def embed_dim(self) -> int:
        return self.profile.input_projector.in_dim

    def adapters(self) -> list[str]:
        return list(self._adapters.names)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        adapter = self._adapters.resolve(request.adapter)  # unknown names fail before queueing
        if len(self._pending) >= self.max_queue:
            raise QueueFull(
                f"the LLM queue is full ({len(self._pending)} waiting); retry later or add replicas"
            )
        loop = asyncio.get_running_loop()
        job = _Job(request, adapter, loop, asyncio.Queue(), loop.create_future(), contextvars.copy_context())
        events, done, cancel = job.events, job.done, job.cancel
        self._submit(job)
        try:
            held: EngineEvent | BaseException | None = None
            while True:
                item = held if held is not None else await events.get()
                held = None
                if isinstance(item, TextDelta):  # deltas that piled up go out as one message
                    texts = [item.text]
                    while not events.empty() and held is None:
                        following = events.get_nowait()
                        if isinstance(following, TextDelta):
                            texts.append(following.text)
                        else:
                            held = following
                    item = TextDelta("".join(texts))
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, LLMOutput):
                    return
        finally:
            cancel.set()
            # Consumer left early: wait until a running request has left the batch (within one step), so
            # that closing the stream means the decoding is over. A queued one leaves when its turn comes.
            if job.started.is_set():
                await asyncio.shield(done)

    def _submit(self, job: _Job) -> None:
        with self._wakeup:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hf-engine", daemon=True)
                self._worker.start()
            self._pending.append(job)
            QUEUE_DEPTH.set(len(self._pending))
            self._wakeup.notify()

    # ------------------------------------------------------------------ the worker thread
    def _work(self) -> None:
        """Admit waiting requests (one adapter per batch, FIFO), step the batch, deliver what ended."""
        decoder = BatchDecoder(self.lm)
        jobs: dict[int, _Job] = {}  # id(DecodeRequest) -> job
        active: str | None = None
        while True:
            with self._wakeup:
                while not self._pending and not len(decoder) and not self._closed:
                    self._wakeup.wait()
                if self._closed:
                    return
                admitted: list[_Job] = []
                while self._pending and len(decoder) + len(admitted) < self.max_num_seqs:
                    if (len(decoder) or admitted) and self._pending[0].adapter != active:
                        break  # the next request needs another adapter: let this batch drain first
                    admitted.append(self._pending.popleft())
                    active = admitted[-1].adapter
                QUEUE_DEPTH.set(len(self._pending))
            for job in admitted:
                job.context.run(self._admit, job, decoder, jobs)
            self.running = len(decoder)
            self._flush()
            if not len(decoder):
                continue
            BATCH_SIZE.observe(len(decoder))
            try:
                ended = decoder.step()
            except BaseException as exc:  # noqa: BLE001 - the model failed: every row gets the error
                logger.exception("decode step failed for %d requests", len(decoder))
                ended = [(row.request, exc) for row in decoder.rows]
                decoder = BatchDecoder(self.lm)
            for request, outcome in ended:
                job = jobs.pop(id(request))
                job.context.run(self._deliver, job, outcome)
            self.running = len(decoder)
            self._flush()

    def _admit(self, job: _Job, decoder: BatchDecoder, jobs: dict[int, _Job]) -> None:
        """Prompt embeddings, then prefill into the batch; a failure ends this request only."""
        job.started.set()
        STAGE_SECONDS.labels("queue").observe(time.perf_counter() - job.queued_at)
        if job.cancel.is_set():
            self._outbox.append((job, None))
            return

        def on_step(n: int) -> None:
            if job.cancel.is_set():
                raise _Cancelled
            GENERATED_TOKENS.inc(n - job.decoded)
            job.decoded = n

        try:
            t0 = time.perf_counter()
            self._adapters.activate(job.adapter)
            prompt = self._prompt(job.request)  # (T, H)
            PROMPT_TOKENS.inc(prompt.shape[0])
            STAGE_SECONDS.labels("prompt").observe(time.perf_counter() - t0)
            request = DecodeRequest(
                prompt,
                job.request.options,
                force=job.request.outputs,
                on_text=lambda text: self._push(job, TextDelta(text)),
                on_step=on_step,
                on_span=lambda span: self._push(job, span),
            )
            job.decode_started = time.perf_counter()
            decoder.add(request)
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, raised there
            self._deliver(job, exc)
            return
        jobs[id(request)] = job

    def _deliver(self, job: _Job, outcome: LLMOutput | BaseException) -> None:
        if isinstance(outcome, _Cancelled):
            logger.info("cancelled after %d tokens", job.decoded)
        elif isinstance(outcome, LLMOutput):
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - job.decode_started)
            self._push(job, outcome)
        else:
            self._push(job, outcome)
        self._outbox.append((job, None))

    def _push(self, job: _Job, item: EngineEvent | BaseException) -> None:
        if not job.cancel.is_set():  # else nobody listens any more (and the loop may be gone)
            self._outbox.append((job, item))

    def _flush(self) -> None:
        """Hand the outbox to the consumers' event loops: one wake-up per loop and step, not one per
        event (each wake-up is a write to the loop's self-pipe: 16% of the service's CPU at 16 clients).

        A job whose outbox holds only text stays in the outbox while its last hand-over is younger than
        `text_interval_s`; anything else of the job (a span, the result, the end) takes its text along,
        in order, so the held text is never late behind it."""
        if not self._outbox:
            return
        now = time.perf_counter()
        held_jobs = {id(job) for job, _ in self._outbox if self._holds_text(job, now)}
        held_jobs -= {id(job) for job, item in self._outbox if not isinstance(item, TextDelta)}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, EngineEvent | BaseException | None]]] = {}
        kept: list[tuple[_Job, EngineEvent | BaseException | None]] = []
        for job, item in self._outbox:
            if id(job) in held_jobs:
                kept.append((job, item))
                continue
            if isinstance(item, TextDelta):
                job.text_handed_at = now
            by_loop.setdefault(job.loop, []).append((job, item))
        self._outbox = kept
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_hand_over, items)

    def _holds_text(self, job: _Job, now: float) -> bool:
        """Whether the job's text waits for its next interval (its first text never waits)."""
        return job.text_handed_at is not None and now - job.text_handed_at < self.text_interval_s

    @torch.inference_mode()
    def _prompt(self, request: EngineRequest) -> torch.Tensor:
        """(T, H) prompt embeddings of the request."""
        segments = prompt_segments(request, self.input_projector, self.layout, self.profile.llm.prompt_format)
        return self.lm.embed(segments).embeds

    async def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join)


def _hand_over(items: list[tuple[_Job, EngineEvent | BaseException | None]]) -> None:
    """On the consumers' loop: queue each event; None marks a job the worker is done with."""
    for job, item in items:
        if item is None:
            if not job.done.done():
                job.done.set_result(None)
        else:
            job.events.put_nowait(item)
