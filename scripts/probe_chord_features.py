"""Can major and minor chords be told apart from what ImageBind's audio front end sees? (issue 12)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_chord_features.py
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_chord_features.py --partials 1 3 6 --roots 200 400

Renders fresh chords with the world's recipe (three notes: root, third, fifth; each note with
`--partials` harmonics at 1/k), computes the served encoder's 128-bin kaldi fbank
(`encoders.preprocess.kaldi_fbank`, 25 ms Hann windows), averages it over time and fits a logistic
probe (major vs minor) on `--train` chords of each kind; prints its accuracy on `--test` others. The
probe is linear and sees no time structure, so it is a lower bound on what the encoder's tower can
read. With pure notes (1 partial) at the world's roots (200-400 Hz) it is near chance (56%): the thirds
are 14-28 Hz apart, under one 31 Hz bin. World version 10 gives each note six partials (98%).
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nextgpt.encoders.preprocess import AUDIO_SAMPLE_RATE, kaldi_fbank  # noqa: E402


def chord(major: bool, partials: int, roots: tuple[float, float], rng: random.Random) -> torch.Tensor:
    """A 2 s chord as the world draws one (`world_media.render_audio`), with `partials` harmonics."""
    t = np.arange(2 * AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE
    root = rng.uniform(*roots)
    notes = (1.0, 2 ** ((4 if major else 3) / 12), 2 ** (7 / 12))
    wave = sum(np.sin(2 * np.pi * root * n * k * t) / k for n in notes for k in range(1, partials + 1))
    wave = wave / np.abs(wave).max() * rng.uniform(0.3, 0.8)
    return torch.tensor(wave, dtype=torch.float32)


def features(count: int, partials: int, roots: tuple[float, float], rng: random.Random):
    """(2 x count, 128) time-averaged fbanks, major first, and their labels (1: major)."""
    x = torch.stack(
        [
            kaldi_fbank(chord(major, partials, roots, rng), AUDIO_SAMPLE_RATE).mean(0)
            for major in (True, False)
            for _ in range(count)
        ]
    )
    return x, torch.tensor([1.0] * count + [0.0] * count)


def probe_accuracy(partials: int, roots: tuple[float, float], train: int, test: int, seed: int) -> float:
    rng = random.Random(seed)
    x, y = features(train, partials, roots, rng)
    xt, yt = features(test, partials, roots, rng)
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(800):
        optimizer.zero_grad()
        logits = (x - mean) / std @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((((xt - mean) / std @ w + b > 0).float() == yt).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partials", type=int, nargs="+", default=[1, 3, 6], help="harmonics per note")
    parser.add_argument("--roots", type=float, nargs=2, default=[200.0, 400.0], help="root range in Hz")
    parser.add_argument("--train", type=int, default=64, help="chords of each kind to fit the probe on")
    parser.add_argument("--test", type=int, default=100, help="fresh chords of each kind to score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for partials in args.partials:
        accuracy = probe_accuracy(partials, tuple(args.roots), args.train, args.test, args.seed)
        print(f"partials {partials}, roots {args.roots[0]:.0f}-{args.roots[1]:.0f} Hz: probe {accuracy:.0%}")


if __name__ == "__main__":
    main()
