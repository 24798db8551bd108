"""Trains the ImageBind encoder of the `shapes` profile on the shapes world (issue 12).

Meta's `ImageBindModel` (built by `nextgpt.encoders.imagebind.build_model` at a small arch) learns a joint
space contrastively: image <-> caption, video <-> caption, audio <-> caption, each with a symmetric InfoNCE
loss as in ImageBind and CLIP (logits = the medium's unit vector . the text tower's output, whose learned
logit scale is the temperature). The media reach the model through `nextgpt.encoders.preprocess` on the
world's real file bytes, exactly as the served encoder reads them, so what it learns is what it will see.

- Inputs are preprocessed once per world item and kept in memory. Clips that are bit-identical (the
  world's 2 s videos give 15 equal clips; square frames give 3 equal crops) are stored once with a
  weight, and a medium's embedding is the weighted mean of its clips' unit vectors: the same number as
  `ImageBindModel.forward`'s mean over all clips, at a fraction of the cost.
- A batch draws items from the training split (32 pictures, 32 videos, 16 sounds). A medium is told apart
  from every training caption of its modality (the world has at most 96), not only from its batch's:
  with in-batch negatives, which mostly differ in colour, shapes stayed at chance. Captions repeat (many
  pictures of "a red circle on a white background"), so caption -> medium counts every medium of that
  caption as a positive (multi-positive InfoNCE) and no twin is pushed away as a negative.
- Augmentation on the preprocessed tensors (`augment`): content shifted within its background, mirror
  images, videos played backwards, captions fixed to match. Without shifts the model learnt where each
  training picture's shape sat (train shape accuracy up, held-out at chance).
- Held out: a seeded fraction of every modality's items, never trained on, plus pictures rendered for the
  world's held-out captions (`world.json`), whose colour-shape-background combinations no training
  picture or caption has. The report scores them with retrieval (caption -> medium top-1) and with the
  nearest caption among all the world's captions of that modality, per attribute.
- The result is a plain state dict with `build_model(arch).state_dict()`'s keys, read back by
  `ImageBindEncoder.load`; the untouched towers (depth, thermal, IMU) keep their seeded random weights.

The loop is `nextgpt.training.foundation.loop.train` (resumable, deterministic for a seed).

Measured (default `WorldConfig(seed=0)`, default `EncoderTrainConfig`: arch "shapes" with 16 vision heads
started sharp, 32 pictures, 32 videos and 16 sounds a step, 1200 steps at 1e-3, one thread): 744 s of CPU.
Held out (48 pictures, 13 videos, 13 sounds): colour, background, sound kind and pitch 100 % (beeping 75 %),
shape 96 % (pictures) / 85 % (videos), motion direction 54 % (chance 25 %); on the 24 novel-combination
pictures shape 42 %; training pictures 92 %, training videos' direction 65 %. With 16 videos a step (until
2026-11-30; 566 s): shape 83 % / 77 %, direction 31 %, pitch 75 %. Before that the tower had 4 heads and
trained at 3e-3 for 600 steps: shape 27 % / 46 % held out, 17 % novel, 35 % on training pictures, under-learnt
rather than over-fitted. Its class token, the only read-out of ImageBind's head, averaged over
mostly-background patches; 16 heads whose attention starts nearly one-hot pick a patch each, as the channels
of a max pooling do, and a plain ViT's max-pooled patch tokens learn the shapes where its class token does not
(`scripts/probe_encoder_shapes.py`; docs/training.md lists every variant tried). Motion direction is learnt
only partly (54 % held out): it is a relation between where the shape is in the clip's two frames, patches
apart, which the tower finds slowly. On a shared machine run it with one thread: two threads against other
load took 6.8 s a step instead of 0.27 s (pictures only).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nextgpt.encoders import preprocess as pp
from nextgpt.encoders.imagebind import ARCHS, build_model, tokenize
from nextgpt.media.encode import encode_png, encode_wav
from nextgpt.training.data.world_media import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SOUNDS,
    WorldConfig,
    render_audio,
    render_image,
    video_caption,
    world_captions,
)
from nextgpt.training.foundation.loop import LoopConfig, LoopResult, train
from nextgpt.training.world_eval.text import caption_attributes
from nextgpt.types import MediaItem, Modality

logger = logging.getLogger(__name__)

MEDIA: dict[str, tuple[str, str, str, str]] = {
    # modality: (pairs file, name field, media folder, MIME type)
    "image": ("cc3m.json", "image_name", "images", "image/png"),
    "video": ("webvid.json", "video_name", "videos", "video/mp4"),
    "audio": ("audiocaps.json", "audio_name", "audios", "audio/wav"),
}
_TOWER = {"image": "vision", "video": "vision", "audio": "audio"}


@dataclass
class EncoderTrainConfig:
    """How the shapes encoder is trained and evaluated."""

    arch: str = "shapes"
    """ImageBind size in `nextgpt.encoders.imagebind.ARCHS`; its `out_embed_dim` is the embedding width."""
    steps: int = 1200
    """Optimiser steps; each sees one batch of every modality. 1200 cost ~12.5 min of CPU, which the build
    mostly hides: the encoder and then the video trainer run beside the image and then the audio one."""
    batch_size: int = 32
    """Pictures and videos per step; sounds take half as many (the eight sounds are the easiest to tell
    apart). With 16 videos a step (until 2026-11-30) the tower never learnt motion direction (held-out
    31%, training 31%); with 32, 54% / 65% (`scripts/probe_encoder_shapes.py --task direction`: on a
    direction loss alone the tower stays at chance at 16 clips a step and learns at 32). On world version
    6's clips, which move a quarter of the frame (`WorldConfig.video_travel`), 100% / 100%."""
    lr: float = 1e-3
    """At 3e-3 (the default until 2026-11-30) the 16-head tower stayed at chance on shapes (held-out 38%
    after 1200 steps); at 1e-3 it reaches 83%."""
    warmup_steps: int = 20
    weight_decay: float = 0.01
    seed: int = 0
    """Seeds the initial weights, the split and the batches."""
    heldout_fraction: float = 0.2
    """Share of every modality's items kept out of training, for the held-out scores."""
    novel_per_caption: int = 4
    """Pictures rendered per held-out caption of the world (unseen combinations); 0: none."""
    rendered_sounds: int = 64
    """Sounds of each world caption rendered afresh (`world_media.render_audio`) and added to the audio
    training items; as many again, from another stream, are scored as `fresh` sounds. The world's ~6
    training clips of a chord, each at its own root, let the tower learn those roots rather than the
    interval (fresh chords at chance). 0: the world's clips only."""
    modalities: tuple[str, ...] = ("image", "video", "audio")
    augment: bool = True
    """Mirror pictures and videos and play videos backwards (captions fixed to match); see `augment`."""
    shift: bool = True
    """With `augment`: also move pictures' and videos' content within their background."""
    zoom: float = 1.0
    """With `augment`: scale pictures' and videos' content by a factor in [1 / zoom, zoom] (log-uniform,
    at most as far as it fits; `rescale`); 1: never."""
    free_colours: float = 0.25
    """With `augment` and `aux_weight`: share of every picture and video batch painted in random colours
    outside the world's (`random_colours`), scored only by the shape and direction heads: no colour or
    background then tells a shape, as the held-out combinations' would from the training ones."""
    recolour: bool = True
    """With `augment`: repaint pictures and videos in another training caption's colours (`recolour`)."""
    all_captions: bool = True
    """Contrast every medium with all its modality's training captions, not only its batch's."""
    aux_weight: float = 1.0
    """Weight of the attribute heads' loss (`AttributeHeads`: colour, shape, background / direction read
    linearly from a picture's or video's embedding; trained alongside, never saved); 0: contrastive only."""
    dct_stem: bool = True
    """Start the vision patch stem from smooth cosine filters (`dct_stem`) instead of random ones."""
    pos_scale: float = 1.0
    """Start the vision position embeddings from 2-D sines and cosines (`sincos_pos`) this many times as
    long as a patch's content (RMS-normalised stem output, length sqrt(width)); 0: random, as built
    (length ~1 against the stem's ~8 to 60: the position is all but lost in the LayerNorm)."""
    vision_qk_scale: float = 4.0
    """Scale of the vision tower's initial query and key weights (`sharpen_attention`); 1: as built. 4
    starts each head's attention nearly one-hot, a max pooling over patches (8 learnt more slowly)."""
    checkpoint_every: int = 0
    """Steps between resumable states in `state_dir` (0: only at the end)."""

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not an ImageBind arch; choose one of {sorted(ARCHS)}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps={self.steps} must be >= 1 and batch_size={self.batch_size} >= 2")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction} must be in (0, 1)")
        if self.novel_per_caption < 0 or self.rendered_sounds < 0:
            raise ValueError(
                f"novel_per_caption={self.novel_per_caption} and rendered_sounds={self.rendered_sounds} "
                "must be >= 0"
            )
        unknown = sorted(set(self.modalities) - set(MEDIA))
        if unknown or not self.modalities:
            raise ValueError(f"modalities={self.modalities} must be a non-empty subset of {sorted(MEDIA)}")

    @property
    def embed_dim(self) -> int:
        return int(ARCHS[self.arch]["out_embed_dim"])

    @property
    def vision_width(self) -> int:
        return int(ARCHS[self.arch]["vision_embed_dim"])


