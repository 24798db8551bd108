"""What a picture of the shapes world shows, read from pixel statistics alone (no learned model).

- background: the median of the outermost pixels (a world shape never touches them), nearest in
  `BACKGROUNDS`;
- shape colour: the median of the foreground's core (pixels far from the background by Otsu's cut, then
  eroded, so blurred edges that mix with the background do not count), less the tint the background
  shows, nearest in `COLOURS`;
- shape: the foreground is cut again halfway between the background and the shape colour (a blurred
  edge is cut where the sharp edge was), and each world shape, drawn by the world's own `draw_shape` at
  the mask's centroid with the radius its area gives, is laid over it: the best intersection over union
  wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nextgpt.media.encode import to_uint8
from nextgpt.training.data.world_media import BACKGROUNDS, COLOURS, draw_shape

UNKNOWN = "unknown"
MIN_FOREGROUND = 12
"""Pixels below which nothing is read as a shape (the world's smallest, a star of radius 7.7 px, has ~80)."""
DENSE_WINDOW = 7
"""Side of the square in which a mask is densest, where its main part is grown from (see `main_part`)."""
MIN_OVERLAP = 0.5
"""Intersection over union with the best template below which the shape is UNKNOWN."""
MIN_LEAD = 0.1
"""Lead of the best template over the second at which the shape score reaches 1."""


@dataclass
class ShapeGeometry:
    """Measurements of a foreground mask."""

    area: int
    """Foreground pixels."""
    centroid: tuple[float, float]
    """(x, y) in pixels."""
    overlap: dict[str, float]
    """Per shape, intersection over union of the mask and the shape's best-fitting template."""


@dataclass
class ImageReading:
    """An image's attributes; each score is in [0, 1], 0 when the label is UNKNOWN."""

    background: str
    colour: str
    shape: str
    background_score: float
    colour_score: float
    shape_score: float
    geometry: ShapeGeometry | None = None

    def attributes(self) -> dict[str, str]:
        return {"background": self.background, "colour": self.colour, "shape": self.shape}


def nearest_colour(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    """The palette name nearest to `rgb` (3,) and a margin score: 1 - nearest / second nearest distance."""
    names = list(palette)
    dist = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    order = np.argsort(dist)
    margin = 1.0 - dist[order[0]] / max(float(dist[order[1]]), 1e-9)
    return names[int(order[0])], float(margin)


def shape_colour(rgb: np.ndarray, background_rgb: np.ndarray, background: str) -> tuple[str, float]:
    """The palette colour of a shape's median `rgb`, after removing the cast the background shows (its
    measured colour minus its palette colour): a tint over the whole picture, common in generated
    images, moves yellow towards orange otherwise (80 levels apart)."""
    cast = background_rgb - np.asarray(BACKGROUNDS[background], dtype=np.float64)
    return nearest_colour(rgb - cast, COLOURS)


def border_pixels(image: np.ndarray) -> np.ndarray:
    """(N, 3) float: the outermost pixels of an (H, W, 3) image (a world shape may reach the second row)."""
    ring = np.ones(image.shape[:2], dtype=bool)
    ring[1:-1, 1:-1] = False
    return image[ring].astype(np.float64)


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """The cut of `values` that maximises the between-class variance (Otsu's method)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)  # pixels at or below each cut
    total = weight[-1]
    mean_below = np.cumsum(hist * centres) / np.maximum(weight, 1)
    mean_above = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(total - weight, 1)
    between = weight * (total - weight) * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """For each pixel, how many of its 3x3 neighbourhood (itself included) are set; outside counts unset."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.int16)
    padded[1:-1, 1:-1] = mask
    across = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]  # (H+2, W)
    return across[:-2] + across[1:-1] + across[2:]


def rough_mask(image: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels far from the background colour, speckles removed by a 3x3 majority vote."""
    dist = np.linalg.norm(image.astype(np.float64) - background_rgb, axis=-1)  # (H, W)
    # Otsu alone would split the background's noise when there is no shape; the cut stays above the
    # border's own spread (2.5 median distances is the 99th percentile of Gaussian noise in RGB), and
    # above the 20 levels of colour a codec leaves near an edge.
    noise = 2.5 * float(np.median(np.linalg.norm(border_pixels(image) - background_rgb, axis=1)))
    mask = dist > max(otsu_threshold(dist), noise, 20.0)
    return _neighbours(mask) >= 5


def foreground_mask(image: np.ndarray, background_rgb: np.ndarray, shape_rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels nearer the shape's colour than the background's along the line between them.
    A blurred edge is then cut at its middle, where the sharp edge was, so blur keeps the geometry."""
    axis = shape_rgb - background_rgb
    length = float(np.dot(axis, axis))
    if length < 1e-6:
        return np.zeros(image.shape[:2], dtype=bool)
    along = (image.astype(np.float64) - background_rgb) @ axis / length  # (H, W), 0 = bg, 1 = shape
    return main_part(_neighbours(along > 0.5) >= 5)


def main_part(mask: np.ndarray) -> np.ndarray:
    """The part of `mask` connected (8-neighbours) to its densest DENSE_WINDOW square: a world picture
    has one shape, so specks and smudges elsewhere (common in generated pictures) are dropped. Grown
    from that window one ring of pixels at a time (as many steps as the shape is wide)."""
    if not mask.any():
        return mask
    k = min(DENSE_WINDOW, *mask.shape)
    integral = np.pad(mask.astype(np.int32), ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)  # (H+1, W+1)
    density = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]  # (H-k+1, W-k+1)
    y, x = np.unravel_index(int(np.argmax(density)), density.shape)
    part = np.zeros_like(mask)
    part[y : y + k, x : x + k] = mask[y : y + k, x : x + k]
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=bool)
    count = int(part.sum())
    while True:
        padded[1:-1, 1:-1] = part
        across = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]  # (H+2, W): grown along x
        part = (across[:-2] | across[1:-1] | across[2:]) & mask  # (H, W): and along y
        if int(part.sum()) == count:
            return part
        count = int(part.sum())


