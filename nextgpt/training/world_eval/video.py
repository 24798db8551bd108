"""What a video of the shapes world shows: the shape's colour and shape (as in a picture, pooled over the
frames) and where it moves, from the track of the foreground's centroid.

The direction is the axis along which a least-squares line through the centroids moves most, with the
sign of that motion; its score is the share of the motion along that axis, zero when the shape moves
less than MIN_TRAVEL of the frame (a still shape, or noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nextgpt.training.data.world_media import BACKGROUNDS
from nextgpt.training.world_eval.image import (
    MIN_FOREGROUND,
    UNKNOWN,
    ShapeGeometry,
    border_pixels,
    check_image,
    classify_geometry,
    core_pixels,
    foreground_mask,
    measure,
    nearest_colour,
    rough_mask,
    shape_colour,
)

FITTED_FRAMES = 4
"""Frames (at most, evenly spread) from which the colour is taken and in which the shapes are fitted."""
MIN_TRAVEL = 0.1
"""Fraction of the frame's side the centroid must travel over the clip to count as moving (world: >= 0.5)."""


@dataclass
class VideoReading:
    """A video's attributes; each score is in [0, 1], 0 when the label is UNKNOWN."""

    colour: str
    shape: str
    direction: str
    colour_score: float
    shape_score: float
    direction_score: float
    track: list[tuple[float, float]] = field(default_factory=list)
    """(x, y) centroid per frame in which a shape was found, in pixels."""

    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape, "direction": self.direction}


def direction_of(track: list[tuple[float, float]], times: list[float], side: int) -> tuple[str, float]:
    """left/right/up/down from centroids at `times` (frame indices), and the share of the motion along
    that axis; UNKNOWN when fewer than two points or the travel is below MIN_TRAVEL * side."""
    if len(track) < 2:
        return UNKNOWN, 0.0
    xy = np.asarray(track, dtype=np.float64)  # (K, 2)
    t = np.asarray(times, dtype=np.float64)
    span = t.max() - t.min()
    slope = np.polyfit(t, xy, 1)[0] * span  # (2,) travel in pixels over the clip, x then y
    travel = np.abs(slope)
    if travel.max() < MIN_TRAVEL * side:
        return UNKNOWN, 0.0
    axis = int(np.argmax(travel))
    names = ("left", "right") if axis == 0 else ("up", "down")  # image y grows downwards
    return names[int(slope[axis] > 0)], float(travel[axis] / travel.sum())


def _cores(pixels: list[np.ndarray], backgrounds: list[np.ndarray], frames: range) -> dict[int, np.ndarray]:
    """Frame index -> (N, 3) pixels of the shape's core, for the `frames` in which a shape stands out."""
    masks = {i: rough_mask(pixels[i], backgrounds[i]) for i in frames}
    return {i: core_pixels(pixels[i], m) for i, m in masks.items() if m.sum() >= MIN_FOREGROUND}


def classify_video(frames: np.ndarray) -> VideoReading:
    """Colour, shape and motion direction of a world video (T, H, W, 3); UNKNOWN where it cannot tell."""
    unknown = VideoReading(UNKNOWN, UNKNOWN, UNKNOWN, 0.0, 0.0, 0.0)
    try:
        array = np.asarray(frames)
    except ValueError:  # frames of different sizes
        return unknown
    pixels = [p for p in (check_image(f) for f in array) if p is not None] if array.ndim == 4 else []
    if not pixels:
        return unknown
    # 1. per frame: its background; in FITTED_FRAMES frames spread over the clip (all frames when none
    #    of those shows a shape), the pixels of the shape's core.
    backgrounds = [np.median(border_pixels(p), axis=0) for p in pixels]
    step = max(1, math.ceil(len(pixels) / FITTED_FRAMES))
    cores = _cores(pixels, backgrounds, range(0, len(pixels), step)) or _cores(
        pixels, backgrounds, range(len(pixels))
    )
    if not cores:
        return unknown
    # 2. one colour for the clip: the median of those cores, less the background's tint.
    rgb = np.median(np.concatenate(list(cores.values())), axis=0)
    background_rgb = np.median(backgrounds, axis=0)
    colour, colour_score = shape_colour(rgb, background_rgb, nearest_colour(background_rgb, BACKGROUNDS)[0])
    # 3. per frame: the mask cut halfway to that colour and its centroid; in the frames of step 1 also
    #    how well each shape fits (the shape does not change, and fitting costs most).
    geometries: list[ShapeGeometry] = []
    times: list[float] = []
    for i, (p, bg) in enumerate(zip(pixels, backgrounds, strict=True)):
        geometry = measure(foreground_mask(p, bg, rgb), fit=i in cores)
        if geometry is not None:
            geometries.append(geometry)
            times.append(float(i))
    fits = [g.overlap for g in geometries if g.overlap]
    if not fits:
        return VideoReading(colour, UNKNOWN, UNKNOWN, colour_score, 0.0, 0.0)
    # 4. the shape whose template fits best on average; the direction from the centroid track.
    pooled = ShapeGeometry(
        area=int(np.median([g.area for g in geometries])),
        centroid=geometries[0].centroid,
        overlap={s: float(np.mean([f[s] for f in fits])) for s in fits[0]},
    )
    shape, shape_score = classify_geometry(pooled)
    track = [g.centroid for g in geometries]
    direction, direction_score = direction_of(track, times, min(pixels[0].shape[:2]))
    return VideoReading(colour, shape, direction, colour_score, shape_score, direction_score, track)