# --- the world's items, preprocessed once ---------------------------------------------------------------


@dataclass
class Item:
    """One medium ready for the model: its distinct clips and how much each counts in the mean."""

    caption: str
    inputs: torch.Tensor
    """image (1, 3, 224, 224); video (k, 3, 2, 224, 224); audio (k, 1, 128, 204): the distinct clips."""
    weights: torch.Tensor
    """(k,) float32 summing to 1: each distinct clip's share of the medium's clips."""
    index: torch.Tensor
    """(clips,) int64: the distinct clip of every clip position, to rebuild the full preprocessed input."""
    margins: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Pictures and videos: rows above / below and columns left / right of everything that differs from
    the background (the corner pixel), in the 224 px input; how far `augment` may shift the content."""

    def full(self) -> torch.Tensor:
        """The input exactly as `preprocess` returned it (image (3, 224, 224), audio/video all clips)."""
        return self.inputs[0] if self.index.numel() == 0 else self.inputs[self.index]


def prepare(modality: str, item: MediaItem, caption: str) -> Item:
    """Preprocess one medium as the served encoder does and fold its identical clips together."""
    x = pp.load_and_preprocess(item)
    if modality == "image":  # (3, 224, 224): one "clip", no clip axis
        x = x.unsqueeze(0)
        return Item(caption, x, torch.ones(1), torch.zeros(0, dtype=torch.long), background_margins(x))
    distinct: list[torch.Tensor] = []
    index = []
    for clip in x:  # x: (clips, ...)
        found = next((i for i, d in enumerate(distinct) if torch.equal(d, clip)), None)
        if found is None:
            distinct.append(clip.clone())
            found = len(distinct) - 1
        index.append(found)
    idx = torch.tensor(index)
    weights = torch.bincount(idx, minlength=len(distinct)).float() / len(index)
    clips = torch.stack(distinct)
    margins = background_margins(clips) if modality == "video" else (0, 0, 0, 0)
    return Item(caption, clips, weights, idx, margins)


def background_margins(x: torch.Tensor, tolerance: float = 0.3) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows / columns of `x` (..., H, W) that hold only the background colour
    (its top-left pixel, per channel, frame and clip) within `tolerance` (normalised units: about 20
    grey levels, above the MP4 noise)."""
    corner = x[..., :1, :1]  # (..., 1, 1)
    foreground = ((x - corner).abs() > tolerance).flatten(0, -3).any(dim=0)  # (H, W)
    rows = torch.nonzero(foreground.any(dim=1)).flatten()
    cols = torch.nonzero(foreground.any(dim=0)).flatten()
    if rows.numel() == 0:
        return (0, 0, 0, 0)
    h, w = foreground.shape
    return int(rows[0]), int(h - 1 - rows[-1]), int(cols[0]), int(w - 1 - cols[-1])


