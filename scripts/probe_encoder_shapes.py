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
world's 192, and holds out 300 more, to tell a lack of data from a lack of capacity. Prints accuracy on
training, held-out and novel-combination pictures every 100 steps; docs/training.md has the results.
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

from nextgpt.media.encode import encode_png  # noqa: E402
from nextgpt.training.data.synthetic import BACKGROUNDS, COLOURS, SHAPES, image_caption, render_image  # noqa: E402
from nextgpt.training.foundation import encoder as enc  # noqa: E402
from nextgpt.training.world_eval.text import caption_attributes  # noqa: E402
from nextgpt.types import MediaItem  # noqa: E402


def shape_label(item: enc.Item) -> int:
    return SHAPES.index(caption_attributes(item.caption)["shape"])


class ViTShapeClassifier(nn.Module):
    """The `shapes` ImageBind model as the encoder trainer starts it, with a linear shape head on its
    vision tower's unit-vector output."""

    def __init__(self, pictures: torch.Tensor, arch: str) -> None:
        super().__init__()
        cfg = enc.EncoderTrainConfig(arch=arch)
        self.model = enc.build_initial(cfg, pictures)
        self.head = nn.Linear(cfg.embed_dim, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(enc.embed_vision(self.model, x) * 10.0)  # scaled as a logit temperature


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


def cnn_classifier() -> nn.Module:
    return nn.Sequential(
        nn.AvgPool2d(4),  # 224 -> 56 px
        nn.Conv2d(3, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, len(SHAPES)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vit", "cnn"), default="vit")
    parser.add_argument("--world", type=Path, default=Path("out/train-world/world"))
    parser.add_argument("--arch", default="shapes", help="ImageBind arch of the vit (encoder.ARCHS)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--random-colours", action="store_true")
    parser.add_argument("--fresh", type=int, default=0, help="train on N new pictures (0: the world's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    items = enc.load_items(args.world, "image")
    train_idx, held_idx = enc.split(len(items), 0.2, args.seed, "image")
    train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
    if args.fresh:
        size = int(json.loads((args.world / "world.json").read_text())["config"]["image_size"])
        rng = random.Random(f"{args.seed}:fresh")
        train, held = fresh_items(args.fresh, size, rng), fresh_items(300, size, rng)
    novel = enc.novel_items(args.world, 4, args.seed)
    classifier = (
        ViTShapeClassifier(torch.cat([it.inputs for it in train[:64]]), args.arch)
        if args.model == "vit"
        else cnn_classifier()
    )
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def accuracy(group: list[enc.Item]) -> float:
        x = torch.cat([it.inputs for it in group])
        labels = torch.tensor([shape_label(it) for it in group])
        return float((classifier(x).argmax(-1) == labels).float().mean())

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        pick = torch.randperm(len(train), generator=gen)[: args.batch].tolist()
        batch = [enc.augment("image", train[i], gen, True, free=args.random_colours) for i in pick]
        x = torch.cat([it.inputs for it in batch])
        loss = F.cross_entropy(classifier(x), torch.tensor([shape_label(it) for it in batch]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.steps:
            print(
                f"{args.model} step {step}: loss {loss.item():.3f}, shape right on training "
                f"{accuracy(train):.0%}, held-out {accuracy(held):.0%}, novel {accuracy(novel):.0%} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
