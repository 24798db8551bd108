"""Records -> token ids with labels, media slots and output spans -> padded batches.

Every example is tokenized exactly as inference tokenizes a prompt: each user turn goes through
`nextgpt.llm.prompt.build_prompt` (so media sit where inference puts them: legacy = all before the text,
each wrapped in `<Img>`..`</Img>`) and each text piece through the LLM's own `_encode` (BOS only on the
first piece, no dummy-prefix space after a media block). The assistant reply is its own piece
`" {text}\\n###"`, the continuation the model must generate, stop string included; only its tokens carry
labels. Output spans are located in the *final* id sequence, after media splicing (the reference located
them before and was off by the media tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nextgpt.errors import InvalidInput
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.llm.prompt import build_prompt
from nextgpt.llm.signal_tokens import find_spans
from nextgpt.training.data.types import MEDIA_MARKERS, CaptionPair, MediaRef, OutputRef, Turn
from nextgpt.training.losses import IGNORE_INDEX
from nextgpt.types import MediaItem, Message, Modality

logger = logging.getLogger(__name__)

DESCRIBE_PROMPTS: dict[Modality, tuple[str, ...]] = {
    "image": ("Describe this image.", "What is in this picture?", "Give a short caption of the image."),
    "video": ("Describe this video.", "What happens in this clip?", "Give a short caption of the video."),
    "audio": ("Describe this sound.", "What do you hear?", "Give a short caption of the audio."),
}
"""Stage 1 user prompts (cycled by example index)."""
REQUEST_PROMPTS: dict[Modality, tuple[str, ...]] = {
    "image": ("Show me a picture of {caption}.", "Draw {caption}.", "Generate an image of {caption}."),
    "video": ("Show me a video of {caption}.", "Make a clip of {caption}.", "Generate a video of {caption}."),
    "audio": ("Let me hear {caption}.", "Make a sound of {caption}.", "Generate audio of {caption}."),
}
"""Stage 2 user prompts: text in, the modality's signal span out."""