def load_items(world_dir: Path, modality: str) -> list[Item]:
    """Every pair of one modality in the world, preprocessed from its file's bytes."""
    pairs_file, field_name, folder, mime = MEDIA[modality]
    records = json.loads((world_dir / pairs_file).read_text())
    out = []
    for rec in records:
        data = (world_dir / folder / rec[field_name]).read_bytes()
        media = MediaItem(modality=_modality(modality), data=data, mime_type=mime)
        out.append(prepare(modality, media, rec["caption"]))
    return out


def _modality(name: str) -> Modality:
    for m in ("image", "video", "audio"):
        if m == name:
            return m
    raise ValueError(f"{name!r} is no media modality")


def novel_items(world_dir: Path, per_caption: int, seed: int) -> list[Item]:
    """Pictures of the world's held-out captions (combinations no training picture has), rendered by the
    world's own `render_image`, written as PNG and read back like any other picture."""
    world = json.loads((world_dir / "world.json").read_text())
    size = int(world["config"]["image_size"])
    rng = random.Random(f"{seed}:encoder-novel")
    out = []
    for caption in world.get("heldout_image_captions", []):
        truth = caption_attributes(caption)
        for _ in range(per_caption):
            pixels = render_image(truth["colour"], truth["shape"], truth["background"], size, rng)
            media = MediaItem(modality="image", data=encode_png(pixels), mime_type="image/png")
            out.append(prepare("image", media, caption))
    return out


def rendered_sounds(world_dir: Path, per_sound: int, seed: int, stream: str) -> list[Item]:
    """`per_sound` fresh renders of every world sound (random pitch and loudness, as the world's own),
    written as WAV and read back like any other sound."""
    world = WorldConfig(**json.loads((world_dir / "world.json").read_text())["config"])
    rng = random.Random(f"{seed}:{stream}")
    out = []
    for caption in SOUNDS:
        for _ in range(per_sound):
            data = encode_wav(render_audio(caption, world, rng), world.sample_rate)
            out.append(
                prepare("audio", MediaItem(modality="audio", data=data, mime_type="audio/wav"), caption)
            )
    return out


def split(n: int, fraction: float, seed: int, modality: str) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded `fraction` of the items (at least one) is held out."""
    order = list(range(n))
    random.Random(f"{seed}:encoder-split:{modality}").shuffle(order)
    k = max(1, round(n * fraction)) if n > 1 else 0
    return sorted(order[k:]), sorted(order[:k])


# --- the model's embeddings -------------------------------------------------------------------------------


def embed_media(model: nn.Module, modality: str, items: Sequence[Item]) -> torch.Tensor:
    """(B, E) unit vectors: per item, the weighted mean of its distinct clips' embeddings, normalised.

    Equals `F.normalize(ImageBindModel.forward(full input))` (its clip mean, then unit length)."""
    tower = _TOWER[modality]
    clips = torch.cat([it.inputs for it in items])  # (N, *clip)
    if tower == "vision":
        out = embed_vision(model, clips)  # (N, E), unit
    else:  # one clip per "medium": the model's clip axis of length 1 keeps its own reshape out of the way
        out = model({tower: clips.unsqueeze(1)})[tower]  # (N, E), audio x20
    weights = torch.cat([it.weights for it in items])  # (N,)
    owner = torch.cat([torch.full((len(it.weights),), i) for i, it in enumerate(items)])  # (N,)
    pooled = torch.zeros(len(items), out.shape[1]).index_add(0, owner, out * weights[:, None])
    return F.normalize(pooled, dim=-1)


def embed_vision(model: Any, x: torch.Tensor) -> torch.Tensor:
    """`model({"vision": x})["vision"]` for pictures (N, 3, H, W) or clips (N, 3, 2, H, W), with a
    picture's patch stem run once instead of twice.

    The model shows a picture as a clip of two equal frames (`PadIm2Video`) to a stem whose kernel
    spans both, which is one 2-D convolution with the kernel's two frames summed: half the cost of the
    stem, the dearest part of the tower (tested equal)."""
    pre = model.modality_preprocessors["vision"]
    pad, conv = pre.rgbt_stem.proj  # PadIm2Video, Conv3d
    if x.ndim == 4 and conv.kernel_size[0] == pad.ntimes:
        tokens = F.conv2d(x, conv.weight.sum(dim=2), stride=conv.stride[1:])  # (N, D, h, w)
    else:
        tokens = conv(pad(x)).flatten(2, 3)  # (N, D, 1, h, w) -> (N, D, h, w)
    tokens = tokens.flatten(2).transpose(1, 2)  # (N, P, D)
    cls = pre.cls_token.expand(len(x), -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + pre.pos_embedding_helper.pos_embed  # (N, 1 + P, D)
    out = model.modality_heads["vision"](model.modality_trunks["vision"](tokens=tokens))
    return model.modality_postprocessors["vision"](out)


def embed_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(U, E) text embeddings as `ImageBindModel.forward` gives them: unit vectors x the learned scale."""
    return model({"text": tokens})["text"]


