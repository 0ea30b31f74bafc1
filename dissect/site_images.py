"""Pictures of the unit browser (:mod:`dissect.site`): thumbnails, activation overlays with the
regions and fixations drawn, and small SVG charts, written as files the pages load.

Overlays follow the project's conventions (DESIGN.md): a unit map is bilinearly upsampled with
``interpolate(mode="bilinear", align_corners=False)`` arithmetic (:func:`dissect.figures.upsample`)
straight to the thumbnail's size, and coloured on a scale the caller gives (the unit page uses
one scale for a whole row of images, so the row's maps are comparable). Drawing is OpenCV's
(colour map, blending, contours, circles); the bar chart and the heatmap strip are inline SVG
written here because they are a few rectangles and no plotting library writes embeddable SVG
without a figure per chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import cv2
import numpy as np

from dissect.errors import DataError
from dissect.figures import upsample

FIXATION_BGR = (0, 215, 255)  # yellow dots with a dark rim, as in the paper figures
REGION_BGR = (255, 255, 255)


def thumbnail_size(height: int, width: int, thumb_width: int) -> tuple[int, int]:
    """(h, w) of a thumbnail ``thumb_width`` wide with the image's aspect ratio."""
    if height <= 0 or width <= 0:
        raise DataError("thumbnail", f"image size must be positive, got {height}x{width}")
    return max(1, round(height * thumb_width / width)), int(thumb_width)


def thumbnail(image: np.ndarray, thumb_width: int) -> np.ndarray:
    """RGB uint8 thumbnail (area interpolation: no aliasing when shrinking)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError("thumbnail", f"expected an RGB image (H, W, 3), got shape {img.shape}")
    h, w = thumbnail_size(img.shape[0], img.shape[1], thumb_width)
    return cv2.resize(img.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)


def colour_map(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """RGB uint8 jet colours of ``values`` on the scale [vmin, vmax] (clipped)."""
    span = vmax - vmin
    scaled = np.zeros_like(values, dtype=np.float64) if not span > 0 else (values - vmin) / span
    idx = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(idx, cv2.COLORMAP_JET)[..., ::-1]


def overlay(thumb: np.ndarray, amap: np.ndarray | None, vmin: float, vmax: float, *,
            image_size: tuple[int, int], points: np.ndarray | None = None,
            region_mask: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """The thumbnail with ``amap`` (a unit map of any size) upsampled and coloured on
    [vmin, vmax] blended over it, the region's outline and the fixations drawn.

    ``points`` (n, 2) are fixations ``(x, y)`` in the original image's pixels and
    ``region_mask`` a bool mask of the original size ``image_size = (H, W)``; both are scaled to
    the thumbnail here.
    """
    h, w = thumb.shape[:2]
    out = thumb.astype(np.float64)
    if amap is not None:
        colours = colour_map(upsample(np.asarray(amap, dtype=np.float64), (h, w)), vmin, vmax)
        out = (1 - alpha) * out + alpha * colours
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(out[..., ::-1])
    H, W = image_size
    if region_mask is not None:
        if region_mask.shape != (H, W):
            raise DataError("overlay", f"region mask is {region_mask.shape}, the image {H}x{W}")
        small = cv2.resize(region_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(bgr, contours, -1, REGION_BGR, 1, lineType=cv2.LINE_AA)
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64)
        for x, y in zip(pts[:, 0] * w / W, pts[:, 1] * h / H, strict=True):
            c = (int(round(x)), int(round(y)))
            cv2.circle(bgr, c, 2, (0, 0, 0), -1, lineType=cv2.LINE_AA)
            cv2.circle(bgr, c, 1, FIXATION_BGR, -1, lineType=cv2.LINE_AA)
    return bgr[..., ::-1]


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 80) -> Path:
    """Write an RGB uint8 array as a JPEG (OpenCV) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]),
                     [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DataError(path, "OpenCV could not write the JPEG")
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise DataError(path, "OpenCV could not write the PNG")
    return path


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.2f}"