@dataclass
class Example:
    """One tokenized training sequence (no padding)."""

    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX everywhere but the assistant replies."""
    media: list[tuple[int, Tensor]]
    """(first position, encoder embedding) per input medium; its positions hold a placeholder id."""
    outputs: list[tuple[int, Modality, str]]
    """(span start, modality, caption) per output span, positions in `input_ids`."""
    source: str = ""
    media_tokens: int = 1
    """LLM tokens per input medium (the input projector's `num_tokens`)."""


@dataclass
class OutputItem:
    """One output span of a batch, with its alignment target."""

    batch: int
    start: int
    modality: Modality
    target: Tensor
    """(Q, D) or (D,): the decoder's text-encoder embedding of the caption."""
    latents: Tensor | None = None
    """Scaled VAE latents of the caption's image, for the optional denoising loss."""


@dataclass
class Batch:
    input_ids: Tensor
    """(B, T) right-padded."""
    attention_mask: Tensor
    labels: Tensor
    media_pos: list[tuple[int, int]]
    """(row, position) of every media token, in the order of `media_embeds`' projected tokens."""
    media_embeds: Tensor | None
    """(M, E) encoder embeddings, or None."""
    outputs: list[OutputItem] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def strip_markers(text: str) -> str:
    for marker in MEDIA_MARKERS.values():
        text = text.replace(marker, "")
    return " ".join(text.split())


class ExampleBuilder:
    """Tokenizes records for one model; `embed_media` maps an input medium to its (E,) embedding."""

    def __init__(
        self, lm: NextGPTLanguageModel, embed_media: Callable[[MediaRef], Tensor], media_tokens: int = 1
    ) -> None:
        self.lm = lm
        self.embed_media = embed_media
        self.media_tokens = media_tokens
        self.placeholder = int(lm.tokenizer.unk_token_id or 0)

    def span_text(self, modality: Modality) -> str:
        return "".join(self.lm.ids.layout.tokens[modality])

    # ------------------------------------------------------------------ the three stages' records
    def caption_pair(self, pair: CaptionPair, index: int) -> Example:
        """Stage 1: `<medium> describe ...` -> the caption (CE on the caption)."""
        prompts = DESCRIBE_PROMPTS[pair.modality]
        turns = [
            Turn("user", prompts[index % len(prompts)], inputs=[MediaRef(pair.modality, pair.media_path)]),
            Turn("assistant", pair.caption),
        ]
        return self.conversation(turns, source=str(pair.media_path))

    def caption_request(self, modality: Modality, caption: str, index: int) -> Example:
        """Stage 2: "Show me a picture of {caption}" -> the signal span (CE on it + alignment)."""
        prompts = REQUEST_PROMPTS[modality]
        turns = [
            Turn("user", prompts[index % len(prompts)].format(caption=caption.rstrip("."))),
            Turn("assistant", self.span_text(modality), outputs=[OutputRef(modality, caption)]),
        ]
        return self.conversation(turns, source=caption)

    def conversation(self, turns: Sequence[Turn], source: str = "") -> Example:
        """Any dialogue (stage 3): every assistant turn is labelled, every output span aligned."""
        if not turns or turns[-1].role != "assistant":
            raise InvalidInput(f"{source}: a training dialogue must end with an assistant turn")
        fmt = self.lm.cfg.prompt_format
        if fmt != "legacy":
            raise InvalidInput(f"training supports the legacy prompt format only, not {fmt!r}")
        ids: list[int] = []
        labels: list[int] = []
        media: list[tuple[int, Tensor]] = []
        expected: list[OutputRef] = []
        for turn in turns:
            if turn.role == "user":
                items = [MediaItem(ref.modality, b"", "") for ref in turn.inputs]
                blocks = [torch.zeros(self.media_tokens, 1) for _ in turn.inputs]
                segments = build_prompt([Message("user", strip_markers(turn.text), items)], [blocks], fmt)
                refs = iter(turn.inputs)
                for seg in segments:
                    if isinstance(seg, str):
                        if ids and seg.startswith("### Human: "):
                            seg = " Human: " + seg[len("### Human: ") :]  # as build_prompt continues
                        tokens = self.lm.encode(seg, first=not ids)
                    else:
                        media.append((len(ids), self.embed_media(next(refs))))
                        tokens = [self.placeholder] * self.media_tokens
                    ids += tokens
                    labels += [IGNORE_INDEX] * len(tokens)
            else:
                text = f" {turn.text.strip()}\n###" if turn.text.strip() else "\n###"
                tokens = self.lm.encode(text, first=False)
                ids += tokens
                labels += tokens
                expected += turn.outputs
        # Spans are found in the final sequence (after splicing) and only in the labelled replies.
        located, warnings = find_spans(ids, self.lm.ids)
        located = [(m, s) for m, s in located if labels[s] != IGNORE_INDEX]
        if warnings or [m for m, _ in located] != [o.modality for o in expected]:
            raise InvalidInput(
                f"{source}: replies hold spans {[m for m, _ in located]} but the record lists outputs "
                f"{[o.modality for o in expected]}" + (f" ({'; '.join(warnings)})" if warnings else "")
            )
        outputs = [(s, o.modality, o.caption) for (_, s), o in zip(located, expected, strict=True)]
        if len(ids) > self.lm.cfg.max_context:
            raise InvalidInput(f"{source}: {len(ids)} tokens exceed max_context {self.lm.cfg.max_context}")
        return Example(ids, labels, media, outputs, source, self.media_tokens)


def collate(
    examples: Sequence[Example],
    targets: dict[Modality, dict[str, Tensor]],
    *,
    pad_id: int = 0,
    latents: dict[str, Tensor] | None = None,
) -> Batch:
    """Right-pad a list of examples and attach each output's target (and image latents, if any)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    media_pos: list[tuple[int, int]] = []
    media_embeds: list[Tensor] = []
    outputs: list[OutputItem] = []
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[b, :n] = torch.tensor(ex.input_ids)
        labels[b, :n] = torch.tensor(ex.labels)
        mask[b, :n] = 1
        for start, embedding in ex.media:
            media_embeds.append(embedding)
            media_pos += [(b, start + i) for i in range(ex.media_tokens)]
        for start, modality, caption in ex.outputs:
            table = targets.get(modality, {})
            if caption not in table:
                raise InvalidInput(f"no {modality} alignment target for caption {caption!r}; precompute it")
            extra = latents.get(caption) if latents and modality == "image" else None
            outputs.append(OutputItem(b, start, modality, table[caption], extra))
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        media_pos=media_pos,
        media_embeds=torch.stack(media_embeds) if media_embeds else None,
        outputs=outputs,
    )