def embed_text_short(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`embed_text` on only the positions up to the longest caption's end token.

    The text tower is causal and reads its output at the end token, so the padding after it changes
    nothing; the world's captions are about 10 of the 77 tokens, so this is ~7x cheaper (tested equal)."""
    pre = model.modality_preprocessors["text"]
    eos = tokens.argmax(dim=-1)  # (U,): the end token has the highest id
    n = int(eos.max()) + 1
    x = pre.token_embedding(tokens[:, :n]) + pre.pos_embed[:, :n]  # (U, n, D)
    x = model.modality_trunks["text"](tokens=x, attn_mask=pre.mask[:n, :n])
    x = model.modality_heads["text"](x, seq_len=eos)
    return model.modality_postprocessors["text"](x)


def contrastive_loss(media: torch.Tensor, text: torch.Tensor, caption_of: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with repeated captions and captions without a medium in the batch.

    media: (B, E) unit vectors; text: (U, E) scaled text embeddings of distinct captions; caption_of: (B,)
    the caption column of every medium. Medium -> caption is a plain cross-entropy over all U captions
    (the more captions, the harder the negatives); caption -> medium, for every caption with media in the
    batch, averages the log-probabilities of all its media, so no twin is pushed away as a negative.
    """
    logits = media @ text.T  # (B, U), the text tower's logit scale is the temperature
    to_text = F.cross_entropy(logits, caption_of)
    positive = caption_of[:, None] == torch.arange(text.shape[0])[None, :]  # (B, U)
    present = positive.any(dim=0)  # (U,)
    log_p = logits[:, present].log_softmax(dim=0)  # over media, per caption in the batch
    pos = positive[:, present]
    to_media = -(log_p * pos).sum(0) / pos.sum(0)  # (U',)
    return 0.5 * (to_text + to_media.mean())


# --- training ------------------------------------------------------------------------------------------


ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    # what `AttributeHeads` reads from a medium's embedding, and in which order its classes come
    "image": {"colour": tuple(COLOURS), "shape": SHAPES, "background": tuple(BACKGROUNDS)},
    "video": {"colour": tuple(COLOURS), "shape": SHAPES, "direction": DIRECTIONS},
}


class AttributeHeads(nn.Module):
    """Linear read-outs of every attribute of a picture or video from its unit embedding.

    Supervised by the captions' attributes (the world's metadata), their cross-entropy makes the vision
    tower put shape and motion into the embedding even while the contrastive loss is still content with
    colours. Only a training aid: they are not part of the saved ImageBind state dict."""

    def __init__(self, embed_dim: int, modalities: Sequence[str]) -> None:
        super().__init__()
        self.scale = embed_dim**0.5  # unit vectors -> components of about unit size
        self.heads = nn.ModuleDict(
            {
                f"{m}_{attr}": nn.Linear(embed_dim, len(values))
                for m in modalities
                if m in ATTRIBUTES
                for attr, values in ATTRIBUTES[m].items()
            }
        )
        self._labels: dict[tuple[str, bool], list[int]] = {}

    def labels(self, caption: str, free: bool = False) -> list[int]:
        """The caption's class of every attribute of its modality; with `free` (a medium painted in
        colours outside the world's) only shape and direction, colour and background ignored (-100)."""
        key = (caption, free)
        if key not in self._labels:
            truth = caption_attributes(caption)
            kind = "image" if caption.endswith(" background") else "video"
            self._labels[key] = [
                -100 if free and attr in ("colour", "background") else values.index(truth[attr])
                for attr, values in ATTRIBUTES[kind].items()
            ]
        return self._labels[key]

    def forward(self, modality: str, media: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the modality's attributes; media: (B, E) unit vectors, labels (B, A)
        (-100: not scored)."""
        x = media * self.scale
        losses = [
            F.cross_entropy(self.heads[f"{modality}_{attr}"](x), labels[:, i], ignore_index=-100)
            for i, attr in enumerate(ATTRIBUTES[modality])
            if bool((labels[:, i] >= 0).any())
        ]
        return torch.stack(losses).mean()


def _batch_sizes(cfg: EncoderTrainConfig) -> dict[str, int]:
    return {m: cfg.batch_size if m != "audio" else max(2, cfg.batch_size // 2) for m in MEDIA}


MIRROR = {"left": "right", "right": "left", "up": "up", "down": "down"}
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def augment(
    modality: str,
    item: Item,
    gen: torch.Generator,
    shift: bool = True,
    palette: Sequence[str] = (),
    zoom: float = 1.0,
    free: bool = False,
) -> Item:
    """A shifted, mirrored and, for a video, time-reversed copy of a training item, with its caption fixed.

    Shifts move the content by whole pixels of the 224 px input, no further than the background around
    it (`Item.margins`), so the shape stays whole: a picture of the world at another place, which keeps
    the model from learning where each training picture's shape sits instead of what it is.

    The world's shapes are symmetric about the vertical axis, so a mirrored picture keeps its caption and
    a mirrored video moving left moves right; a video played backwards moves the other way. Both act on
    the preprocessed clips (a mirror image's resize and crops are the mirror of the original's), so no
    medium is decoded again. Sounds are never changed (a reversed sweep is a sweep in the other direction,
    but a reversed beep is not a beep)."""
    if modality == "audio":
        return item
    mirror, reverse = (torch.rand(2, generator=gen) < 0.5).tolist()
    reverse = reverse and modality == "video"
    x = item.inputs  # (k, 3, [2,] 224, 224): width is the last axis
    caption = item.caption
    margins = item.margins
    if free:  # colours outside the world's: only its shape and motion can be learnt from it
        x = repaint(x, *_colours(item.caption), *random_colours(gen))
    elif palette:  # repaint the shape and the background in another training combination
        caption = palette[int(torch.randint(len(palette), (1,), generator=gen))]
        x = recolour(x, item.caption, caption)
    if zoom > 1.0:
        factor = math.exp(float(torch.empty(()).uniform_(-math.log(zoom), math.log(zoom), generator=gen)))
        x, margins = rescale(x, margins, factor)
    if shift:  # move the content within the background: its rolled-over rows / columns are background
        top, bottom, left, right = margins
        dy = int(torch.randint(-top, bottom + 1, (1,), generator=gen))
        dx = int(torch.randint(-left, right + 1, (1,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    x = x.flip(-1) if mirror else x
    if modality == "video":
        x = x.flip(2) if reverse else x  # (k, 3, 2, 224, 224): the two frames of every clip swap
        truth = caption_attributes(caption)
        direction = truth["direction"]
        direction = MIRROR[direction] if mirror else direction
        direction = REVERSE[direction] if reverse else direction
        caption = video_caption(truth["colour"], truth["shape"], direction)
    return Item(caption, x, item.weights, item.index)


def rescale(
    x: torch.Tensor, margins: tuple[int, int, int, int], factor: float
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Clips x (k, 3, [2,] H, W) with their content (what lies inside `margins`) scaled by `factor`, at
    most as far as it still fits, and centred; returns them with their new margins.

    Resampling is bilinear on the difference from the background colour (the corner pixel), so the new
    border is background."""
    h, w = x.shape[-2:]
    top, bottom, left, right = margins
    content_h, content_w = h - top - bottom, w - left - right
    factor = min(factor, 0.98 * h / content_h, 0.98 * w / content_w)
    # where each output pixel reads, in [-1, 1] coordinates: the content's centre sits at the middle
    cy = (top + (h - bottom)) / h - 1.0
    cx = (left + (w - right)) / w - 1.0
    theta = torch.tensor([[1.0 / factor, 0.0, cx], [0.0, 1.0 / factor, cy]])
    flat = x.reshape(-1, 1, h, w)  # (k * 3 [* 2], 1, H, W)
    background = flat[..., :1, :1]
    grid = F.affine_grid(theta.expand(len(flat), 2, 3), list(flat.shape), align_corners=False)
    out = background + F.grid_sample(flat - background, grid, mode="bilinear", align_corners=False)
    out = out.reshape(x.shape)
    return out, background_margins(out)


def _colours(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,) normalised shape and background colours of a picture's or video's caption."""
    truth = caption_attributes(caption)
    rgb = torch.tensor([COLOURS[truth["colour"]], BACKGROUNDS[truth.get("background", "white")]]) / 255.0
    mean, std = torch.tensor(pp.CLIP_MEAN), torch.tensor(pp.CLIP_STD)
    fg, bg = ((rgb - mean) / std).unbind(0)
    return fg, bg


def recolour(x: torch.Tensor, old: str, new: str) -> torch.Tensor:
    """Preprocessed picture or video clips x (k, 3, [2,] H, W) of caption `old`, repainted in the colour
    and background of caption `new` (`repaint`)."""
    return repaint(x, *_colours(old), *_colours(new))


def repaint(
    x: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, new_fg: torch.Tensor, new_bg: torch.Tensor
) -> torch.Tensor:
    """Clips x (k, 3, [2,] H, W) of a shape in normalised colour `fg` (3,) on `bg`, in `new_fg` on `new_bg`.

    Every pixel of a world picture is a mix of the shape's and the background's colour (resizing mixes
    them at the edges), and the normalisation is affine, so the mixing weight is the pixel's projection
    on the line between the two colours, and the same weight between the new colours gives the picture
    the world would have drawn in them (up to the MP4 noise of videos and the 0-255 clipping of the
    resize's overshoot at the edges)."""
    view = (1, 3) + (1,) * (x.ndim - 2)
    d = (fg - bg).view(view)
    alpha = ((x - bg.view(view)) * d).sum(dim=1, keepdim=True) / d.square().sum()  # (k, 1, [2,] H, W)
    alpha = alpha.clamp(-0.5, 1.5)  # the bicubic resize over- and undershoots; MP4 noise stays bounded
    return new_bg.view(view) + alpha * (new_fg - new_bg).view(view)


def random_colours(gen: torch.Generator, contrast: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (3,) shape and background colours drawn uniformly from RGB, at least `contrast` apart
    (0-1 units; the world's closest pair, purple on gray, is 0.35)."""
    while True:
        rgb = torch.rand(2, 3, generator=gen)
        if float((rgb[0] - rgb[1]).norm()) >= contrast:
            break
    mean, std = torch.tensor(pp.CLIP_MEAN), torch.tensor(pp.CLIP_STD)
    fg, bg = ((rgb - mean) / std).unbind(0)
    return fg, bg


def palettes(modality: str, captions: Sequence[str]) -> dict[str, list[str]]:
    """For each caption, the captions `recolour` may turn it into: those of the same shape (and motion),
    in any colours, among `captions` (the training ones, so held-out combinations stay out)."""
    if modality not in ("image", "video"):
        return {}
    keep = ("shape",) if modality == "image" else ("shape", "direction")
    groups: dict[tuple[str, ...], list[str]] = {}
    for caption in captions:
        truth = caption_attributes(caption)
        groups.setdefault(tuple(truth[k] for k in keep), []).append(caption)
    return {c: group for group in groups.values() for c in group}


def candidate_captions(modality: str, items: Sequence[Item], augmented: bool) -> list[str]:
    """The captions a training medium of `modality` is told apart from: every caption a training item
    has, or gets from `augment` (a video's other directions). Held-out combinations stay out."""
    captions = {it.caption for it in items}
    if augmented and modality == "video":
        pairs = {(a["colour"], a["shape"]) for a in map(caption_attributes, captions)}
        captions = {video_caption(c, s, d) for c, s in pairs for d in DIRECTIONS}
    return sorted(captions)


def make_loss_fn(
    model: nn.Module,
    train_items: dict[str, list[Item]],
    cfg: EncoderTrainConfig,
    heads: AttributeHeads | None = None,
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """The loop's loss: every modality's contrastive loss on one batch drawn with the step's generator.

    With `cfg.all_captions` a medium is contrasted with every candidate caption of its modality (the
    world's caption set is small), not only with the captions of its batch: a red circle on white then
    always meets "a red square/triangle/star on a white background" as negatives, which is what teaches
    the shapes (in-batch negatives mostly differ in colour, and shapes stayed near chance)."""
    cands = {m: candidate_captions(m, train_items[m], cfg.augment) for m in cfg.modalities}
    captions = sorted({c for m in cfg.modalities for c in cands[m]})
    column = {c: i for i, c in enumerate(captions)}
    all_tokens = tokenize(captions)  # (C, 77), once
    palette = {m: palettes(m, cands[m]) if cfg.recolour else {} for m in cfg.modalities}
    sizes = _batch_sizes(cfg)
    n_free_of = {
        m: round(cfg.free_colours * sizes[m]) if cfg.augment and heads is not None and m in ATTRIBUTES else 0
        for m in MEDIA
    }

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        batches = {}
        for modality in cfg.modalities:
            items = train_items[modality]
            pick = torch.randperm(len(items), generator=gen)[: sizes[modality]].tolist()
            batch = [items[i] for i in pick]
            n_free = n_free_of[modality]
            if cfg.augment:
                pal = palette[modality]
                batch = [
                    augment(modality, it, gen, cfg.shift, pal.get(it.caption, ()), cfg.zoom, free=j < n_free)
                    for j, it in enumerate(batch)
                ]
            batches[modality] = batch
        if cfg.all_captions:
            per_modality = {m: [column[c] for c in cands[m]] for m in cfg.modalities}
        else:
            per_modality = {m: sorted({column[it.caption] for it in b}) for m, b in batches.items()}
        used = sorted({c for cols in per_modality.values() for c in cols})
        local = {c: i for i, c in enumerate(used)}
        text = embed_text_short(model, all_tokens[used])  # (U, E): one text pass for all modalities
        losses, aux = [], []
        for modality, batch in batches.items():
            media = embed_media(model, modality, batch)  # (B, E): the first n_free in free colours
            n_free = n_free_of[modality]
            cols = per_modality[modality]
            where = {c: i for i, c in enumerate(cols)}
            caption_of = torch.tensor([where[column[it.caption]] for it in batch[n_free:]])
            losses.append(contrastive_loss(media[n_free:], text[[local[c] for c in cols]], caption_of))
            if heads is not None and modality in ATTRIBUTES:
                labels = torch.tensor(
                    [heads.labels(it.caption, free=j < n_free) for j, it in enumerate(batch)]
                )
                aux.append(heads(modality, media, labels))
        loss = torch.stack(losses).mean()
        return loss + cfg.aux_weight * torch.stack(aux).mean() if aux else loss

    return loss_fn


def build_initial(cfg: EncoderTrainConfig, pictures: torch.Tensor | None = None) -> nn.Module:
    """The untrained model of `cfg.arch`, seeded without touching the caller's RNG, its vision tower
    started as `cfg` says: smooth stem filters (`dct_stem`), each scaled to answer `pictures` (N, 3, H,
    W; when given) with unit RMS, 2-D position embeddings (`sincos_pos`) and sharp attention
    (`sharpen_attention`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model: Any = build_model(cfg.arch)  # Any: its submodules are read by name below
    pre = model.modality_preprocessors["vision"]
    conv = pre.rgbt_stem.proj[1]
    if cfg.dct_stem:
        dct_stem(conv, cfg.seed)
    content = float(cfg.vision_width) ** 0.5  # a patch's length at unit RMS per channel
    if pictures is not None:
        with torch.no_grad():
            built = conv.weight.flatten(1).norm(dim=1).mean()
            x = pre.rgbt_stem.proj(pictures).transpose(0, 1).flatten(1)  # (D, N * patches)
            conv.weight /= x.square().mean(dim=1).sqrt().clamp_min(1e-6).view(-1, 1, 1, 1, 1)
            gain = built / conv.weight.flatten(1).norm(dim=1).mean()  # filters as long as built:
            conv.weight *= gain  # the LayerNorm does not care, AdamW's steps are relative to them
            content = float(gain) * content
    if cfg.pos_scale:
        sincos_pos(pre.pos_embedding_helper, cfg.pos_scale * content)
    sharpen_attention(model.modality_trunks["vision"], cfg.vision_qk_scale)
    return model


@torch.no_grad()
def dct_stem(conv: nn.Conv3d, seed: int) -> None:
    """Start the patch stem (weights (D, 3, T, k, k)) from smooth filters: the lowest 2-D cosine
    frequencies of the patch, one colour channel each, every filter reading the T frames with its own
    seeded weights (cos t, sin t), t in [0, pi / 2], so that pictures (equal frames) see every filter
    and videos can tell the frames apart.

    Random filters answer to single pixels, so what they see of a shape changes with every pixel it
    moves within the 28 px patch, and every sub-patch position must be learnt apart; the low
    frequencies see the same mass, edge and corner a few pixels further, which trains faster."""
    width, channels, frames, k, _ = conv.weight.shape
    pos = (torch.arange(k) + 0.5) / k
    freqs = sorted(((u, v) for u in range(k) for v in range(k)), key=lambda f: (f[0] + f[1], f))
    angle = torch.rand(width, generator=torch.Generator().manual_seed(seed)) * (math.pi / 2)
    time_mix = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (D, 2)
    if frames != 2:
        time_mix = torch.full((width, frames), frames**-0.5)
    built = conv.weight.flatten(1).norm(dim=1).mean()  # keep the built filters' length
    weight = torch.zeros_like(conv.weight)
    for n in range(width):
        u, v = freqs[n // channels]
        basis = torch.cos(math.pi * u * pos)[:, None] * torch.cos(math.pi * v * pos)[None, :]  # (k, k)
        weight[n, n % channels] = time_mix[n, :, None, None] * (basis / basis.norm())
    conv.weight.copy_(weight * built)


@torch.no_grad()
def sincos_pos(helper: Any, norm: float) -> None:
    """Start the vision patches' position embeddings (not the class token's) from 2-D sines and cosines
    of their row and column (as MAE fixes them), each of length `norm`: left, right, up and down are
    then directions in the embedding from the start."""
    pos = helper.pos_embed  # (1, cls + P, D)
    cls = helper.num_cls_tokens
    rows, cols = helper.patches_layout[-2:]
    width = pos.shape[-1]
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    y, x = torch.meshgrid(torch.arange(rows).float(), torch.arange(cols).float(), indexing="ij")
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega  # (P, D/4)
    table = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)  # (P, D)
    table = F.pad(table, (0, width - table.shape[1]))
    pos[0, cls:] = table / table.norm(dim=-1, keepdim=True) * norm


@torch.no_grad()
def sharpen_attention(trunk: Any, scale: float) -> None:
    """Multiply the query and key projections of every attention block of `trunk` by `scale`, so its
    attention logits start `scale`^2 times larger.

    At the default init the logits spread by about 0.5, so every token (the class token too) starts by
    averaging all 65 tokens, and a mean over mostly background patches hides the few patches that tell
    a shape (a corner, a tip, an apex). Sharp attention picks single patches, like the max pooling of a
    CNN, from the start (measured below)."""
    for block in trunk.blocks:
        attn = block.attn  # nn.MultiheadAttention: in_proj_weight is (3 D, D), rows q, k, v
        width = attn.embed_dim
        attn.in_proj_weight[: 2 * width] *= scale


def save_state_dict(model: nn.Module, out_path: Path) -> None:
    """The weights as `ImageBindEncoder.load` reads them: a plain state dict, like imagebind_huge.pth."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out_path)


@dataclass
class WorldData:
    """The world's media, preprocessed, split into what is trained on and what is held out."""

    train: dict[str, list[Item]]
    heldout: dict[str, list[Item]]
    novel: list[Item]
    """Pictures of the world's held-out captions (no training picture or caption has their combination)."""
    fresh_sounds: list[Item]
    """Sounds rendered afresh for scoring only (`EncoderTrainConfig.rendered_sounds`)."""
    seconds: float
    """Wall time of the preprocessing."""


def load_world(world_dir: str | Path, cfg: EncoderTrainConfig) -> WorldData:
    """Read and preprocess every medium of `cfg.modalities` once, and split them (`split`)."""
    world = Path(world_dir)
    t0 = time.perf_counter()
    train_items, held_items = {}, {}
    for modality in cfg.modalities:
        all_items = load_items(world, modality)
        train_idx, held_idx = split(len(all_items), cfg.heldout_fraction, cfg.seed, modality)
        if len(train_idx) < 2:
            raise ValueError(f"the world has {len(all_items)} {modality} items; training needs at least 3")
        train_items[modality] = [all_items[i] for i in train_idx]
        held_items[modality] = [all_items[i] for i in held_idx]
    novel = novel_items(world, cfg.novel_per_caption, cfg.seed) if "image" in cfg.modalities else []
    fresh: list[Item] = []
    if "audio" in cfg.modalities and cfg.rendered_sounds:
        train_items["audio"] += rendered_sounds(world, cfg.rendered_sounds, cfg.seed, "encoder-sounds")
        fresh = rendered_sounds(world, cfg.rendered_sounds, cfg.seed, "encoder-fresh-sounds")
    seconds = time.perf_counter() - t0
    counts = {m: (len(train_items[m]), len(held_items[m])) for m in cfg.modalities}
    logger.info(
        "encoder: preprocessed (train, held-out) %s + %d novel pictures, %d fresh sounds in %.1f s",
        counts,
        len(novel),
        len(fresh),
        seconds,
    )
    return WorldData(train_items, held_items, novel, fresh, seconds)


def fit(
    data: WorldData,
    cfg: EncoderTrainConfig,
    *,
    state_dir: Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, LoopResult]:
    """Build `cfg.arch` from `cfg.seed` and train it on `data.train` with the shared loop."""
    pictures = [it.inputs for it in data.train.get("image", [])[:32]]
    model = build_initial(cfg, torch.cat(pictures) if pictures else None)
    heads = None
    if cfg.aux_weight > 0 and any(m in ATTRIBUTES for m in cfg.modalities):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            heads = AttributeHeads(cfg.embed_dim, cfg.modalities)
    loop = LoopConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup_steps, cfg.steps),
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
    )
    loss_fn = make_loss_fn(model, data.train, cfg, heads)
    module = model if heads is None else nn.ModuleDict({"model": model, "heads": heads})
    result = train(module, loss_fn, loop, name="encoder", state_dir=state_dir, progress=progress)
    return model, result


def train_encoder(
    world_dir: str | Path,
    out_path: str | Path,
    cfg: EncoderTrainConfig | None = None,
    *,
    state_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the encoder on the world in `world_dir`, save it to `out_path`, return the report.

    Report: config, item counts, losses (mean of the first / last tenth, and every step), seconds (wall:
    preprocessing, training, evaluation, total; `cpu_total`: CPU time of all threads, which other load on
    the machine does not inflate), and the `heldout`, `novel` and `train` scores of `evaluate`."""
    cfg = cfg or EncoderTrainConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    data = load_world(world_dir, cfg)
    model, result = fit(data, cfg, state_dir=state_dir, progress=progress)
    out = Path(out_path)
    save_state_dict(model, out)
    t1 = time.perf_counter()
    groups: dict[str, dict[str, list[Item]]] = {"heldout": data.heldout, "train": data.train}
    if data.novel:
        groups["novel"] = {"image": data.novel}
    if data.fresh_sounds:
        groups["fresh"] = {"audio": data.fresh_sounds}
    scores = {name: evaluate(model, items) for name, items in groups.items()}
    items: dict[str, Any] = {
        m: {"train": len(data.train[m]), "heldout": len(data.heldout[m])} for m in data.train
    }
    if data.novel:
        items["novel_image"] = len(data.novel)
    if data.fresh_sounds:
        items["fresh_audio"] = len(data.fresh_sounds)
    report = {
        "config": asdict(cfg),
        "embed_dim": cfg.embed_dim,
        "checkpoint": str(out),
        "items": items,
        "loss_first": result.first,
        "loss_last": result.last,
        "losses": result.losses,
        "seconds": {
            "preprocess": round(data.seconds, 1),
            "train": round(result.seconds, 1),
            "evaluate": round(time.perf_counter() - t1, 1),
            "total": round(time.perf_counter() - t0, 1),
            "cpu_total": round(time.process_time() - c0, 1),
        },
        **scores,
    }
    logger.info(
        "encoder: loss %.3f -> %.3f in %.0f s; held-out caption accuracy %s",
        result.first,
        result.last,
        result.seconds,
        {m: s["caption_accuracy"] for m, s in scores["heldout"].items()},
    )
    return report


# --- evaluation ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, groups: dict[str, list[Item]], chunk: int = 32) -> dict[str, Any]:
    """Per modality, on the given items:

    - `retrieval_top1`: for every distinct caption among the items, is the medium nearest to its text one
      with that caption (chance ~ 1 / distinct captions);
    - `caption_accuracy`: is the caption nearest to the medium, among all the world's captions of that
      modality, its own; `attributes`: the same per attribute (colour, shape, background, direction,
      sound, pitch, sweep, chord, beeping), read from the nearest caption.
    """
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    for modality, items in groups.items():
        if not items:
            continue
        media = torch.cat(
            [embed_media(model, modality, items[i : i + chunk]) for i in range(0, len(items), chunk)]
        )  # (N, E)
        candidates = world_captions(modality)
        text = F.normalize(embed_text(model, tokenize(candidates)), dim=-1)  # (C, E)
        truth = [it.caption for it in items]
        nearest = [candidates[j] for j in (media @ text.T).argmax(dim=1).tolist()]
        attrs: dict[str, list[bool]] = {}
        for want, got in zip(truth, nearest, strict=True):
            want_a, got_a = caption_attributes(want), caption_attributes(got)
            for key, value in want_a.items():
                attrs.setdefault(key, []).append(got_a.get(key) == value)
        queries = sorted(set(truth))
        q_text = text[[candidates.index(q) for q in queries]]  # (Q, E)
        best = (q_text @ media.T).argmax(dim=1).tolist()
        out[modality] = {
            "n": len(items),
            "retrieval_top1": _mean([truth[j] == q for q, j in zip(queries, best, strict=True)]),
            "retrieval_queries": len(queries),
            "caption_accuracy": _mean([w == g for w, g in zip(truth, nearest, strict=True)]),
            "attributes": {key: _mean(hits) for key, hits in sorted(attrs.items())},
        }
    model.train(was_training)
    return out


def _mean(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else float("nan")
