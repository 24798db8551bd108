"""Builds the tiny profile's random ImageBind: the real model class at tiny widths, saved as a plain state
dict exactly like `imagebind_huge.pth`, so that the real loading path is what the tests exercise."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nextgpt import tiny_profile as dims
from nextgpt.encoders.imagebind import build_model

logger = logging.getLogger(__name__)

FILENAME = "imagebind_tiny.pth"


def build_tiny_imagebind(out_dir: Path, seed: int = dims.SEED) -> Path:
    """Write `out_dir/imagebind_tiny.pth`; the same seed always gives identical tensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = build_model("tiny")
    # contiguous clones: no shared storage, so the file holds exactly these tensors
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path = out_dir / FILENAME
    torch.save(state, path)
    logger.info("wrote tiny ImageBind (%d tensors, seed %d) to %s", len(state), seed, path)
    return path
