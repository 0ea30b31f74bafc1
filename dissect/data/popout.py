"""Procedural pop-out search arrays with exact target masks (He et al. 2019, §7).

Each array is a grid of items (with seeded jitter) on a plain background; exactly ONE item, the
target, differs from all the distractors along one feature dimension. Conjunction arrays are
controls: the target is defined by a combination of two features, each of which it shares with
half of the distractors, so no single feature map singles it out.

Conventions
-----------
* Image: ``uint8 (H, W, 3)`` RGB, default 600×800 (H×W, the size of the OSIE stimuli, so every
  model sees pop-out arrays at the size of its natural images), background black ``(0, 0, 0)``.
  Black is the classic search-display background (Itti & Koch 2000; Treisman & Gelade 1980): every
  item has positive contrast to it, so a luminance singleton has the strongest contrast and an
  intensity channel cannot confuse polarities.
* Coordinates: pixel ``(row, col)`` has centre ``(x=col, y=row)``, 0-based, x right, y down, as for
  fixations. Angles are in degrees, counter-clockwise on screen (direction ``(cos θ, −sin θ)``).
* Rendering is anti-aliasing free, in numpy: a pixel belongs to an item when its centre satisfies
  the item's implicit inequalities (disk, half-planes, annulus…). Every length and centre is
  quantised to 1/16 px and every direction cosine to 2⁻³⁰ (sin/cos are evaluated once per item,
  then quantised), so each inside/outside test is a handful of IEEE-754 float64 multiplications
  and additions of dyadic numbers, one numpy ufunc each (exact for the linear tests, correctly
  rounded otherwise): the rendering does not depend on the platform, on fonts, on OpenCV or on
  the global RNG state, and regeneration is bit-identical (the seeded draws use numpy's
  ``Generator``, stable for a given numpy version).
* Mask: the target's support, i.e. exactly the pixels painted with the target (which all differ
  from the background). Items stay inside their own grid cell, at least ``margin`` px from its
  border, so items never touch each other nor the image border.
* Randomness: ``numpy.random.default_rng(seed)`` (PCG64) drives the target cell, the jitter and
  the nuisance features (base hue, base orientation, rotations…); nothing else is random.

Dimensions (``DIMENSIONS``) and their feature-difference parameters (defaults):

===================== ========================================================================
``colour``            disks; colours on an iso-intensity circle of the RG/BY opponent plane
                      (mean of R, G, B = 128, chroma 150); target hue = base hue + ``hue_delta``
                      (120°).
``orientation``       bars (1.25 ``item_size`` × ``bar_width``); target angle = base +
                      ``angle_delta`` (90°).
``size``              disks; target diameter = ``size_ratio`` (1.8) × distractor diameter.
``shape``             area-matched shapes: ``target_shape`` ("square") among
                      ``distractor_shape`` ("disk"); also "triangle", "diamond".
``curvature``         a circular arc (sagitta = ``curvature`` (0.25) × chord) among straight bars
                      of the same chord length, width and orientation.
``luminance``         grey disks: distractors ``distractor_level`` (96), target ``target_level``
                      (255).
``density``           clusters of ``n_dots`` (6) small dots; the target's dots are packed into a
                      disk ``spread_ratio`` (0.45) times the distractors' (same count, same ink:
                      grouping/density only).
``closure``           a closed ring among rings with a gap of ``gap`` (0.35) × outer diameter
                      (C shapes, random gap directions).
``intersection``      a "+" (two crossing strokes) among "L"s made of the same two strokes meeting
                      at their ends (random multiples of 90° rotation).
``conjunction_colour_orientation``  bars in two hues × two orientations; the target's hue is
                      shared with half of the distractors, its orientation with the other half.
``conjunction_colour_size``         disks in two hues × two sizes, likewise.
===================== ========================================================================

Common parameters: ``height`` (600), ``width`` (800), ``rows`` (5), ``cols`` (7), ``n_items``
(None = every cell; otherwise a seeded subset of the cells), ``jitter`` (0.8: fraction of the free
room inside a cell over which an item's centre is drawn uniformly; 0 = perfect grid),
``item_size`` (48 px: nominal diameter/length), ``margin`` (4 px), ``background`` ((0, 0, 0)),
``item_color`` ((255, 255, 255), for the dimensions that do not set colours themselves).
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dissect.errors import DataError

__all__ = [
    "CONJUNCTIONS",
    "DIMENSIONS",
    "FEATURE_DIMENSIONS",
    "MANIFEST_COLUMNS",
    "PopoutArray",
    "default_params",
    "default_set",
    "generate_array",
    "load_set",
    "write_set",
]

FEATURE_DIMENSIONS: tuple[str, ...] = (
    "colour",
    "orientation",
    "size",
    "shape",
    "curvature",
    "luminance",
    "density",
    "closure",
    "intersection",
)
CONJUNCTIONS: tuple[str, ...] = ("conjunction_colour_orientation", "conjunction_colour_size")
DIMENSIONS: tuple[str, ...] = FEATURE_DIMENSIONS + CONJUNCTIONS

SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "diamond")

_COMMON: dict[str, Any] = {
    "height": 600,
    "width": 800,
    "rows": 5,
    "cols": 7,
    "n_items": None,
    "jitter": 0.8,
    "item_size": 48.0,
    "margin": 4,
    "background": [0, 0, 0],
    "item_color": [255, 255, 255],
}
_SPECIFIC: dict[str, dict[str, Any]] = {
    "colour": {"hue_delta": 120.0, "chroma": 150.0},
    "orientation": {"angle_delta": 90.0, "bar_width": 12.0},
    "size": {"size_ratio": 1.8},
    "shape": {"target_shape": "square", "distractor_shape": "disk"},
    "curvature": {"curvature": 0.25, "bar_width": 10.0},
    "luminance": {"distractor_level": 96, "target_level": 255},
    "density": {"n_dots": 6, "dot_radius": 2.5, "spread_ratio": 0.45, "dot_gap": 2.0},
    "closure": {"gap": 0.35, "stroke": 8.0},
    "intersection": {"stroke": 8.0},
    "conjunction_colour_orientation": {
        "hue_delta": 120.0,
        "chroma": 150.0,
        "angle_delta": 90.0,
        "bar_width": 12.0,
    },
    "conjunction_colour_size": {"hue_delta": 120.0, "chroma": 150.0, "size_ratio": 1.8},
}
# the parameter that carries each dimension's feature difference (None: categorical; the
# luminance difference is target_level - distractor_level)
_MAGNITUDE: dict[str, str | None] = {
    "colour": "hue_delta",
    "orientation": "angle_delta",
    "size": "size_ratio",
    "shape": None,
    "curvature": "curvature",
    "luminance": "level_difference",
    "density": "spread_ratio",
    "closure": "gap",
    "intersection": None,
    "conjunction_colour_orientation": None,
    "conjunction_colour_size": None,
}

MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "dimension",
    "seed",
    "height",
    "width",
    "cx",
    "cy",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "target_row",
    "target_col",
    "n_items",
    "mask_pixels",
    "magnitude_name",
    "magnitude",
    "image",
    "mask",
    "params",
    "items",
)

_Q = 16.0  # lengths and centres are multiples of 1/16 px
_QDIR = float(2**30)  # direction cosines are multiples of 2**-30


def _q(v: float) -> float:
    return round(v * _Q) / _Q


def _qdir(angle_deg: float) -> tuple[float, float]:
    """Quantised (cos, sin) of an on-screen angle, as an (x, y-down) direction."""
    a = math.radians(angle_deg)
    return round(math.cos(a) * _QDIR) / _QDIR, round(-math.sin(a) * _QDIR) / _QDIR


@dataclass(frozen=True, eq=False)
class PopoutArray:
    """One search array: ``image`` uint8 (H, W, 3) RGB, ``mask`` bool (H, W) = the target's pixels,
    ``meta`` JSON-native dict (id, dimension, seed, target centre/bbox, parameters, items)."""

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def dimension(self) -> str:
        return str(self.meta["dimension"])


# ------------------------------------------------------------------------------------------------
# geometry: every shape is a predicate on local offsets (dx, dy) from the item centre


@dataclass(frozen=True)
class _Shape:
    kind: str
    p: dict[str, Any]
    radius: float  # bounding radius: every pixel of the shape lies within it of the centre


def _frame(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) the direction ``angle``; exact (see module doc)."""
    c, s = _qdir(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _inside(shape: _Shape, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    k, p = shape.kind, shape.p
    if k == "disk":
        return dx * dx + dy * dy <= p["r"] ** 2
    if k == "rect":
        u, v = _frame(dx, dy, p["angle"])
        return (np.abs(u) <= p["hl"]) & (np.abs(v) <= p["hw"])
    if k == "polygon":  # regular polygon: n half-planes at distance `apothem`
        out = np.ones(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
        for i in range(p["n"]):
            u, _ = _frame(dx, dy, p["angle"] + 360.0 * i / p["n"])
            out &= u <= p["apothem"]
        return out
    if k == "ring":
        d2 = dx * dx + dy * dy
        ring = (d2 <= p["r_out"] ** 2) & (d2 >= p["r_in"] ** 2)
        if p.get("gap_hw", 0.0) > 0:
            u, v = _frame(dx, dy, p["angle"])
            ring &= ~((u >= 0) & (np.abs(v) <= p["gap_hw"]))
        return ring
    if k == "arc":  # stroke along a circular arc, chord along u at v = -h/2, apex at v = +h/2
        u, v = _frame(dx, dy, p["angle"])
        v = v * p["side"]
        oy = p["oy"]
        d2 = u * u + (v - oy) ** 2
        return (d2 <= (p["R"] + p["hw"]) ** 2) & (d2 >= (p["R"] - p["hw"]) ** 2) & (v >= -p["h2"])
    if k == "plus":
        u, v = _frame(dx, dy, p["angle"])
        a = (np.abs(u) <= p["hl"]) & (np.abs(v) <= p["hw"])
        b = (np.abs(v) <= p["hl"]) & (np.abs(u) <= p["hw"])
        return a | b
    if k == "ell":  # two strokes of length 2*hl meeting at a corner at (-hl, -hl) of the frame
        u, v = _frame(dx, dy, p["angle"])
        w = 2 * p["hw"]
        inbox = (np.abs(u) <= p["hl"]) & (np.abs(v) <= p["hl"])
        return inbox & ((v <= -p["hl"] + w) | (u <= -p["hl"] + w))
    if k == "dots":
        out = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
        for ox, oy in p["offsets"]:
            ex, ey = dx - ox, dy - oy
            out |= ex * ex + ey * ey <= p["r"] ** 2
        return out
    raise AssertionError(k)


def _disk(d: float) -> _Shape:
    r = _q(d / 2)
    return _Shape("disk", {"r": r}, r)


def _bar(length: float, width: float, angle: float) -> _Shape:
    hl, hw = _q(length / 2), _q(width / 2)
    return _Shape("rect", {"hl": hl, "hw": hw, "angle": angle}, math.hypot(hl, hw))


def _area_matched(kind: str, d: float, angle: float = 0.0) -> _Shape:
    """Shapes of the area of a disk of diameter ``d``."""
    area = math.pi * (d / 2) ** 2
    if kind == "disk":
        return _disk(d)
    if kind == "square":
        h = _q(math.sqrt(area) / 2)
        return _Shape("rect", {"hl": h, "hw": h, "angle": angle}, h * math.sqrt(2))
    if kind == "diamond":
        h = _q(math.sqrt(area) / 2)
        return _Shape("rect", {"hl": h, "hw": h, "angle": angle + 45.0}, h * math.sqrt(2))
    if kind == "triangle":  # equilateral, area = 3*sqrt(3)*a^2 with apothem a
        a = _q(math.sqrt(area / (3 * math.sqrt(3))))
        return _Shape("polygon", {"n": 3, "apothem": a, "angle": angle - 90.0}, 2 * a)
    raise AssertionError(kind)


def _arc(length: float, width: float, curvature: float, angle: float, side: int) -> _Shape:
    h = curvature * length
    big_r = _q((length * length / 4 + h * h) / (2 * h))
    hw = _q(width / 2)
    h2 = _q(h / 2)
    oy = h2 - big_r  # circle centre, so that the apex sits at v = +h/2
    ue = math.sqrt(max((big_r + hw) ** 2 - (oy + h2) ** 2, 0.0))
    radius = math.hypot(ue, max(h2 + hw, h2))
    return _Shape(
        "arc", {"R": big_r, "hw": hw, "h2": h2, "oy": oy, "angle": angle, "side": side}, radius
    )


# ------------------------------------------------------------------------------------------------
# colours


def _opponent_colour(hue_deg: float, chroma: float) -> list[int]:
    """RGB on the circle of radius ``chroma`` around grey 128 in the plane orthogonal to
    (1, 1, 1): every hue has the same intensity (R+G+B)/3 ≈ 128. Hue 0 = red, 120 ≈ green,
    240 ≈ blue."""
    a = math.radians(hue_deg)
    e1 = np.array([2.0, -1.0, -1.0]) / math.sqrt(6.0)
    e2 = np.array([0.0, 1.0, -1.0]) / math.sqrt(2.0)
    rgb = 128.0 + chroma * (math.cos(a) * e1 + math.sin(a) * e2)
    return [int(v) for v in np.clip(np.floor(rgb + 0.5), 0, 255)]


# ------------------------------------------------------------------------------------------------
# parameters


def default_params(dimension: str) -> dict[str, Any]:
    """All parameters of ``dimension`` with their defaults (common + dimension-specific)."""
    if dimension not in _SPECIFIC:
        raise DataError(dimension, f"unknown pop-out dimension; known: {', '.join(DIMENSIONS)}")
    out = json.loads(json.dumps(_COMMON))
    out.update(json.loads(json.dumps(_SPECIFIC[dimension])))
    return out


def _resolve(dimension: str, seed: Any, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    src = f"popout array {dimension!r} (seed {seed!r})"
    p = default_params(dimension)
    unknown = sorted(set(params) - set(p))
    if unknown:
        raise DataError(src, f"unknown parameter(s) {unknown}; allowed: {sorted(p)}")
    p.update(params)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(src, f"seed must be a non-negative int, got {seed!r}")

    def num(name: str, lo: float, hi: float = math.inf, integer: bool = False) -> None:
        v = p[name]
        ok_type = (
            isinstance(v, int | np.integer)
            if integer
            else isinstance(v, int | float | np.integer | np.floating)
        )
        if (
            isinstance(v, bool)
            or not ok_type
            or not (lo <= float(v) <= hi)
            or not math.isfinite(float(v))
        ):
            kind = "an int" if integer else "a finite number"
            raise DataError(src, f"parameter {name}={v!r} must be {kind} in [{lo}, {hi}]")
        p[name] = int(v) if integer else float(v)

    num("height", 32, 8192, True)
    num("width", 32, 8192, True)
    num("rows", 1, 1000, True)
    num("cols", 1, 1000, True)
    num("jitter", 0.0, 1.0)
    num("item_size", 4.0, 4096.0)
    num("margin", 1, 1000, True)
    n_cells = p["rows"] * p["cols"]
    if n_cells < 2:
        raise DataError(src, "need at least 2 grid cells (one target, one distractor)")
    if p["n_items"] is not None:
        num("n_items", 2, n_cells, True)
    for name in ("background", "item_color"):
        v = p[name]
        if (
            not isinstance(v, list | tuple)
            or len(v) != 3
            or not all(isinstance(c, int | np.integer) and 0 <= c <= 255 for c in v)
        ):
            raise DataError(src, f"parameter {name}={v!r} must be 3 ints in [0, 255]")
        p[name] = [int(c) for c in v]
    for name, lo, hi in (
        ("hue_delta", 1.0, 180.0),
        ("angle_delta", 1.0, 90.0),
        ("size_ratio", 1.05, 10.0),
        ("chroma", 10.0, 155.0),
        ("curvature", 0.02, 0.5),
        ("bar_width", 1.0, 1000.0),
        ("spread_ratio", 0.05, 0.95),
        ("dot_radius", 0.5, 100.0),
        ("dot_gap", 0.0, 100.0),
        ("gap", 0.05, 0.9),
        ("stroke", 1.0, 1000.0),
    ):
        if name in p:
            num(name, lo, hi)
    for name in ("distractor_level", "target_level"):
        if name in p:
            num(name, 1, 255, True)
    if "n_dots" in p:
        num("n_dots", 1, 1000, True)
    if dimension == "luminance" and p["distractor_level"] == p["target_level"]:
        raise DataError(src, "target_level equals distractor_level: no luminance difference")
    if dimension == "shape":
        for name in ("target_shape", "distractor_shape"):
            if p[name] not in SHAPES:
                raise DataError(src, f"parameter {name}={p[name]!r} must be one of {SHAPES}")
        if p["target_shape"] == p["distractor_shape"]:
            raise DataError(src, "target_shape equals distractor_shape: no shape difference")
    return p, src


# ------------------------------------------------------------------------------------------------
# items per dimension: (shape, rgb, features) for the target and each distractor


def _dots(
    rng: np.random.Generator, n: int, spread: float, r: float, gap: float, src: str
) -> list[list[float]]:
    """``n`` dot centres uniformly in a disk of radius ``spread - r``, pairwise ≥ 2r + gap apart."""
    lim = spread - r
    need = 2 * r + gap
    for _ in range(100):
        pts: list[list[float]] = []
        for _ in range(2000):
            x, y = rng.uniform(-lim, lim, size=2)
            if x * x + y * y > lim * lim:
                continue
            x, y = _q(float(x)), _q(float(y))
            if all((x - a) ** 2 + (y - b) ** 2 >= need * need for a, b in pts):
                pts.append([x, y])
                if len(pts) == n:
                    return pts
    raise DataError(src, f"cannot place {n} dots of radius {r} in a cluster of radius {spread}")


def _items(
    dim: str, p: dict[str, Any], rng: np.random.Generator, n_dis: int, src: str
) -> tuple[list[tuple[_Shape, list[int], dict[str, Any]]], dict[str, Any]]:
    """Target first, then the distractors. Also returns the nuisance values drawn."""
    d = p["item_size"]
    white = p["item_color"]
    out: list[tuple[_Shape, list[int], dict[str, Any]]] = []
    nuis: dict[str, Any] = {}
    if dim in ("colour", "conjunction_colour_orientation", "conjunction_colour_size"):
        hue0 = float(rng.integers(0, 360))
        hues = [hue0, (hue0 + p["hue_delta"]) % 360.0]
        cols = [_opponent_colour(h, p["chroma"]) for h in hues]
        nuis["base_hue"] = hue0
    if dim in ("orientation", "curvature", "conjunction_colour_orientation", "intersection"):
        nuis["base_angle"] = theta0 = float(rng.integers(0, 180))

    if dim == "colour":
        out.append((_disk(d), cols[1], {"hue": hues[1]}))
        out += [(_disk(d), cols[0], {"hue": hues[0]})] * n_dis
    elif dim == "orientation":
        ang = [theta0, theta0 + p["angle_delta"]]
        out.append((_bar(d * 1.25, p["bar_width"], ang[1]), white, {"angle": ang[1] % 180}))
        out += [(_bar(d * 1.25, p["bar_width"], ang[0]), white, {"angle": ang[0] % 180})] * n_dis
    elif dim == "size":
        out.append((_disk(d * p["size_ratio"]), white, {"diameter": d * p["size_ratio"]}))
        out += [(_disk(d), white, {"diameter": d})] * n_dis
    elif dim == "shape":
        out.append((_area_matched(p["target_shape"], d), white, {"shape": p["target_shape"]}))
        out += [
            (_area_matched(p["distractor_shape"], d), white, {"shape": p["distractor_shape"]})
        ] * n_dis
    elif dim == "curvature":
        length = d * 1.25
        side = int(rng.choice([-1, 1]))
        nuis["arc_side"] = side
        out.append(
            (
                _arc(length, p["bar_width"], p["curvature"], theta0, side),
                white,
                {"curvature": p["curvature"]},
            )
        )
        out += [(_bar(length, p["bar_width"], theta0), white, {"curvature": 0.0})] * n_dis
    elif dim == "luminance":
        out.append((_disk(d), [p["target_level"]] * 3, {"level": p["target_level"]}))
        out += [(_disk(d), [p["distractor_level"]] * 3, {"level": p["distractor_level"]})] * n_dis
    elif dim == "density":
        spread_d = _q(d * 1.25 / 2)
        spread_t = _q(spread_d * p["spread_ratio"])
        r = _q(p["dot_radius"])
        for i in range(n_dis + 1):
            spread = spread_t if i == 0 else spread_d
            pts = _dots(rng, p["n_dots"], spread, r, p["dot_gap"], src)
            shape = _Shape("dots", {"offsets": pts, "r": r}, spread + 1.0)
            out.append((shape, white, {"spread": spread, "n_dots": p["n_dots"]}))
    elif dim == "closure":
        r_out, r_in = _q(d / 2), _q(d / 2 - p["stroke"])
        gap_hw = _q(p["gap"] * d / 2)
        out.append((_Shape("ring", {"r_out": r_out, "r_in": r_in}, r_out), white, {"closed": True}))
        for a in rng.integers(0, 360, size=n_dis):
            shape = _Shape(
                "ring", {"r_out": r_out, "r_in": r_in, "gap_hw": gap_hw, "angle": float(a)}, r_out
            )
            out.append((shape, white, {"closed": False, "gap_angle": float(a)}))
    elif dim == "intersection":
        hl, hw = _q(d * 1.1 / 2), _q(p["stroke"] / 2)
        out.append(
            (
                _Shape("plus", {"hl": hl, "hw": hw, "angle": theta0}, math.hypot(hl, hw)),
                white,
                {"junction": "cross"},
            )
        )
        for k in rng.integers(0, 4, size=n_dis):
            a = theta0 + 90.0 * int(k)
            out.append(
                (
                    _Shape("ell", {"hl": hl, "hw": hw, "angle": a}, hl * math.sqrt(2)),
                    white,
                    {"junction": "corner", "angle": a % 360},
                )
            )
    elif dim == "conjunction_colour_orientation":
        ang = [theta0, theta0 + p["angle_delta"]]
        length, w = d * 1.25, p["bar_width"]
        out.append((_bar(length, w, ang[1]), cols[1], {"hue": hues[1], "angle": ang[1] % 180}))
        kinds = rng.permutation(np.arange(n_dis) % 2)  # half share the hue, half the angle
        for k in kinds:
            h, a = (1, 0) if k == 0 else (0, 1)
            out.append((_bar(length, w, ang[a]), cols[h], {"hue": hues[h], "angle": ang[a] % 180}))
    elif dim == "conjunction_colour_size":
        sizes = [d, d * p["size_ratio"]]
        out.append((_disk(sizes[1]), cols[1], {"hue": hues[1], "diameter": sizes[1]}))
        kinds = rng.permutation(np.arange(n_dis) % 2)
        for k in kinds:
            h, s = (1, 0) if k == 0 else (0, 1)
            out.append((_disk(sizes[s]), cols[h], {"hue": hues[h], "diameter": sizes[s]}))
    else:  # pragma: no cover - guarded by default_params
        raise AssertionError(dim)
    return out, nuis


# ------------------------------------------------------------------------------------------------
# public API


def generate_array(
    dimension: str, seed: int, *, id: str | None = None, **params: Any
) -> PopoutArray:
    """Render one search array of ``dimension`` (see the module docstring) from ``seed``.

    Deterministic: the same (dimension, seed, params) give bit-identical image and mask on any
    platform. ``id`` names the array (default ``"<dimension>_<seed>"``). Raises ``DataError`` for
    an unknown dimension or parameter, or parameters that cannot be laid out (items larger than
    their grid cell, dots that do not fit).
    """
    p, src = _resolve(dimension, seed, params)
    rng = np.random.default_rng(int(seed))
    h, w, rows, cols_n = p["height"], p["width"], p["rows"], p["cols"]
    n_cells = rows * cols_n
    n_items = n_cells if p["n_items"] is None else p["n_items"]
    cells = (
        np.arange(n_cells)
        if n_items == n_cells
        else np.sort(rng.choice(n_cells, size=n_items, replace=False))
    )
    target_k = int(rng.integers(0, n_items))
    order = [int(cells[target_k])] + [int(c) for i, c in enumerate(cells) if i != target_k]

    items, nuisance = _items(dimension, p, rng, n_items - 1, src)
    bg = np.array(p["background"], dtype=np.uint8)
    for _, rgb, _ in items:
        if list(rgb) == p["background"]:
            raise DataError(src, f"an item colour {rgb} equals the background: invisible item")

    image = np.empty((h, w, 3), dtype=np.uint8)
    image[...] = bg
    mask = np.zeros((h, w), dtype=bool)
    cell_w, cell_h = w / cols_n, h / rows
    meta_items: list[dict[str, Any]] = []
    for idx, (cell, (shape, rgb, feats)) in enumerate(zip(order, items, strict=True)):
        r, c = divmod(cell, cols_n)
        room = min(cell_w, cell_h) / 2 - shape.radius - 1.0 - p["margin"]
        if room < 0:
            raise DataError(
                src,
                f"items of bounding radius {shape.radius:.1f} px do not fit in "
                f"{cell_w:.0f}x{cell_h:.0f} px cells with margin {p['margin']}: "
                "reduce item_size or the grid",
            )
        jx, jy = rng.uniform(-1.0, 1.0, size=2) * p["jitter"] * room
        cx = _q((c + 0.5) * cell_w - 0.5 + float(jx))
        cy = _q((r + 0.5) * cell_h - 0.5 + float(jy))
        ext = int(math.ceil(shape.radius)) + 2
        x0, x1 = max(int(math.floor(cx)) - ext, 0), min(int(math.ceil(cx)) + ext + 1, w)
        y0, y1 = max(int(math.floor(cy)) - ext, 0), min(int(math.ceil(cy)) + ext + 1, h)
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
        inside = _inside(shape, dx, dy)
        if not inside.any():
            raise DataError(src, f"item {idx} renders to no pixel: item_size too small")
        ys, xs = np.nonzero(inside)
        bbox = [
            x0 + int(xs.min()),
            y0 + int(ys.min()),
            x0 + int(xs.max()) + 1,
            y0 + int(ys.max()) + 1,
        ]
        image[y0:y1, x0:x1][inside] = np.array(rgb, dtype=np.uint8)
        if idx == 0:
            mask[y0:y1, x0:x1] = inside
        meta_items.append(
            {
                "role": "target" if idx == 0 else "distractor",
                "row": r,
                "col": c,
                "cx": cx,
                "cy": cy,
                "bbox": bbox,
                "rgb": list(rgb),
                "features": feats,
            }
        )

    t = meta_items[0]
    mag = _MAGNITUDE[dimension]
    if mag == "level_difference":
        mag_value: float | None = float(p["target_level"] - p["distractor_level"])
    else:
        mag_value = float(p[mag]) if mag else None
    meta: dict[str, Any] = {
        "id": id if id is not None else f"{dimension}_{int(seed)}",
        "dimension": dimension,
        "seed": int(seed),
        "height": h,
        "width": w,
        "cx": t["cx"],
        "cy": t["cy"],
        "bbox": t["bbox"],
        "target_row": t["row"],
        "target_col": t["col"],
        "n_items": n_items,
        "mask_pixels": int(mask.sum()),
        "magnitude_name": mag or "",
        "magnitude": mag_value,
        "params": p,
        "nuisance": nuisance,
        "items": meta_items,
    }
    return PopoutArray(image=image, mask=mask, meta=meta)


def _array_seed(seed: int, dimension: str, index: int) -> int:
    """Per-array seed from (set seed, dimension name, index); independent of dimension order."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(dimension.encode()), int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def default_set(
    n_per_dimension: int = 10, seed: int = 0, *, conjunctions: bool = True, **params: Any
) -> list[PopoutArray]:
    """``n_per_dimension`` arrays per feature dimension (9 → 90 by default), plus as many per
    conjunction control when ``conjunctions``. Ids are ``<dimension>_<index:03d>``; each array's
    own seed (in its meta) is derived from (``seed``, dimension, index), so
    ``generate_array(dimension, meta['seed'], **meta['params'])`` regenerates it. ``params``
    (common parameters such as ``height``/``width``) apply to every array."""
    if (
        isinstance(n_per_dimension, bool)
        or not isinstance(n_per_dimension, int)
        or n_per_dimension < 1
    ):
        raise DataError(
            "default_set", f"n_per_dimension must be a positive int, got {n_per_dimension!r}"
        )
    dims = DIMENSIONS if conjunctions else FEATURE_DIMENSIONS
    return [
        generate_array(d, _array_seed(seed, d, i), id=f"{d}_{i:03d}", **params)
        for d in dims
        for i in range(n_per_dimension)
    ]


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _write_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=6, optimize=False)


def write_set(arrays: Iterable[PopoutArray], out_dir: str | Path) -> Path:
    """Write ``<id>.png`` (RGB), ``<id>_mask.png`` (8-bit, 255 = target) and ``manifest.csv``
    (one row per array, columns ``MANIFEST_COLUMNS``; ``params``, ``items`` as JSON; bbox is
    ``[x0, x1)`` × ``[y0, y1)`` in pixels). Byte-identical for identical arrays. Returns the
    manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for a in arrays:
        aid = a.id
        if not aid or "/" in aid or "\\" in aid or aid in seen:
            raise DataError(
                out, f"array id {aid!r} is empty, contains a path separator or is duplicated"
            )
        seen.add(aid)
        _check_array(a, aid)
        _write_png(np.ascontiguousarray(a.image), out / f"{aid}.png")
        _write_png(a.mask.astype(np.uint8) * 255, out / f"{aid}_mask.png")
        m = a.meta
        rows.append(
            {
                "id": aid,
                "dimension": m["dimension"],
                "seed": m["seed"],
                "height": m["height"],
                "width": m["width"],
                "cx": repr(float(m["cx"])),
                "cy": repr(float(m["cy"])),
                "bbox_x0": m["bbox"][0],
                "bbox_y0": m["bbox"][1],
                "bbox_x1": m["bbox"][2],
                "bbox_y1": m["bbox"][3],
                "target_row": m["target_row"],
                "target_col": m["target_col"],
                "n_items": m["n_items"],
                "mask_pixels": m["mask_pixels"],
                "magnitude_name": m["magnitude_name"],
                "magnitude": "" if m["magnitude"] is None else repr(float(m["magnitude"])),
                "image": f"{aid}.png",
                "mask": f"{aid}_mask.png",
                "params": _json(m["params"]),
                "items": _json({"nuisance": m.get("nuisance", {}), "items": m.get("items", [])}),
            }
        )
    path = out / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    return path


def _check_array(a: PopoutArray, src: str | Path) -> None:
    img, mask = a.image, a.mask
    if not (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.ndim == 3
        and img.shape[2] == 3
    ):
        raise DataError(
            src,
            f"image must be uint8 (H, W, 3), got "
            f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}",
        )
    if not (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == img.shape[:2]):
        raise DataError(
            src,
            f"mask must be bool {img.shape[:2]}, got "
            f"{getattr(mask, 'dtype', type(mask))} {getattr(mask, 'shape', '')}",
        )
    if not mask.any():
        raise DataError(src, "mask is empty: no target pixel")


def load_set(directory: str | Path) -> list[PopoutArray]:
    """Read a set written by ``write_set`` (manifest order). ``meta`` equals the generated one.
    Raises ``DataError`` naming the file for a missing/corrupt manifest, image or mask, a size
    that disagrees with the manifest, or a mask that is not binary or is empty."""
    d = Path(directory)
    path = d / "manifest.csv"
    if not path.is_file():
        raise DataError(path, "manifest.csv not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DataError(path, f"missing column(s) {sorted(missing)}")
        rows = list(reader)
    out: list[PopoutArray] = []
    for i, row in enumerate(rows):
        src = f"{path} row {i + 2} (id {row['id']!r})"
        try:
            extra = json.loads(row["items"])
            meta: dict[str, Any] = {
                "id": row["id"],
                "dimension": row["dimension"],
                "seed": int(row["seed"]),
                "height": int(row["height"]),
                "width": int(row["width"]),
                "cx": float(row["cx"]),
                "cy": float(row["cy"]),
                "bbox": [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")],
                "target_row": int(row["target_row"]),
                "target_col": int(row["target_col"]),
                "n_items": int(row["n_items"]),
                "mask_pixels": int(row["mask_pixels"]),
                "magnitude_name": row["magnitude_name"],
                "magnitude": float(row["magnitude"]) if row["magnitude"] else None,
                "params": json.loads(row["params"]),
                "nuisance": extra["nuisance"],
                "items": extra["items"],
            }
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(src, f"unparsable manifest row: {e}") from e
        image = _read_png(d / row["image"], "RGB")
        mraw = _read_png(d / row["mask"], "L")
        if image.shape[:2] != (meta["height"], meta["width"]):
            raise DataError(
                d / row["image"],
                f"size {image.shape[1]}x{image.shape[0]} differs "
                f"from the manifest {meta['width']}x{meta['height']}",
            )
        if mraw.shape != image.shape[:2]:
            raise DataError(
                d / row["mask"], f"mask shape {mraw.shape} differs from the image {image.shape[:2]}"
            )
        if not np.isin(mraw, (0, 255)).all():
            raise DataError(d / row["mask"], "mask is not binary (values other than 0 and 255)")
        mask = mraw == 255
        if int(mask.sum()) != meta["mask_pixels"]:
            raise DataError(
                d / row["mask"],
                f"{int(mask.sum())} target pixels, manifest says {meta['mask_pixels']}",
            )
        arr = PopoutArray(image=image, mask=mask, meta=meta)
        _check_array(arr, d / row["mask"])
        out.append(arr)
    return out


def _read_png(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            if im.mode != mode:
                raise DataError(path, f"PNG mode {im.mode!r}, expected {mode!r}")
            return np.array(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(path, f"cannot read image: {e}") from e


def target_distractor_overlap(array: PopoutArray) -> list[int]:
    """Indices (in ``meta['items']``) of the distractors whose bounding box intersects the
    target's; empty for every generated array (items live in separate grid cells)."""
    items: Sequence[dict[str, Any]] = array.meta["items"]
    tx0, ty0, tx1, ty1 = items[0]["bbox"]
    return [
        i
        for i, it in enumerate(items[1:], start=1)
        if it["bbox"][0] < tx1
        and tx0 < it["bbox"][2]
        and it["bbox"][1] < ty1
        and ty0 < it["bbox"][3]
    ]


def item_masks(array: PopoutArray, role: str = "distractor") -> list[np.ndarray]:
    """Exact masks of the items with ``role`` ("distractor" or "target"): the non-background
    pixels inside each item's bounding box (items never share a grid cell, so a box holds one
    item only). The target's equals ``array.mask``."""
    background = np.asarray(array.meta["params"].get("background", (0, 0, 0)), dtype=np.uint8)
    h, w = array.mask.shape
    out = []
    for item in array.meta["items"]:
        if item["role"] != role:
            continue
        x0, y0, x1, y1 = item["bbox"]
        m = np.zeros((h, w), dtype=bool)
        m[y0:y1, x0:x1] = (array.image[y0:y1, x0:x1] != background).any(axis=-1)
        out.append(m)
    return out
