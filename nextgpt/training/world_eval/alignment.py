"""Do the output projectors speak to the decoders? A check between the LLM and the media, for the shapes
world (`make train-world`'s report).

For every world caption of a medium, the model is asked in the world's own first phrasing ("Show me a
picture of {caption}.") with that medium's span forced, the span's signal-token states go through the
output projector, and the projected conditioning is compared with the decoder's own text-encoder
embedding of every world caption of that medium (stage 2's targets). The check is right when the nearest
one is the caption asked for.

It separates the three places a text->medium task can fail: a reply without the span (the LLM's reading
of the request: not asked here, the span is forced), a span that projects elsewhere (this check), and a
decoder that draws its conditioning badly (the decoder trainers' own held-out scores). It found the
collapse of the audio projector under a row-averaged alignment loss (every request, whatever its sound,
projected to one point; `nextgpt.training.model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nextgpt.config import GenerationOptions
from nextgpt.llm.prompt import build_prompt
from nextgpt.training.data.synthetic import SHOW_PROMPTS, prompt_sentences
from nextgpt.training.data.world_media import world_captions
from nextgpt.types import MODALITIES, LLMOutput, Message, Modality

if TYPE_CHECKING:
    from nextgpt.pipeline import NextGPT


def asked_captions(per_modality: int) -> dict[Modality, list[str]]:
    """The world's captions of each medium (`synthetic.world_captions`: 72 pictures, 96 clips, 8 sounds),
    thinned to about `per_modality` by an even stride (all eight sounds)."""
    out: dict[Modality, list[str]] = {}
    for modality in MODALITIES:
        captions = world_captions(modality)
        stride = 1 if modality == "audio" else max(1, len(captions) // per_modality)
        out[modality] = captions[::stride]
    return out


def llm_reply(
    model: NextGPT, prompt: str, options: GenerationOptions, force: Sequence[Modality] = ()
) -> LLMOutput:
    """The LLM's reply to one text-only user turn, spans and their states included, nothing decoded:
    what the checks of the LLM's side need, without a diffusion per reply."""
    segments = build_prompt([Message("user", prompt)], [[]], model.profile.llm.prompt_format)
    return model.llm.generate(model.llm.embed(segments).embeds, options, force=force)


def nearest(cond: torch.Tensor, targets: torch.Tensor) -> tuple[int, float]:
    """(index of the target nearest to `cond`, Euclidean distance to it); cond (...), targets (C, ...)."""
    distances = torch.cdist(cond.reshape(1, -1).float(), targets.reshape(len(targets), -1).float())[0]
    index = int(distances.argmin())
    return index, float(distances[index])


@torch.inference_mode()
def span_alignment(model: NextGPT, per_modality: int = 24, seed: int = 0) -> dict[str, Any]:
    """Per medium the decoder has: {"accuracy", "n", "mean_distance", "items"} (see the module doc)."""
    report: dict[str, Any] = {}
    for modality, captions in asked_captions(per_modality).items():
        decoder = model.decoders.get(modality)
        if decoder is None:
            continue
        targets = decoder.encode_text(captions)  # (C, Q, D) or (C, D)
        items: list[dict[str, Any]] = []
        right, distances = 0, []
        for asked, caption in enumerate(captions):
            prompt = prompt_sentences(SHOW_PROMPTS[modality])[0].format(caption)
            out = llm_reply(model, prompt, GenerationOptions(seed=seed, max_new_tokens=48), force=[modality])
            spans = [s for s in out.spans if s.modality == modality]
            if not spans:
                items.append({"caption": caption, "nearest": None})
                continue
            cond = model.project_spans(modality, spans[:1])[0]
            found, distance = nearest(cond, targets)
            right += found == asked
            distances.append(distance)
            items.append({"caption": caption, "nearest": captions[found], "distance": round(distance, 3)})
        report[modality] = {
            "accuracy": right / len(captions),
            "n": len(captions),
            "mean_distance": sum(distances) / len(distances) if distances else None,
            "items": items,
        }
    return report


def markdown_lines(report: dict[str, Any]) -> str:
    """One line per medium for a build's report.md."""
    return "\n".join(
        f"- {m}: the projected span is nearest to the asked caption's decoder embedding in "
        f"{r['accuracy']:.0%} of {r['n']} world captions"
        for m, r in report.items()
    )