AREA_PER_R2 = {
    "circle": math.pi,
    "square": (2 * 0.85) ** 2,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 10 * 0.5 * 0.45 * math.sin(math.radians(36)),
}
"""Area of each world shape over the square of its outer radius r (see `synthetic.draw_shape`)."""
MAX_STRETCH = 1.15
"""Ratio of a mask's spread in x and y above which it is taken to be stretched (see `isotropic`)."""
SCALES = (0.93, 1.0, 1.07)
"""Radii tried around the one the area gives: rasterisation, blur and codecs move the area a little."""


def overlap(mask: np.ndarray, shape: str, cx: float, cy: float, r: float) -> float:
    """Intersection over union of `mask` and the world's own drawing of `shape` centred at (cx, cy)
    with outer radius r. The drawing covers only a window around the centre (cheap for small shapes),
    cut where it passes the mask's edges."""
    half = math.ceil(r) + 2
    x0, y0 = math.floor(cx) - half, math.floor(cy) - half
    canvas = Image.new("RGB", (2 * half + 1, 2 * half + 1), (0, 0, 0))
    draw_shape(canvas, shape, "red", cx - x0, cy - y0, r)
    drawn = np.asarray(canvas)[..., 0] > 0  # (2 half + 1, 2 half + 1)
    h, w = mask.shape
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(h, y0 + drawn.shape[0]), min(w, x0 + drawn.shape[1])
    inside = drawn[top - y0 : bottom - y0, left - x0 : right - x0]
    both = int((inside & mask[top:bottom, left:right]).sum())
    return both / max(1, int(drawn.sum()) + int(mask.sum()) - both)


