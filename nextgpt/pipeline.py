"""The whole any-to-any model in one process: encode inputs, run the LLM, decode every signal span.

`NextGPT` only wires components; each separately trained part lives in its own module with its own
weights (the diffusers rule). The services split the same steps across processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from nextgpt.checkpoint import DeltaCheckpoint, check_against_profile, load_delta
from nextgpt.config import GenerationOptions, ProfileConfig
from nextgpt.encoders.imagebind import ImageBindEncoder
from nextgpt.errors import NextGPTError
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.prompt import build_prompt
from nextgpt.modalities import OUTPUTS
from nextgpt.projectors.loading import load_input_projector, load_output_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.spans import SpanChooser
from nextgpt.types import (
    MODALITIES,
    GenerateResult,
    LLMOutput,
    MediaError,
    MediaItem,
    Message,
    Modality,
    SignalSpan,
    check_messages,
)

if TYPE_CHECKING:
    from nextgpt.modalities import Decoder

logger = logging.getLogger(__name__)


@dataclass
class NextGPT:
    profile: ProfileConfig
    encoder: ImageBindEncoder
    input_projector: torch.nn.Module
    llm: NextGPTLanguageModel
    output_projectors: dict[Modality, OutputProjector]
    decoders: dict[Modality, Decoder]

    @classmethod
    def from_profile(
        cls, profile: ProfileConfig, *, decoders: Iterable[Modality] = MODALITIES, progress: bool = False
    ) -> NextGPT:
        """Load every component named by the profile with the real loading code."""
        steps: list[tuple[str, Callable[[], object]]] = []
        loaded: dict[str, object] = {}
        delta: DeltaCheckpoint | None = None
        if profile.delta_checkpoint is not None:
            delta = load_delta(profile.delta_checkpoint)
            check_against_profile(delta, profile)
        steps.append(("encoder", lambda: ImageBindEncoder.load(profile.encoder)))
        steps.append(
            (
                "llm",
                lambda: NextGPTLanguageModel.load(
                    profile.llm,
                    embed_tokens=delta.embed_tokens if delta else None,
                    lm_head=delta.lm_head if delta else None,
                    lora=delta.lora if delta else None,
                ),
            )
        )
        steps.append(("projectors", lambda: _load_projectors(profile, delta)))
        for modality in decoders:
            steps.append((f"decoder.{modality}", _decoder_step(profile, modality)))
        for name, load in _with_progress(steps, progress):
            started = time.perf_counter()
            loaded[name] = load()
            logger.info("loaded %s in %.2fs", name, time.perf_counter() - started)
        # Each step's result under its name, of the type its loader returns.
        input_projector, output_projectors = cast(
            tuple[torch.nn.Module, dict[Modality, OutputProjector]], loaded["projectors"]
        )
        return cls(
            profile=profile,
            encoder=cast(ImageBindEncoder, loaded["encoder"]),
            input_projector=input_projector,
            llm=cast(NextGPTLanguageModel, loaded["llm"]),
            output_projectors=output_projectors,
            decoders={m: cast("Decoder", loaded[f"decoder.{m}"]) for m in decoders},
        )

    def generate(
        self,
        messages: list[Message],
        options: GenerationOptions | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        progress: bool = False,
    ) -> GenerateResult:
        """Answer the last user turn of `messages` with text and any generated media."""
        options = options or GenerationOptions()
        timings: dict[str, float] = {}
        # 1. check inputs
        check_messages(messages)
        # 2. encode and project every input medium of the user turns
        started = time.perf_counter()
        media_embeds = [self.embed_media(m.media) if m.role == "user" else [] for m in messages]
        timings["encode"] = time.perf_counter() - started
        # 3. build the prompt and run the LLM, forcing the spans the request asked for
        started = time.perf_counter()
        segments = build_prompt(messages, media_embeds, self.profile.llm.prompt_format)
        prompt = self.llm.embed(segments)
        out = self.llm.generate(prompt.embeds, options, force=options.requested_media, on_text=on_text)
        timings["llm"] = time.perf_counter() - started
        # 4. decode each complete span, at most `max_media_per_modality` per modality
        started = time.perf_counter()
        media, errors, warnings = self.decode_spans(out, options, progress=progress)
        timings["decode"] = time.perf_counter() - started
        return GenerateResult(
            text=out.text,
            raw_text=out.raw_text,
            media=media,
            errors=errors,
            warnings=out.warnings + warnings,
            finish_reason=out.finish_reason,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=len(out.token_ids),
            forced_modalities=list(out.forced_modalities),
            timings=timings,
        )

    @torch.inference_mode()
    def embed_media(self, items: list[MediaItem]) -> list[torch.Tensor]:
        """Each medium -> ImageBind embedding (E,) -> LLM input tokens (n_tokens, H)."""
        device = next(self.input_projector.parameters()).device
        dtype = next(self.input_projector.parameters()).dtype
        blocks = []
        for item in items:
            embedding = self.encoder.encode(item).to(device=device, dtype=dtype)  # (E,)
            blocks.append(self.input_projector(embedding[None])[0])  # (n_tokens, H)
        return blocks

    def decode_spans(
        self, out: LLMOutput, options: GenerationOptions, *, progress: bool = False
    ) -> tuple[list[MediaItem], list[MediaError], list[str]]:
        media: list[MediaItem] = []
        errors: list[MediaError] = []
        chooser = SpanChooser(options.max_media_per_modality)
        chosen = [span for span in out.spans if chooser.take(span.modality) is not None]
        warnings = chooser.warnings()
        for modality in MODALITIES:
            spans = [s for s in chosen if s.modality == modality]
            if not spans:
                continue
            decoder = self.decoders.get(modality)
            if decoder is None:
                errors.append(MediaError(modality, f"no {modality} decoder is loaded"))
                continue
            try:
                cond = self.project_spans(modality, spans)
                settings = options.decode_options(modality).resolve(decoder.defaults)
                media.extend(decoder.decode(cond, settings, seed=options.seed, progress=progress))
            except NextGPTError as exc:  # a failed medium degrades the answer, never fails it
                logger.warning("%s decoding failed: %s", modality, exc)
                errors.append(MediaError(modality, str(exc)))
        return media, errors, warnings

    @torch.inference_mode()
    def project_spans(self, modality: Modality, spans: list[SignalSpan]) -> torch.Tensor:
        """Signal-token states of one modality's spans -> decoder conditioning, one row per span."""
        projector = self.output_projectors[modality]
        param = next(projector.parameters())
        hidden = torch.stack([s.hidden for s in spans]).to(param.device, param.dtype)  # (B, N, H)
        embeds = torch.stack([s.token_embeds for s in spans]).to(param.device, param.dtype)  # (B, N, H)
        return projector(hidden, embeds)  # (B, Q, D) or (B, D)


def _load_projectors(
    profile: ProfileConfig, delta: DeltaCheckpoint | None
) -> tuple[torch.nn.Module, dict[Modality, OutputProjector]]:
    output_projectors = {m: load_output_projector(profile, delta, m) for m in MODALITIES}
    return load_input_projector(profile, delta), output_projectors


def _decoder_step(profile: ProfileConfig, modality: Modality) -> Callable[[], object]:
    return lambda: OUTPUTS[modality].decoder_class().load(profile.decoders[modality])


def _with_progress(
    steps: list[tuple[str, Callable[[], object]]], progress: bool
) -> Iterable[tuple[str, Callable[[], object]]]:
    if not progress:
        yield from steps
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("loading", total=len(steps))
        for name, load in steps:
            bar.update(task, description=f"loading {name}")
            yield name, load
            bar.advance(task)
