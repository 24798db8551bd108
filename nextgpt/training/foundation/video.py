"""The `shapes` profile's Zeroscope-format text-to-video pipeline, trained on the shapes world (issue 12).

Three separately trained parts, each with its own run of the shared loop (`loop.py`), then wired into the
real `TextToVideoSDPipeline` and saved with `save_pretrained`, so that the served `VideoDecoder` loads it
unchanged. As in Zeroscope, the VAE is an image VAE applied to every frame (`decode_latents` folds the
frames into the batch) and the 3D UNet denoises the (C, frames, h, w) latents of a whole clip at once.

1. the VAE (`AutoencoderKL`, x4: 32 px frames -> 8 x 8 x 4 latents): reconstruction (MSE + L1) and a
   small KL on single frames of clips rendered on the fly;
2. the CLIP-format text encoder (`CLIPTextModel`, real CLIP tokenizer; `clip_text.py`): attribute heads
   (colour, shape, direction) on the mean of its 77 states, over the world's caption and paraphrases of
   it, as the image trainer's; then frozen, so that the UNet's conditioning (and the video output
   projector's stage-2 target) is a fixed function of the caption;
3. the UNet (`UNet3DConditionModel`): `train_unet`'s v-prediction under Zeroscope's noise schedule
   rescaled to end in pure noise (Lin et al. 2024, `diffusion.ZERO_TERMINAL_SNR`, saved in the DDIM
   scheduler's config), min-SNR weighting, and the empty caption for 10% of the clips so that
   classifier-free guidance works; its temporal convolutions are causal (`make_temporal_convs_causal`).
   Both are needed for the caption's direction to decide the motion: "left" differs from "right" only
   in which frame comes first, and a UNet3D as diffusers starts it is symmetric under playing a clip
   backwards (its temporal attention has no positions, its temporal convolutions start at zero with the
   same padding at both ends), and under SD's schedule it learns to read the layout from the noise.
   With SD's schedule and diffusers' start, its clips moved along the asked axis with the seed's sign
   (`scripts/probe_video_direction.py`: its first estimate of a clip was the same for "left" and
   "right"); measured in `VideoTrainConfig.zero_terminal_snr`.

The text encoder trains first (`text_stage`: it needs nothing the other parts make) and is also saved
alone, so that `make train-world` trains the LLM's stages against it while the VAE and the UNet train.

The trainer's held-out (colour, shape, direction) combinations never appear in training (neither as clips
nor as captions), nor do the HELDOUT_TEMPLATES phrasings; `train_video_pipeline` ends by asking for the
held-out combinations through the real decoder, in the world's caption and in those phrasings, and
scoring the clips with `world_eval`'s video classifiers (colour, shape, direction of the centroid track).

Measured (see `VideoTrainConfig`): 830 s of CPU for the three parts at one thread (seed 0 build,
2026-12-01, beside other work; 1030 s before the UNet's heads of width 8).

Every random draw comes from the loop's per-step generator or from generators seeded by `cfg.seed`, so a
seed gives the same weights (with a fixed thread count; run with OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self, cast

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth import (
    TextToVideoSDPipeline,
)
from PIL import Image, ImageDraw
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from nextgpt import tiny_profile as dims
from nextgpt.config import DecodeDefaults, DecoderConfig
from nextgpt.tiny.diffusion import sd_scheduler_kwargs
from nextgpt.training.data.world_media import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    article,
    draw_shape,
    video_caption,
    video_combos,
)
from nextgpt.training.foundation.clip_text import caption_bank
from nextgpt.training.foundation.clip_text import text_stage as clip_text_stage
from nextgpt.training.foundation.diffusion import (
    ZERO_TERMINAL_SNR,
    PartResult,
    fit_part,
    kl_vae,
    latent_bank,
    run_times,
    save_pipeline,
    train_unet,
    vae_loss,
)
from nextgpt.training.world_eval import evaluate_world_media

logger = logging.getLogger(__name__)

Combo = tuple[str, str, str]
"""(colour, shape, direction)."""
ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "direction": DIRECTIONS}
"""What the text stage's heads read and `world_eval` scores, in a Combo's order."""

ALONG = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
"""Each direction as an adverb, for the phrasings that say "drifting to the left"."""
TEMPLATES = (
    "{a} {c} {s} moving {d}",  # the world's own caption (`video_caption`)
    "{c} {s} moving {d}",
    "a video of {a} {c} {s} moving {d}",
    "{a} {c} {s} that moves {d}",
    "{a} {c} {s} going {d}",
    "a {s} in {c} moving {along}",
    "{c} {s} sliding {along}",
    "a clip of {a} {c} {s} travelling {d}",
    "{a} {c} {s} drifting {along}",
)
"""Caption phrasings trained on: the world's caption first, then paraphrases (the LLM's phrasings vary)."""
HELDOUT_TEMPLATES = (
    "one {c} {s} heading {d} across a blank frame",
    "watch {a} {c} {s} as it glides {along}",
)
"""Phrasings never trained on, for the held-out evaluation; none of their other words is in TEMPLATES or
`clip_text.FILLERS` but "a", "to" and "the"."""


@dataclass
class VideoTrainConfig:
    """Sizes and step counts of the video pipeline; the defaults are the `shapes` profile's.

    Measured at the defaults (2026-12-01; the UNet retrained on the seed-0 and seed-1 builds' VAE and
    text encoder): the UNet and the evaluation ~580 s of CPU at one thread (~720 s with `UNET_HEAD_WIDTH`
    2); held-out combinations through `VideoDecoder`: colour 100%, direction 100% at both seeds, shape
    47% / 31%. How it got there (8 frames, SD's schedule, a symmetric start): docs/training.md."""

    seed: int = 0
    frame_size: int = 32
    """Side of the generated frames, in pixels (a multiple of 8; the VAE downsamples x4)."""
    num_frames: int = 4
    """Frames of a clip, in training and as served: half the world's `video_frames`, over the same 2 s.
    The UNet can only tell a frame's place in the clip from its temporal convolutions' zero padding, which
    reaches every frame of 4 but not the middle of 8: with 8 frames its first estimate of a clip was the
    same for all four directions (centroids <= 1.9 px apart), with 4 the axes part (10.1 px) and direction
    on the held-out combinations went from 13-19% to 56% in the trainer (62% in the first try, a UNet
    retrained alone; docs/training.md)."""
    fps: int = 2
    """Frames per second of the served MP4: 4 frames over the world's 2 s."""
    radius: tuple[float, float] = (0.16, 0.24)
    """Shape radius range as a share of the side: larger than the world's 0.12-0.2, legible at 32 px, and
    still leaving the shape half the frame to cross."""
    n_heldout: int = 8
    """(colour, shape, direction) combinations kept out of training (of 96), drawn from `seed`."""
    vae_channels: tuple[int, ...] = (16, 32, 64)
    """VAE block widths; len - 1 downsamplings."""
    latent_channels: int = 4
    vae_steps: int = 900
    """At 300 the VAE's reconstructions of held-out clips kept colour and place but not shape (a shape is
    ~2 latent pixels across): the world's classifier read the shape of 31-34% of them, which is all the
    UNet can reach; 900 steps: 94% (2026-11-30; 8 latent channels at 300 steps: 47%; an x2 VAE: 91% at
    ~4x the UNet's cost). ~2.5 min more CPU."""
    vae_batch: int = 16
    """Frames per VAE step, each from a fresh clip."""
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    foreground_weight: float = 12.0
    """Extra weight of the shape's pixels in the VAE's reconstruction loss. The shape covers a tenth of a
    white frame; unweighted, 300 steps reconstructed every shape in place but in one brownish grey
    (held-out colour 0%). Through the whole pipeline, 4 gave held-out colour 22% in a full build
    (2026-11-29), 12 gave 97-100% in two runs."""
    cond_dim: int = dims.VIDEO_COND_DIM
    """Width of the CLIP text states the UNet cross-attends to (the video output projector's target width)."""
    text_steps: int = 200
    filled_copies: int = 2
    """Copies of each training caption with 1-2 random `clip_text.FILLERS` words, for the text stage."""
    text_batch: int = 64
    text_lr: float = 2e-3
    unet_channels: tuple[int, ...] = (32, 64, 64)
    """UNet block widths; len - 1 downsamplings of the latent."""
    unet_steps: int = 2400
    """At 1200 (until 2026-12-02) whether the UNet learnt which way a clip runs depended on the seed and
    the machine's rounding: seed 0 100%, seed 1 on this machine 48% over all 96 combinations at 4 seeds
    (the axis always right, the sign a coin flip), 100% on another. 2400, retrained on seed 1's VAE and
    text encoder: 100% (384 of 384), held-out 100%, for ~7 more minutes of one core."""
    unet_batch: int = 8
    """Clips per UNet step (each num_frames frames)."""
    unet_lr: float = 2e-3
    bank_size: int = 1536
    """Training clips encoded once by the trained VAE and drawn from by the UNet's steps."""
    uncond_prob: float = 0.1
    """Share of UNet examples conditioned on the empty caption (classifier-free guidance)."""
    snr_gamma: float | None = 5.0
    """Min-SNR loss weighting (Hang et al. 2023); None for the plain MSE (of v, under `zero_terminal_snr`)."""
    causal_temporal_convs: bool = True
    """Keep the UNet's temporal convolutions causal, started open (`make_temporal_convs_causal`), so that
    it can tell the first frame from the last. Needs `zero_terminal_snr` to matter (measured below).

    Only started causal (training then moved every tap), the clips' direction depended on the seed and
    the step count: at seed 1 held-out direction 62% after 1200 steps, 100% after 2400 with heads of
    width 2, 75% / 69% with heads of 8 (seed 0: 100%, 97%). Kept causal, with heads of 8, after 1200
    steps: 100% at seeds 0 and 1 (unseen phrasings 100% / 94%), colour 100%; shape 47% / 31% (2026-12-01)."""
    zero_terminal_snr: bool = True
    """Train and sample under `diffusion.ZERO_TERMINAL_SNR` (v-prediction, a schedule ending in pure
    noise) instead of SD's schedule, whose last timestep leaks the clip's layout: there the UNet learns
    to follow the leak, and at sampling, from pure noise, the seed decides which way the shape moves.

    Measured (seed 0, the build's VAE and text encoder, 1200 UNet steps, 2026-12-01; held-out
    combinations, 4 seeds each): SD's schedule, diffusers' start: direction 56% (a training combination's
    clip moved the same way at a given seed whatever its caption said, 53%); zero terminal SNR alone:
    59% (the clips asked to move sideways stood still: the mean of a left and a right clip); the causal
    start alone: 59%; both: 100% (94% on 4 more seeds; training combinations 98%), 78% in the unseen
    phrasings. Shape 50-59% in all three variants against 75%: not a goal of text->video, reported."""
    eval_steps: int = 20
    """DDIM steps of the held-out evaluation, and the served default."""
    eval_guidance: float = 5.0
    eval_seeds: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if self.frame_size % 8 or self.frame_size < 16:
            raise ValueError(f"frame_size={self.frame_size} must be a multiple of 8 and >= 16")
        if self.num_frames < 2:
            raise ValueError(f"num_frames={self.num_frames} must be >= 2 (a direction needs two frames)")
        if not 0 < self.radius[0] <= self.radius[1] < 0.3:
            raise ValueError(f"radius={self.radius} must satisfy 0 < low <= high < 0.3 (room to move)")
        if not 0 <= self.n_heldout < len(COLOURS) * len(SHAPES) * len(DIRECTIONS):
            raise ValueError(f"n_heldout={self.n_heldout} must be in [0, 96)")
        if not 0 <= self.uncond_prob < 1:
            raise ValueError(f"uncond_prob={self.uncond_prob} must be in [0, 1)")
        for name in ("vae_steps", "text_steps", "unet_steps", "vae_batch", "text_batch", "unet_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @classmethod
    def reduced(cls, seed: int = 0) -> Self:
        """For tests: each part learns visibly in seconds; the clips are not yet right."""
        return cls(
            seed=seed,
            vae_channels=(8, 16, 16),
            vae_steps=30,
            vae_batch=8,
            text_steps=30,
            text_batch=16,
            unet_channels=(16, 32),
            unet_steps=30,
            unet_batch=4,
            bank_size=32,
            eval_steps=2,
            eval_seeds=1,
            progress=False,
        )


# ---------------------------------------------------------------------------------------------------------
# Data


def heldout_combos(cfg: VideoTrainConfig) -> list[Combo]:
    """`cfg.n_heldout` combinations drawn by `cfg.seed`, kept out of training."""
    return sorted(random.Random(f"{cfg.seed}:video-heldout").sample(video_combos(), cfg.n_heldout))


def train_combos(cfg: VideoTrainConfig) -> list[Combo]:
    """Every (colour, shape, direction) but the held-out ones."""
    held = set(heldout_combos(cfg))
    return [combo for combo in video_combos() if combo not in held]


def phrase(template: str, combo: Combo) -> str:
    """`combo` in `template`."""
    colour, shape, direction = combo
    return template.format(a=article(colour), c=colour, s=shape, d=direction, along=ALONG[direction])


def phrasings(combo: Combo) -> list[str]:
    """`combo` in every TEMPLATES phrasing (the text stage's captions and the UNet's conditioning)."""
    return [phrase(t, combo) for t in TEMPLATES]


def render_clip(combo: Combo, cfg: VideoTrainConfig, rng: random.Random) -> np.ndarray:
    """(T, H, W, 3) uint8: the shape crosses a white frame in its direction at constant speed, at this
    trainer's size, frame count and radius. The world's clips (`render_video`) move only a quarter of the
    way since world version 6, for the encoder's patch stem; a generated clip crosses the frame, so that
    its direction is plain to see and to score."""
    colour, shape, direction = combo
    size = cfg.frame_size
    r = rng.uniform(*cfg.radius) * size
    lo, hi = r + 1, size - r - 1
    across = rng.uniform(lo, hi)  # the fixed coordinate
    frames = []
    for t in range(cfg.num_frames):
        f = t / (cfg.num_frames - 1)
        along = lo + f * (hi - lo) if direction in ("right", "down") else hi - f * (hi - lo)
        cx, cy = (along, across) if direction in ("left", "right") else (across, along)  # y grows down
        canvas = Image.new("RGB", (size, size), BACKGROUNDS["white"])
        draw_shape(canvas, shape, colour, cx, cy, r)
        frames.append(np.asarray(canvas))
    return np.stack(frames)


def to_tensor(clips: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (..., H, W, 3) arrays -> (N, 3, H, W) floats in [-1, 1], the VAE's range; a clip's frames
    become consecutive rows."""
    pixels = torch.from_numpy(np.stack(clips)).flatten(0, -4)  # (N, H, W, 3)
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_frames(x: torch.Tensor, n: int) -> np.ndarray:
    """(n x T, 3, H, W) in [-1, 1] -> (n, T, H, W, 3) floats in [0, 1], as the pipeline returns videos."""
    frames = ((x.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).numpy()
    return frames.reshape(n, -1, *frames.shape[1:])


# ---------------------------------------------------------------------------------------------------------
# Components


UNET_HEAD_WIDTH = 8
"""Width of the UNet's attention heads. At 2 (taken for the number of heads, as UNet2D reads the same
argument) a 32-channel block had 16 heads of width 2: a UNet step cost 0.63 s of CPU instead of 0.47,
and at seed 1 the clips' direction was right in 62% of held-out clips after 1200 steps, 75% with heads
of 8 (2026-12-01)."""


def build_unet(cfg: VideoTrainConfig) -> UNet3DConditionModel:
    # As the image UNet: cross-attention at the finest level (the served decoder shares
    # `down_blocks.0.attentions.0`'s self-attention across the guidance halves, see
    # `nextgpt.decoders.video.GUIDANCE_SHARED`), in the mid block and in the last up block.
    levels = len(cfg.unet_channels)
    unet = UNet3DConditionModel(
        sample_size=cfg.frame_size // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D",) + ("DownBlock3D",) * (levels - 1),
        up_block_types=("UpBlock3D",) * (levels - 1) + ("CrossAttnUpBlock3D",),
        cross_attention_dim=cfg.cond_dim,
        # In UNet3D's blocks this is the width of a head, not the number of heads (the opposite of
        # UNet2D's): 4 heads of 8 at 32 channels, 8 at 64; `transformer_in` gets 8 heads of 8.
        attention_head_dim=UNET_HEAD_WIDTH,
        norm_num_groups=8,
    )
    if cfg.causal_temporal_convs:
        make_temporal_convs_causal(unet, cfg.seed)
    return unet


@torch.no_grad()
def make_temporal_convs_causal(unet: UNet3DConditionModel, seed: int) -> None:
    """Make every temporal convolution of `unet` look only backwards, for good: the kernel's tap on the
    next frame is zeroed in all four convolutions of each `TemporalConvLayer`, and a gradient hook keeps
    it at zero (Adam's step and weight decay leave a weight with zero gradient where it is); the last
    convolution starts open (small random weights instead of diffusers' zeros). A causal stack's zero
    padding reaches frame 0 only, then frames 0-1, and so on, so the UNet knows which frame comes first.
    The saved weights are plain `Conv3d` kernels with a zero tap: the served pipeline loads them as any.

    A UNet3D started as diffusers builds it is time-reversal symmetric (the temporal branch is zero, its
    attention has no positions, its padding is the same at both ends), so for "left" it can only learn
    the mixture of a left and a right clip; causal only at the start, training moved the taps back
    towards that symmetry at some seeds (`VideoTrainConfig.causal_temporal_convs`)."""
    generator = torch.Generator().manual_seed(seed + 7)
    for module in unet.modules():
        if not isinstance(module, TemporalConvLayer):
            continue
        stack = (module.conv1, module.conv2, module.conv3, module.conv4)
        convs = [cast(nn.Conv3d, layers[-1]) for layers in stack]  # each: norm, SiLU, (dropout,) conv
        last = convs[-1].weight
        fan_in = last.shape[1] * last.shape[2]
        last.copy_(torch.randn(last.shape, generator=generator) * 0.1 / fan_in**0.5)
        for conv in convs:
            conv.weight[:, :, 2] = 0  # (out, in, frame tap, 1, 1): no tap on the next frame
            past_only = (torch.arange(3) < 2).float().view(1, 1, 3, 1, 1)
            conv.weight.register_hook(lambda grad, mask=past_only: grad * mask)


# ---------------------------------------------------------------------------------------------------------
# The three parts


def train_vae(
    cfg: VideoTrainConfig, combos: Sequence[Combo], state: Path
) -> tuple[AutoencoderKL, PartResult]:
    torch.manual_seed(cfg.seed)
    vae = kl_vae(cfg.vae_channels, cfg.latent_channels, cfg.frame_size)

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(combos), (cfg.vae_batch,), generator=gen).tolist()
        frame = torch.randint(cfg.num_frames, (cfg.vae_batch,), generator=gen).tolist()
        rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
        x = to_tensor([render_clip(combos[i], cfg, rng)[f] for i, f in zip(which, frame, strict=True)])
        shape = (x < 1).any(dim=1, keepdim=True)  # (B, 1, H, W): not white
        return vae_loss(vae, x, cfg.kl_weight, shape, cfg.foreground_weight)

    return vae, fit_part(
        vae, loss_fn, cfg, steps=cfg.vae_steps, lr=cfg.vae_lr, name="video-vae", state_dir=state / "vae"
    )


def score(combos: Sequence[Combo], videos: np.ndarray) -> dict[str, Any]:
    """`world_eval` accuracy of (N, T, H, W, 3) videos against their combos: per attribute, "all" three,
    and "colour_direction" (both right, the issue's target), with what the classifiers read."""
    expected = [dict(zip(ATTRIBUTES, combo, strict=True)) for combo in combos]
    report = evaluate_world_media(zip(expected, videos, strict=True))
    both = [item.correct["colour"] and item.correct["direction"] for item in report.items]
    return {
        "accuracy": {**report.accuracy(), "colour_direction": sum(both) / max(1, len(both))},
        "found": [item.found for item in report.items],
    }


@torch.no_grad()
def vae_fidelity(vae: AutoencoderKL, cfg: VideoTrainConfig, per_combo: int = 2) -> dict[str, float]:
    """`world_eval` accuracy on frame-by-frame VAE reconstructions of held-out clips: the UNet's ceiling."""
    rng = random.Random(f"{cfg.seed}:video-vae-eval")
    combos = [c for c in heldout_combos(cfg) or video_combos()[:8] for _ in range(per_combo)]
    x = to_tensor([render_clip(c, cfg, rng) for c in combos])  # (N x T, 3, H, W)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    return dict(score(combos, to_frames(recon, len(combos)))["accuracy"])


@torch.no_grad()
def encode_bank(
    vae: AutoencoderKL, combos: Sequence[Combo], cfg: VideoTrainConfig
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`latent_bank` of `bank_size` clips of the training combinations: latent means (N, C, T, h, w), the
    UNet3D's layout (the VAE encodes the frames one by one)."""
    rng = random.Random(f"{cfg.seed}:video-bank")

    def encode(which: list[int]) -> torch.Tensor:
        x = to_tensor([render_clip(combos[i], cfg, rng) for i in which])  # (n x T, 3, H, W)
        z = vae.encode(x).latent_dist.mean  # (n x T, C, h, w)
        return z.view(len(which), cfg.num_frames, *z.shape[1:]).transpose(1, 2)

    return latent_bank(encode, len(combos), cfg.bank_size, chunk=32)


# ---------------------------------------------------------------------------------------------------------
# The pipeline and its evaluation


def build_scheduler(cfg: VideoTrainConfig) -> DDIMScheduler:
    """Zeroscope's: DDIM under SD 1.5's noise schedule, as the tiny profile's; with `zero_terminal_snr`,
    rescaled to end in pure noise, with v-prediction (`diffusion.ZERO_TERMINAL_SNR`)."""
    extra = ZERO_TERMINAL_SNR if cfg.zero_terminal_snr else {}
    return DDIMScheduler(clip_sample=False, **sd_scheduler_kwargs(), **extra)


def decode_defaults(cfg: VideoTrainConfig) -> DecodeDefaults:
    """The decode settings the `shapes` profile should serve this pipeline with."""
    return DecodeDefaults(
        steps=cfg.eval_steps,
        guidance_scale=cfg.eval_guidance,
        height=cfg.frame_size,
        width=cfg.frame_size,
        num_frames=cfg.num_frames,
        fps=cfg.fps,
    )


def evaluate(
    pipeline_dir: Path, cfg: VideoTrainConfig
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """The held-out combinations asked for through the served `VideoDecoder` in the world's caption and in
    each HELDOUT_TEMPLATES phrasing, `eval_seeds` seeds each, scored by `world_eval`. Returns the report
    and (caption, clip) pairs of the world captions' first seed."""
    from nextgpt.decoders.video import VideoDecoder  # the serving class, loaded as a profile loads it

    options = decode_defaults(cfg)
    decoder = VideoDecoder.load(DecoderConfig(pipeline_dir=pipeline_dir, defaults=options))
    combos = heldout_combos(cfg) or video_combos()[:8]
    asked = {
        "world_caption": TEMPLATES[0],
        **{f"unseen_phrasing_{i}": t for i, t in enumerate(HELDOUT_TEMPLATES)},
    }
    report: dict[str, Any] = {}
    samples: list[tuple[str, np.ndarray]] = []
    for name, template in asked.items():
        wanted = [combo for combo in combos for _ in range(cfg.eval_seeds)]
        prompts = [phrase(template, combo) for combo in wanted]
        seeds = [cfg.seed * 1000 + k for _ in combos for k in range(cfg.eval_seeds)]
        videos = decoder.diffuse(decoder.encode_text(prompts), options, seeds=seeds)  # (N, T, H, W, 3)
        report[name] = {**score(wanted, videos), "prompts": prompts[:: cfg.eval_seeds]}
        if name == "world_caption":
            samples = [(prompts[i], videos[i]) for i in range(0, len(prompts), cfg.eval_seeds)]
    unseen = [report[name]["accuracy"] for name in asked if name != "world_caption"]
    report["unseen_phrasings"] = {k: float(np.mean([a[k] for a in unseen])) for k in unseen[0]}
    return report, samples


def sample_grid(samples: Sequence[tuple[str, np.ndarray]], path: Path, scale: int = 2) -> Path:
    """A PNG of the clips, one per row (its frames left to right), the caption under each."""
    frames, side = samples[0][1].shape[0], samples[0][1].shape[1] * scale
    text_h = 14
    width = max(frames * (side + 2) + 6, 260)
    grid = Image.new("RGB", (width, len(samples) * (side + text_h + 8) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (caption, clip) in enumerate(samples):
        top = 4 + r * (side + text_h + 8)
        for k, frame in enumerate(clip):
            pixels = Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
            grid.paste(pixels.resize((side, side), Image.Resampling.NEAREST), (4 + k * (side + 2), top))
        draw.text((4, top + side + 2), caption, fill=(0, 0, 0))
    grid.save(path)
    return path


def text_stage(out: Path, cfg: VideoTrainConfig) -> tuple[CLIPTextModel, CLIPTokenizer, PartResult]:
    """Step 1 of `train_video_pipeline`, also run alone: `clip_text.text_stage` (out/text-pipeline)."""
    return clip_text_stage(
        out, cfg, train_combos(cfg), phrasings, ATTRIBUTES, name="video-text", pipeline=TextToVideoSDPipeline
    )


def train_video_pipeline(out_dir: str | Path, cfg: VideoTrainConfig | None = None) -> dict[str, Any]:
    """Train the three parts, save the pipeline under `out_dir/pipeline`, evaluate it on the held-out
    combinations through the served decoder, and write `report.json` and `samples.png` beside it.
    Resumable: `out_dir/state` keeps each part's loop state."""
    cfg = cfg or VideoTrainConfig()
    out = Path(out_dir)
    state = out / "state"
    t0, cpu0 = time.perf_counter(), time.process_time()
    combos = train_combos(cfg)
    # 1. Text encoder over the world's caption and its paraphrases (also saved alone).
    encoder, tokenizer, text_result = text_stage(out, cfg)
    # 2. VAE, on single frames.
    vae, vae_result = train_vae(cfg, combos, state)
    reconstruction = vae_fidelity(vae, cfg)
    logger.info("video VAE reconstructions of held-out clips: %s", reconstruction)
    # 3. UNet3D on the VAE's latents of a fixed bank of clips, conditioned on the frozen encoder's states.
    raw, combo_of, scaling = encode_bank(vae, combos, cfg)
    vae.register_to_config(scaling_factor=scaling)
    embeds, empty = caption_bank(encoder, tokenizer, combos, phrasings)  # (combos, templates, 77, D), (77, D)
    scheduler = build_scheduler(cfg)
    unet, unet_result = train_unet(
        build_unet,
        cfg,
        raw * scaling,
        combo_of,
        embeds,
        empty,
        scheduler,
        name="video-unet",
        state_dir=state / "unet",
    )
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # 4. Save in diffusers' layout, load through the served decoder, ask for the held-out combinations.
    pipeline_dir = save_pipeline(
        TextToVideoSDPipeline, out / "pipeline", vae, encoder, tokenizer, unet, scheduler
    )
    heldout, samples = evaluate(pipeline_dir, cfg)
    grid = sample_grid(samples, out / "samples.png")
    report: dict[str, Any] = {
        "pipeline_dir": str(pipeline_dir),
        "samples": str(grid),
        "parts": {
            "vae": asdict(vae_result),
            "text_encoder": asdict(text_result),
            "unet": asdict(unet_result),
        },
        "vae_reconstruction": reconstruction,
        "latent_scaling_factor": scaling,
        "heldout_captions": [video_caption(*c) for c in heldout_combos(cfg)],
        "heldout": heldout,
        "decode_defaults": asdict(decode_defaults(cfg)),
        **run_times(t0, cpu0, train_seconds, train_cpu),
        "config": asdict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: v["accuracy"] if "accuracy" in v else v for k, v in heldout.items()}
    logger.info("video pipeline: %s", json.dumps({"parts": report["parts"], "heldout": summary})[:2000])
    return report
