"""Each stage's data: records from the readers -> tokenized examples, caption targets, image latents.

Stage 1 (encoder): X-caption pairs -> "<medium> describe ..." -> caption.
Stage 2 (decoder): captions only -> "Show me a picture of {caption}" -> the signal span, aligned to the
    caption's target (captions of the pair files and the output captions of instruction files).
Stage 3 (instruct): dialogues, inputs spliced, every reply labelled, every output aligned.
Bad records (unreadable media, spans that do not match their outputs) are skipped and counted.
"""

from __future__ import annotations

import logging
import mimetypes
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nextgpt.config import ProfileConfig
from nextgpt.errors import NextGPTError
from nextgpt.modalities import OUTPUTS
from nextgpt.training.collate import Example, ExampleBuilder
from nextgpt.training.config import TrainConfig
from nextgpt.training.data.readers import output_captions, read_caption_pairs, read_instructions
from nextgpt.training.data.targets import check_target_dims, load_targets, precompute_targets
from nextgpt.training.data.types import CaptionPair, Conversation, MediaRef
from nextgpt.training.losses import Denoiser
from nextgpt.training.model import TrainableNextGPT
from nextgpt.types import MODALITIES, MediaItem, Modality

logger = logging.getLogger(__name__)


@dataclass
class StageData:
    examples: list[Example]
    targets: dict[Modality, dict[str, Tensor]] = field(default_factory=dict)
    latents: dict[str, Tensor] | None = None
    denoiser: Denoiser | None = None
    pad_id: int = 0
    report: dict[str, Any] = field(default_factory=dict)


class MediaEmbedder:
    """The frozen ImageBind, loaded on first use; one embedding per file, cached."""

    def __init__(self, profile: ProfileConfig) -> None:
        self.profile = profile
        self._encoder: Any = None
        self._cache: dict[Path, Tensor] = {}

    def __call__(self, ref: MediaRef) -> Tensor:
        path = Path(ref.path)
        if path not in self._cache:
            if self._encoder is None:
                from nextgpt.encoders.imagebind import ImageBindEncoder

                self._encoder = ImageBindEncoder.load(self.profile.encoder)
            mime = mimetypes.guess_type(path.name)[0] or f"{ref.modality}/octet-stream"
            item = MediaItem(ref.modality, path.read_bytes(), mime)
            self._cache[path] = self._encoder.encode(item)  # (E,)
        return self._cache[path]


def _pairs(cfg: TrainConfig, report: dict[str, Any]) -> list[CaptionPair]:
    out: list[CaptionPair] = []
    for source in cfg.data:
        if source.kind == "pairs":
            pairs, read = read_caption_pairs(source.path, source.media_dir, source.modality)
            report[str(source.path)] = read.summary()
            out += pairs
    return out


def _conversations(cfg: TrainConfig, report: dict[str, Any]) -> list[Conversation]:
    out: list[Conversation] = []
    for source in cfg.data:
        if source.kind == "instructions":
            conversations, read = read_instructions(source.path, source.media_dir, source.fmt)
            report[str(source.path)] = read.summary()
            out += conversations
    return out


def _interleave(groups: list[list[Any]]) -> list[Any]:
    """Round-robin over groups so that `max_examples` keeps every modality."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def build_stage_data(
    cfg: TrainConfig, model: TrainableNextGPT, profile: ProfileConfig, *, say: Callable[[str], None] = print
) -> StageData:
    report: dict[str, Any] = {}
    skipped: Counter[str] = Counter()
    builder = ExampleBuilder(model.lm, MediaEmbedder(profile), profile.input_projector.num_tokens)
    make: list[Callable[[], Example]] = []
    pairs: list[CaptionPair] = []
    if cfg.stage == "encoder":
        pairs = _interleave([[p for p in _pairs(cfg, report) if p.modality == m] for m in MODALITIES])
        make = [partial(builder.caption_pair, p, i) for i, p in enumerate(pairs)]
    elif cfg.stage == "decoder":
        pairs = _pairs(cfg, report)
        captions: dict[Modality, dict[str, None]] = {m: {} for m in MODALITIES}
        for p in pairs:
            captions[p.modality][p.caption] = None
        for m, found in output_captions(_conversations(cfg, report)).items():
            captions[m].update(dict.fromkeys(found))
        todo = _interleave([[(m, c) for c in captions[m]] for m in MODALITIES])
        make = [partial(builder.caption_request, m, c, i) for i, (m, c) in enumerate(todo)]
    else:
        conversations = _conversations(cfg, report)
        make = [partial(builder.conversation, c.turns, c.source) for c in conversations]
    if cfg.max_examples is not None:
        make = make[: cfg.max_examples]
    examples: list[Example] = []
    for build in make:
        try:
            examples.append(build())
        except (NextGPTError, OSError, ValueError) as exc:
            skipped[type(exc).__name__] += 1
            logger.warning("skipped a record: %s", exc)
    if skipped:
        report["skipped_examples"] = dict(skipped)
    say(f"stage {cfg.stage}: {len(examples)} examples" + (f", skipped {dict(skipped)}" if skipped else ""))

    needed: dict[Modality, set[str]] = {m: set() for m in MODALITIES}
    for ex in examples:
        for _, modality, caption in ex.outputs:
            needed[modality].add(caption)
    targets: dict[Modality, dict[str, Tensor]] = {}
    decoders: dict[Modality, Any] = {}
    for modality, wanted in needed.items():
        if not wanted:
            continue
        # The targets need the text encoder alone; the denoising loss needs the image decoder's VAE and UNet.
        text_only = not (modality == "image" and cfg.denoise_weight > 0)
        decoders[modality] = (
            OUTPUTS[modality].decoder_class().load(profile.decoders[modality], text_only=text_only)
        )
        path = precompute_targets(sorted(wanted), decoders[modality], cfg.targets_root, progress=False)
        table = load_targets(path)
        check_target_dims(table, profile, modality, source=str(path))
        targets[modality] = table
        say(f"{modality} targets: {len(wanted)} captions from {path}")

    data = StageData(examples, targets, pad_id=builder.placeholder, report=report)
    if cfg.denoise_weight > 0 and "image" in decoders:
        data.denoiser = Denoiser.from_pipeline(decoders["image"].pipe)
        size = profile.decoders["image"].defaults.height
        images = {p.caption: p.media_path for p in pairs if p.modality == "image"}
        data.latents = {
            c: image_latents(data.denoiser, path, size) for c, path in images.items() if c in needed["image"]
        }
        say(f"denoising loss on: {len(data.latents)} image latents")
    return data


def image_latents(denoiser: Denoiser, path: Path, size: int) -> Tensor:
    """One image file -> (C, size/8, size/8) scaled VAE latents."""
    image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return denoiser.encode_images(pixels[None])[0].cpu()