def category_bars_svg(categories: Sequence[str], values: np.ndarray, low: np.ndarray,
                      high: np.ndarray, threshold: float, *, width: int = 520,
                      lo: float | None = None, hi: float | None = None) -> str:
    """Horizontal bars of a unit's ``m[u, c]`` per category, the null's 95 % band behind each
    bar (grey) and the threshold T (dashed line). Inline SVG. ``lo``/``hi``: the x range (give
    two charts shown side by side the same one); by default 0, T and every value in view."""
    values, low, high = (np.asarray(a, dtype=np.float64) for a in (values, low, high))
    if lo is None or hi is None:
        finite = np.concatenate([values[np.isfinite(values)], low[np.isfinite(low)],
                                 high[np.isfinite(high)], [0.0, threshold]])
        lo = min(0.0, float(finite.min())) if lo is None else lo
        hi = (float(finite.max()) * 1.05 or 1.0) if hi is None else hi
    if not hi > lo:
        raise DataError("category_bars_svg", f"empty x range [{lo}, {hi}]")
    label_w, row_h, pad = 110, 18, 4
    plot_w = width - label_w - 50
    def x(v: float) -> float:
        return label_w + (float(np.clip(v, lo, hi)) - lo) / (hi - lo) * plot_w
    height = row_h * len(categories) + 24
    parts = [f'<svg class="bars" role="img" aria-label="category NSS bars" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">']
    for i, cat in enumerate(categories):
        y = i * row_h + pad
        parts.append(f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end">'
                     f'{escape(cat)}</text>')
        if np.isfinite(low[i]) and np.isfinite(high[i]):
            parts.append(f'<rect class="band" x="{x(low[i]):.1f}" y="{y - 1}" '
                         f'width="{max(x(high[i]) - x(low[i]), 1):.1f}" height="{row_h - 2}"/>')
        if np.isfinite(values[i]):
            x0, x1 = sorted((x(0.0), x(values[i])))
            parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y + 2}" width="{x1 - x0:.1f}" '
                         f'height="{row_h - 8}"><title>{escape(cat)}: {_fmt(values[i])} '
                         f'(null 95 %: {_fmt(low[i])} to {_fmt(high[i])})</title></rect>')
        parts.append(f'<text x="{width - 44}" y="{y + 11}">{_fmt(values[i])}</text>')
    yb = row_h * len(categories) + pad
    parts.append(f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="0" y2="{yb}"/>')
    parts.append(f'<line class="threshold" x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" '
                 f'y1="0" y2="{yb}"/>')
    parts.append(f'<text x="{x(threshold):.1f}" y="{yb + 14}" text-anchor="middle">'
                 f'T = {threshold:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heat_colour(v: float, vmax: float) -> str:
    """Hex colour of ``v`` on a white → dark red ramp over [0, vmax] (NaN: light grey)."""
    if not np.isfinite(v):
        return "#eeeeee"
    t = 0.0 if vmax <= 0 else float(np.clip(v / vmax, 0.0, 1.0))
    r, g, b = 255 - 75 * t, 255 - 225 * t, 255 - 215 * t
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def profile_strip_svg(categories: Sequence[str], values: np.ndarray, *, vmax: float,
                      label: str, cell: int = 14) -> str:
    """A one-row heatmap of a layer's category profile (e.g. top-10 mean per category), one
    cell per category with its value in the tooltip. Inline SVG."""
    values = np.asarray(values, dtype=np.float64)
    w, h = cell * len(categories), cell
    parts = [f'<svg class="strip" role="img" aria-label="{escape(label)}" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">']
    for i, cat in enumerate(categories):
        parts.append(f'<rect x="{i * cell}" y="0" width="{cell - 1}" height="{h}" '
                     f'fill="{heat_colour(values[i], vmax)}"><title>{escape(cat)}: '
                     f'{_fmt(values[i])}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)
