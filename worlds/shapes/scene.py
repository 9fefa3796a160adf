"""Procedural renderer of shapes-world images: flat coloured circles, squares and triangles on light grey.

Why hard edges and a tiny palette: the reward must be *exact* on ground truth so that every reward error during RL
comes from the generator, not from the judge. Each pixel is coloured by testing its centre against the shape
(no anti-aliasing), so a rendered object is a clean blob of a single palette colour whose bounding box is exactly
its nominal ``size x size`` box, and the detector (:mod:`worlds.shapes.detector`) recovers it perfectly.

Geometry: an object's nominal box is ``[x0, x0 + size) x [y0, y0 + size)`` with integer ``x0, y0``; ``cx, cy`` are
the box centre (``x0 + size / 2``), in pixel coordinates where pixel ``(row i, column j)`` covers
``[j, j + 1) x [i, i + 1)``. All objects of a scene lie fully inside the image and are separated by at least
``MIN_GAP`` background pixels, so different objects never touch, even if they share a colour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# GenEval colour names; RGB values chosen far apart (the closest pair, orange/yellow, is ~80 apart in RGB) and far
# from the background, so nearest-colour segmentation is unambiguous even for slightly-off generated colours.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (150, 60, 190),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (215, 215, 215)
MIN_GAP = 2
# Object side lengths (inclusive ranges): smaller objects when a scene holds 3-4 of them, so they fit.
SIZES_FEW = (8, 12)
SIZES_MANY = (7, 9)
MAX_OBJECTS = 4


@dataclass(frozen=True)
class SceneObject:
    """One shape. ``cx, cy``: centre of its nominal box (``x0 + size / 2`` with integer ``x0``); ``size``: side
    in px."""

    shape: str
    color: str
    cx: float
    cy: float
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Nominal (and rendered) box ``(x1, y1, x2, y2)``, x2/y2 exclusive, in pixels."""
        x0, y0 = int(round(self.cx - self.size / 2)), int(round(self.cy - self.size / 2))
        return x0, y0, x0 + self.size, y0 + self.size


@dataclass
class Scene:
    """What an image shows: a list of objects on the background, image ``height x width`` pixels."""

    objects: list[SceneObject] = field(default_factory=list)
    height: int = IMAGE_SIZE
    width: int = IMAGE_SIZE


def shape_template(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of ``shape`` inscribed in a ``width x height`` box (pixel-centre test).

    The renderer uses it for square boxes; the detector compares blobs with it in their own (maybe non-square)
    box. Every comparison is exact in floating point (all terms are multiples of 0.25), so detector and renderer
    agree to the pixel. The triangle points up, apex on the top edge, base on the bottom edge: pixel row ``y``
    (centre height ``y + 0.5`` below the top) keeps pixels within ``(y + 0.5) / 2`` (scaled by width / height) of
    the vertical axis -- the exact triangle sampled at the row's centre -- but at least 0.5, so an even width gets a
    2-pixel apex instead of an empty top row. Its fill ratio is then about 0.50-0.53 at 7-12 px.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")
    x = np.arange(width)[None, :] + 0.5 - width / 2  # offset of pixel centres from the box's vertical axis
    y = np.arange(height)[:, None] + 0.5  # depth of pixel centres below the box's top edge
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":  # ellipse inscribed in the box; a disc of diameter `size` for a square box
        return (x * height) ** 2 + ((y - height / 2) * width) ** 2 <= (width * height / 2) ** 2
    return np.abs(x) * height <= np.maximum(y * width / 2, 0.5 * height)


def object_mask(obj: SceneObject, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean ``[height, width]`` mask of the image pixels covered by ``obj`` (its template placed in its box)."""
    x1, y1, x2, y2 = obj.box
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ValueError(f"{obj} does not fit in a {width} x {height} image")
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = shape_template(obj.shape, obj.size, obj.size)
    return mask


def render(scene: Scene) -> np.ndarray:
    """Draw ``scene`` as a ``[H, W, 3]`` uint8 RGB image (hard edges, no anti-aliasing)."""
    image = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in scene.objects:
        if obj.color not in PALETTE:
            raise ValueError(f"unknown colour {obj.color!r}; colours are {COLORS}")
        image[object_mask(obj, scene.height, scene.width)] = PALETTE[obj.color]
    return image


def size_range(n_objects: int) -> tuple[int, int]:
    """Inclusive range of object sizes for a scene of ``n_objects`` objects."""
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"a shapes-world scene holds 1..{MAX_OBJECTS} objects, not {n_objects}")
    return SIZES_FEW if n_objects <= 2 else SIZES_MANY


def boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = MIN_GAP) -> bool:
    """True when at least ``gap`` background pixels separate boxes ``a`` and ``b`` along x or along y."""
    return b[0] - a[2] >= gap or a[0] - b[2] >= gap or b[1] - a[3] >= gap or a[1] - b[3] >= gap


def place_objects(
    items: list[tuple[str, str]],
    rng: np.random.Generator,
    accept: Callable[[list[SceneObject]], bool] | None = None,
    max_tries: int = 5000,
) -> Scene:
    """Random scene holding one object per ``(shape, colour)`` in ``items``, non-overlapping and inside the image.

    ``accept`` (optional) rejects layouts that break a constraint (e.g. a position relation); the layout is then
    resampled. Raises ``RuntimeError`` if no layout is accepted within ``max_tries`` attempts.
    """
    lo, hi = size_range(len(items))
    for _ in range(max_tries):
        objects: list[SceneObject] = []
        for shape, color in items:
            size = int(rng.integers(lo, hi + 1))
            x0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
            y0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
            obj = SceneObject(shape, color, x0 + size / 2, y0 + size / 2, size)
            if not all(boxes_apart(obj.box, other.box) for other in objects):
                break
            objects.append(obj)
        if len(objects) == len(items) and (accept is None or accept(objects)):
            return Scene(objects)
    raise RuntimeError(f"could not place {items} in {max_tries} tries")
