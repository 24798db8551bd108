"""The reference engine: `NextGPTLanguageModel` on plain transformers, one request at a time.

Requests queue FIFO in front of a single worker thread (no continuous batching: the HF decode loop runs
one sequence). The worker pushes text deltas and complete spans into the request's asyncio queue with
`loop.call_soon_threadsafe`; a per-request cancel flag is checked before every decode step, so a client
that goes away stops the decoding within one step. It produces exactly what the in-process pipeline
(`NextGPT.generate`) produces for the same inputs and seed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from nextgpt.checkpoint import check_against_profile, load_delta
from nextgpt.config import ProfileConfig
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.signal_tokens import get_layout
from nextgpt.projectors.loading import load_input_projector
from nextgpt.types import LLMOutput
from services.llm.adapters import AdapterSet
from services.llm.engine import (
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_SECONDS,
    EngineEvent,
    EngineRequest,
    QueueFull,
    TextDelta,
    prompt_segments,
)

logger = logging.getLogger(__name__)


class _Cancelled(Exception):
    """Raised inside the worker when the consumer stopped listening."""


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
    ) -> None:
        self.profile = profile
        self.lm = lm
        self.input_projector = input_projector
        self._adapters = adapters
        self.max_queue = max_queue
        self.layout = get_layout(profile.llm.signal_layout)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self._waiting = 0
        self._waiting_lock = threading.Lock()  # the loop adds, the worker removes

    @classmethod
    def load(
        cls, profile: ProfileConfig, *, adapters_dir: Path | None = None, max_queue: int = 64
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
        return cls(profile, lm, projector, adapters, max_queue=max_queue)

    @property
    def embed_dim(self) -> int:
        return self.profile.input_projector.in_dim

    def adapters(self) -> list[str]:
        return list(self._adapters.names)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        adapter = self._adapters.resolve(request.adapter)  # unknown names fail before queueing
        if self._waiting >= self.max_queue:
            raise QueueFull(f"the LLM queue is full ({self._waiting} waiting); retry later or add replicas")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()
        cancel, started = threading.Event(), threading.Event()

        def push(item: EngineEvent | BaseException) -> None:
            if cancel.is_set():
                return  # nobody listens any more (and the loop may be gone)
            loop.call_soon_threadsafe(events.put_nowait, item)

        self._count_waiting(+1)
        work = functools.partial(self._run, request, adapter, push, cancel, started, time.perf_counter())
        # copy_context: the worker's log lines carry the request id
        job = loop.run_in_executor(self._executor, contextvars.copy_context().run, work)
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, LLMOutput):
                    return
        finally:
            cancel.set()
            # Consumer left early: wait until a running worker has stopped (within one decode step), so
            # that closing the stream means the decoding is over. A queued one returns when its turn comes.
            if started.is_set() and not job.done():
                await asyncio.shield(asyncio.gather(job, return_exceptions=True))

    def _count_waiting(self, change: int) -> None:
        with self._waiting_lock:
            self._waiting += change
            QUEUE_DEPTH.set(self._waiting)

    def _run(
        self,
        request: EngineRequest,
        adapter: str,
        push: Callable[[EngineEvent | BaseException], None],
        cancel: threading.Event,
        started: threading.Event,
        queued_at: float,
    ) -> None:
        """The worker: one request from prompt to output, pushing events; never raises."""
        started.set()
        self._count_waiting(-1)
        STAGE_SECONDS.labels("queue").observe(time.perf_counter() - queued_at)
        decoded = 0

        def on_step(n: int) -> None:
            nonlocal decoded
            if cancel.is_set():
                raise _Cancelled
            GENERATED_TOKENS.inc(n - decoded)
            decoded = n

        try:
            if cancel.is_set():
                raise _Cancelled
            t0 = time.perf_counter()
            self._adapters.activate(adapter)
            prompt = self._prompt(request)  # (T, H)
            PROMPT_TOKENS.inc(prompt.shape[0])
            STAGE_SECONDS.labels("prompt").observe(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = self.lm.generate(
                prompt,
                request.options,
                force=request.options.requested_media,
                on_text=lambda text: push(TextDelta(text)),
                on_step=on_step,
                on_span=push,
            )
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - t0)
            push(out)
        except _Cancelled:
            logger.info("cancelled after %d tokens", decoded)
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, raised there
            push(exc)

    @torch.inference_mode()
    def _prompt(self, request: EngineRequest) -> torch.Tensor:
        """(T, H) prompt embeddings of the request."""
        segments = prompt_segments(request, self.input_projector, self.layout, self.profile.llm.prompt_format)
        return self.lm.embed(segments).embeds

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
