"""Can a vision model learn the shapes world's shapes from the encoder trainer's own inputs? (issue 12)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_encoder_shapes.py --model vit
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_encoder_shapes.py --model cnn --random-colours

Trains on nothing but a shape cross-entropy: the world's training pictures (`make train-world` writes the
world under out/train-world/world), preprocessed as the served encoder reads them, with the trainer's
shift and mirror augmentation (`encoder.augment`). `vit` is the `shapes` profile's ImageBind vision tower
as the trainer starts it (`encoder.build_initial`) with a linear shape head; `cnn` is a three-layer
convolutional network on the same 224 px inputs. `--random-colours` repaints every training picture in
random colours, so that the colour cannot tell the shape. `--fresh N` trains on N pictures newly drawn by
the world's `render_image` (any colour, shape and background, random size and place) instead of the
world's 192, and holds out 300 more, to tell a lack of data from a lack of capacity. `--heads` and `--qk`
change the vit's vision heads and the scale of its initial queries and keys (`sharpen_attention`);
`plain-vit` is a hand-written ViT of the same size whose read-out `--pool` picks: the class token (as
ImageBind's), the mean or the per-channel max of the patch tokens. Prints accuracy on training,
held-out and novel-combination pictures every 100 steps; docs/training.md has the results.

`--task direction` asks the same of motion: the world's training videos (or `--fresh N` new ones drawn
by `render_video`), preprocessed as served (the two frames ImageBind samples per clip), with the
trainer's shift, mirror and time-reversal augmentation, and a direction cross-entropy. The `cnn` and
`plain-vit` models then read the two frames as six channels.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_encoder_shapes.py --model plain-vit --pool max \\
        --fresh 2000 --random-colours
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_encoder_shapes.py --heads 16 --qk 4 --steps 1250 \\
        --fresh 3000 --random-colours
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_encoder_shapes.py --task direction --fresh 400 --qk 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from nextgpt.encoders.imagebind import ARCHS  # noqa: E402
from nextgpt.media.encode import encode_mp4, encode_png  # noqa: E402
from nextgpt.training.data.world_media import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    WorldConfig,
    image_caption,
    render_image,
    render_video,
    video_caption,
)
from nextgpt.training.foundation import encoder as enc  # noqa: E402
from nextgpt.training.world_eval.text import caption_attributes  # noqa: E402
from nextgpt.types import MediaItem  # noqa: E402

TASKS = {"shape": ("image", SHAPES), "direction": ("video", DIRECTIONS)}
"""Probe task -> (the medium it reads, the classes it tells apart)."""


def label(item: enc.Item, task: str) -> int:
    return TASKS[task][1].index(caption_attributes(item.caption)[task])


def as_channels(x: torch.Tensor) -> torch.Tensor:
    """Pictures (N, 3, H, W) as they are; clips (N, 3, T, H, W) with their frames folded into channels."""
    return x.flatten(1, 2) if x.ndim == 5 else x


class FramesAsChannels(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_channels(x)


class ViTClassifier(nn.Module):
    """The `shapes` ImageBind model as the encoder trainer starts it, with a linear head on its vision
    tower's unit-vector output. `pictures`: (N, 3, H, W), to scale the stem (a clip's first frames)."""

    def __init__(self, pictures: torch.Tensor, arch: str, qk: float, classes: int) -> None:
        super().__init__()
        cfg = enc.EncoderTrainConfig(arch=arch, vision_qk_scale=qk)
        self.model = enc.build_initial(cfg, pictures)
        self.head = nn.Linear(cfg.embed_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(enc.embed_vision(self.model, x) * 10.0)  # scaled as a logit temperature


class PlainViT(nn.Module):
    """A pre-norm ViT of the `shapes` tower's size (28 px patches, width 64, 4 heads, 2 blocks) with a
    choice of read-out: what the tower's class token costs against pooling the patch tokens."""

    def __init__(
        self, pool: str, classes: int, channels: int = 3, width: int = 64, patch: int = 28, blocks: int = 2
    ) -> None:
        super().__init__()
        self.pool = pool
        self.stem = nn.Conv2d(channels, width, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (224 // patch) ** 2 + 1, width) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.trunk = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(as_channels(x)).flatten(2).transpose(1, 2)
        tokens = self.norm(self.trunk(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos))
        if self.pool == "cls":
            return self.head(tokens[:, 0])
        patches = tokens[:, 1:]
        return self.head(patches.mean(1) if self.pool == "mean" else patches.max(1).values)


def fresh_items(count: int, size: int, rng: random.Random) -> list[enc.Item]:
    """`count` pictures of random world combinations, newly drawn, encoded and preprocessed as served."""
    out = []
    for _ in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        background = rng.choice(list(BACKGROUNDS))
        png = encode_png(render_image(colour, shape, background, size, rng))
        media = MediaItem(modality="image", data=png, mime_type="image/png")
        out.append(enc.prepare("image", media, image_caption(colour, shape, background)))
    return out


def fresh_videos(count: int, cfg: WorldConfig, rng: random.Random) -> list[enc.Item]:
    """`count` clips of random world combinations, newly drawn, encoded and preprocessed as served."""
    out = []
    for _ in range(count):
        colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(DIRECTIONS)
        mp4 = encode_mp4(render_video(colour, shape, direction, cfg, rng), fps=cfg.video_fps)
        media = MediaItem(modality="video", data=mp4, mime_type="video/mp4")
        out.append(enc.prepare("video", media, video_caption(colour, shape, direction)))
    return out


def cnn_classifier(classes: int, channels: int = 3) -> nn.Module:
    return nn.Sequential(
        FramesAsChannels(),
        nn.AvgPool2d(4),  # 224 -> 56 px
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="shape")
    parser.add_argument("--model", choices=("vit", "plain-vit", "cnn"), default="vit")
    parser.add_argument("--pool", choices=("cls", "mean", "max"), default="cls", help="plain-vit read-out")
    parser.add_argument("--heads", type=int, default=0, help="vit: vision heads (0: the arch's)")
    parser.add_argument("--qk", type=float, default=1.0, help="vit: initial query / key scale")
    parser.add_argument("--world", type=Path, default=Path("out/train-world/world"))
    parser.add_argument("--arch", default="shapes", help="ImageBind arch of the vit (encoder.ARCHS)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--random-colours", action="store_true")
    parser.add_argument("--fresh", type=int, default=0, help="train on N new media (0: the world's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    medium, classes = TASKS[args.task]
    items = enc.load_items(args.world, medium)
    train_idx, held_idx = enc.split(len(items), 0.2, args.seed, medium)
    train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
    if args.fresh:
        world = WorldConfig(**json.loads((args.world / "world.json").read_text())["config"])
        rng = random.Random(f"{args.seed}:fresh")
        if medium == "image":
            train, held = (fresh_items(n, world.image_size, rng) for n in (args.fresh, 300))
        else:
            train, held = (fresh_videos(n, world, rng) for n in (args.fresh, 100))
    novel = enc.novel_items(args.world, 4, args.seed) if medium == "image" else []
    if args.heads:
        ARCHS[args.arch] = {**ARCHS[args.arch], "vision_num_heads": args.heads}
    first = torch.cat([it.inputs for it in train[:64]])
    channels = 3 * first.shape[2] if first.ndim == 5 else 3
    classifier = (
        ViTClassifier(first[:, :, 0] if first.ndim == 5 else first, args.arch, args.qk, len(classes))
        if args.model == "vit"
        else PlainViT(args.pool, len(classes), channels)
        if args.model == "plain-vit"
        else cnn_classifier(len(classes), channels)
    )
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def accuracy(group: list[enc.Item]) -> float:
        x = torch.cat([it.inputs for it in group])
        labels = torch.tensor([label(it, args.task) for it in group])
        return float((classifier(x).argmax(-1) == labels).float().mean())

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        pick = torch.randperm(len(train), generator=gen)[: args.batch].tolist()
        batch = [enc.augment(medium, train[i], gen, True, free=args.random_colours) for i in pick]
        x = torch.cat([it.inputs for it in batch])
        loss = F.cross_entropy(classifier(x), torch.tensor([label(it, args.task) for it in batch]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.steps:
            novel_part = f", novel {accuracy(novel):.0%}" if novel else ""
            print(
                f"{args.model} step {step}: loss {loss.item():.3f}, {args.task} right on training "
                f"{accuracy(train):.0%}, held-out {accuracy(held):.0%}{novel_part} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
