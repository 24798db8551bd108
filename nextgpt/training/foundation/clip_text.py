"""The text stage the image and video trainers share: a CLIP-format text encoder (real CLIP tokenizer)
trained with linear attribute heads (colour, shape and the background or direction) on the mean of its 77
states, over every training combination in each of its trainer's phrasings, as is and with filler words.
Then frozen, so that the UNet's conditioning (and the output projector's stage-2 target) is a fixed
function of the caption, whatever its phrasing. (The audio trainer's CLAP stage differs: `audio.py`.)"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from torch import nn
from torch.nn import functional as F
from transformers import CLIPTextModel, CLIPTokenizer

from nextgpt.tiny.diffusion import build_clip_tokenizer, clip_text_encoder
from nextgpt.training.foundation.diffusion import TEXT_PIPELINE, PartResult, fit_part, save_text_pipeline

Combo = TypeVar("Combo", bound=tuple[str, ...])
"""One value of each attribute, in the order of the trainer's `Attributes`."""
Attributes = Mapping[str, Collection[str]]
"""Attribute name -> its values (e.g. "colour" -> COLOURS), in the order a combination holds them."""

FILLERS = tuple(
    "small big simple little bright single flat nice the some here is showing with please".split()
)
"""Words the text stage inserts at random into its captions, so that words it has not seen (a held-out
phrasing's "plain", "placed") move the conditioning little. None of them is in the image trainer's
HELDOUT_TEMPLATE; "the" is the only one in the video trainer's HELDOUT_TEMPLATES."""


class TextStageSettings(Protocol):
    """The text-stage fields of `ImageTrainConfig` and `VideoTrainConfig`."""

    seed: int
    cond_dim: int
    text_steps: int
    filled_copies: int
    text_batch: int
    text_lr: float
    progress: bool


def with_fillers(caption: str, rng: random.Random, n: int) -> str:
    """`caption` with `n` words of FILLERS inserted at random places."""
    words = caption.split()
    for _ in range(n):
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    return " ".join(words)


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """(N, 77) ids, padded as the pipeline's `encode_prompt` pads."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_captions(
    encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: Sequence[str]
) -> torch.Tensor:
    """(N, 77, D) text states, as the pipeline's `encode_prompt` computes them."""
    return torch.cat([encoder(ids).last_hidden_state for ids in tokenize(tokenizer, captions).split(256)])


class AttributeHeads(nn.Module):
    """One linear head per attribute (submodules named after them), read from the mean of the text
    encoder's states; the loss is the sum of their cross-entropies."""

    def __init__(self, width: int, attributes: Attributes) -> None:
        super().__init__()
        for name, values in attributes.items():
            self.add_module(name, nn.Linear(width, len(values)))

    def forward(self, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pooled = states.mean(dim=1)  # (B, D): the padding states after EOS have seen the whole caption
        return sum(
            (F.cross_entropy(head(pooled), labels[:, i]) for i, head in enumerate(self.children())),
            torch.zeros(()),
        )


def combo_labels(combos: Sequence[tuple[str, ...]], attributes: Attributes) -> torch.Tensor:
    """(N, attributes) long: each combination's value indices."""
    values = [list(v) for v in attributes.values()]
    return torch.tensor([[v.index(x) for x, v in zip(combo, values, strict=True)] for combo in combos])


def train_text_encoder(
    cfg: TextStageSettings,
    combos: Sequence[Combo],
    phrasings: Callable[[Combo], Sequence[str]],
    attributes: Attributes,
    tokenizer: CLIPTokenizer,
    *,
    name: str,
    state_dir: Path,
) -> tuple[CLIPTextModel, PartResult]:
    """The encoder (built under seed + 1) and its heads trained on each (combo, phrasing) as is and with 1
    or 2 filler words (`filled_copies` copies each), then frozen. `name` names the run and seeds the
    fillers."""
    torch.manual_seed(cfg.seed + 1)
    encoder = clip_text_encoder(cfg.cond_dim)
    heads = AttributeHeads(cfg.cond_dim, attributes)
    rng = random.Random(f"{cfg.seed}:{name}")
    captions = [
        with_fillers(caption, rng, k % 3)
        for combo in combos
        for caption in phrasings(combo)
        for k in range(1 + cfg.filled_copies)
    ]
    ids = tokenize(tokenizer, captions)  # (N x T x (1 + FILLED), 77)
    labels = combo_labels(combos, attributes).repeat_interleave(len(captions) // len(combos), dim=0)
    module = nn.ModuleDict({"encoder": encoder, "heads": heads})

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(len(ids), (cfg.text_batch,), generator=gen)
        states = encoder(ids[pick]).last_hidden_state  # (B, 77, D)
        return heads(states, labels[pick])

    return encoder, fit_part(
        module, loss_fn, cfg, steps=cfg.text_steps, lr=cfg.text_lr, name=name, state_dir=state_dir
    )


def text_stage(
    out: Path,
    cfg: TextStageSettings,
    combos: Sequence[Combo],
    phrasings: Callable[[Combo], Sequence[str]],
    attributes: Attributes,
    *,
    name: str,
    pipeline: Callable[..., DiffusionPipeline],
    **extra: Any,
) -> tuple[CLIPTextModel, CLIPTokenizer, PartResult]:
    """The first step of the image and video trainers, also run alone (`make train-world` trains the LLM
    against it while the VAE and the UNet train): `train_text_encoder`, or its result read back from
    `out/state/text`, saved with its tokenizer as `out/text-pipeline` in `pipeline`'s layout (`extra`:
    the pipeline's other arguments; `save_text_pipeline`)."""
    tokenizer = build_clip_tokenizer(out / "state" / "tokenizer")
    encoder, result = train_text_encoder(
        cfg, combos, phrasings, attributes, tokenizer, name=name, state_dir=out / "state" / "text"
    )
    save_text_pipeline(pipeline, out / TEXT_PIPELINE, encoder, tokenizer, **extra)
    return encoder, tokenizer, result


def caption_bank(
    encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    combos: Sequence[Combo],
    phrasings: Callable[[Combo], Sequence[str]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's conditioning: every combination in each of its phrasings, (combos, phrasings, 77, D),
    and the empty caption's states (77, D), for guidance dropout."""
    captions = [caption for combo in combos for caption in phrasings(combo)]
    states = encode_captions(encoder, tokenizer, captions)
    empty = encode_captions(encoder, tokenizer, [""])[0]
    return states.view(len(combos), -1, *states.shape[1:]), empty