def measure(mask: np.ndarray, fit: bool = True) -> ShapeGeometry | None:
    """How well each world shape overlaps the mask (only area and centroid when not `fit`), or None
    when it has fewer than MIN_FOREGROUND pixels.

    Every world shape is centred on its centroid (the triangle is equilateral, the star five-fold
    symmetric) and keeps its orientation, so one template per shape, placed at the mask's centroid and
    sized from its area, is enough; the best of a few radii counts."""
    area = int(mask.sum())
    if area < MIN_FOREGROUND:
        return None
    ys, xs = np.nonzero(mask)
    # Pixel (x, y) covers [x, x + 1): PIL places a shape's coordinates on that same grid.
    centroid = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
    if not fit:
        return ShapeGeometry(area=area, centroid=centroid, overlap={})
    square = isotropic(mask, float(xs.std()), float(ys.std()))
    ys, xs = np.nonzero(square)
    n, cx, cy = len(xs), float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    fits = {
        shape: max(overlap(square, shape, cx, cy, math.sqrt(n / per_r2) * scale) for scale in SCALES)
        for shape, per_r2 in AREA_PER_R2.items()
    }
    return ShapeGeometry(area=area, centroid=centroid, overlap=fits)


def isotropic(mask: np.ndarray, std_x: float, std_y: float) -> np.ndarray:
    """`mask` stretched along its narrower axis until its spread is the same in x and y (when it differs
    by more than MAX_STRETCH). Every world shape has the same second moment in every direction (a
    circle, a square, an equilateral triangle, a regular star), so this undoes a picture's stretch, as
    when a square frame is decoded at 576 x 320, without changing an unstretched shape."""
    if min(std_x, std_y) <= 0 or abs(math.log(std_y / std_x)) < math.log(MAX_STRETCH):
        return mask
    h, w = mask.shape
    size = (round(w * std_y / std_x), h) if std_y > std_x else (w, round(h * std_x / std_y))
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image) >= 128


def classify_geometry(geometry: ShapeGeometry | None) -> tuple[str, float]:
    """The shape whose template overlaps best, and a score: its lead over the second best, relative to
    MIN_LEAD (clipped to [0, 1])."""
    if geometry is None:
        return UNKNOWN, 0.0
    ranked = sorted(geometry.overlap.items(), key=lambda item: item[1], reverse=True)
    (shape, best), (_, second) = ranked[0], ranked[1]
    if best < MIN_OVERLAP:
        return UNKNOWN, 0.0
    return shape, float(min(1.0, (best - second) / MIN_LEAD))


def core_pixels(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 3) float: the pixels of the mask's core, those whose whole 3x3 neighbourhood is foreground
    (the whole mask when the core has fewer than 4 pixels)."""
    core = _neighbours(mask) == 9
    return image[core if core.sum() >= 4 else mask].astype(np.float64)


def check_image(image: np.ndarray) -> np.ndarray | None:
    """`image` as (H, W, 3) uint8 (float is read as [0, 1] like `to_uint8`, other integers are clipped to
    0-255, grey is repeated, alpha is dropped), or None when it cannot be one (wrong rank or dtype,
    fewer than 8 pixels a side, not finite)."""
    try:
        array = np.asarray(image)
    except ValueError:  # ragged
        return None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 8:
        return None
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.floating):
        return to_uint8(array) if np.isfinite(array).all() else None
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.clip(array, 0, 255).astype(np.uint8)
    return None


def classify_image(image: np.ndarray) -> ImageReading:
    """Background, shape colour and shape of a world picture (H, W, 3); UNKNOWN where it cannot tell."""
    pixels = check_image(image)
    if pixels is None:
        return ImageReading(UNKNOWN, UNKNOWN, UNKNOWN, 0.0, 0.0, 0.0)
    background_rgb = np.median(border_pixels(pixels), axis=0)
    background, background_score = nearest_colour(background_rgb, BACKGROUNDS)
    rough = rough_mask(pixels, background_rgb)
    if rough.sum() < MIN_FOREGROUND:
        return ImageReading(background, UNKNOWN, UNKNOWN, background_score, 0.0, 0.0)
    rgb = np.median(core_pixels(pixels, rough), axis=0)
    colour, colour_score = shape_colour(rgb, background_rgb, background)
    geometry = measure(foreground_mask(pixels, background_rgb, rgb))
    shape, shape_score = classify_geometry(geometry)
    return ImageReading(background, colour, shape, background_score, colour_score, shape_score, geometry)
