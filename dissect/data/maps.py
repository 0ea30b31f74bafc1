"""Human fixation maps: the binary map of fixated pixels and the Gaussian-blurred density.

Conventions follow OSIE's own ``computeFixationMaps.m`` (Xu et al., 2014): a fixation marks the
pixel it falls on (``(rint(y), rint(x))`` in 0-based coordinates, halves to even), a pixel
fixated several times counts once, and the density is that binary map convolved with a Gaussian
of σ = 24 px (OSIE's ``params.eye.radius = 24``, i.e. one degree of visual angle at OSIE's
≈ 24 px/degree), kernel truncated at 3.5 σ (OSIE's ``7σ`` window) and zero padding at the border
(MATLAB ``imfilter(..., 0)`` = scipy ``mode="constant"``), then normalised to sum 1. Unlike OSIE
(which clamps stray points into the image), points outside the image are an error here.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices

__all__ = ["fixation_map", "density_map", "OSIE_PX_PER_DEGREE"]

OSIE_PX_PER_DEGREE = 24.0
"""Pixels per degree of visual angle used by OSIE's fixation maps (σ = 1° = 24 px)."""


def _pixels(points: np.ndarray, size: tuple[int, int], what: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise DataError(what, f"image size must be positive, got {size}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DataError(what, f"points must be an (N, 2) array of (x, y), got shape {pts.shape}")
    if np.isnan(pts).any():
        raise DataError(what, f"{int(np.isnan(pts).any(axis=1).sum())} point(s) are NaN")
    r, c = pixel_indices(pts)
    out = (r < 0) | (r >= h) | (c < 0) | (c >= w)
    if out.any():
        raise DataError(
            what,
            f"{int(out.sum())} of {len(pts)} point(s) lie outside the {h}x{w} image, "
            f"e.g. (x, y) = {tuple(float(v) for v in pts[out][0])}",
        )
    return r, c


def fixation_map(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary ``(H, W) uint8`` map: 1 where at least one 0-based (x, y) point falls."""
    r, c = _pixels(points, size, "fixation_map")
    out = np.zeros((int(size[0]), int(size[1])), dtype=np.uint8)
    out[r, c] = 1
    return out


def density_map(
    points: np.ndarray,
    size: tuple[int, int],
    sigma: float | None = None,
    sigma_deg: float | None = None,
    px_per_degree: float = OSIE_PX_PER_DEGREE,
    *,
    count_duplicates: bool = False,
    mode: str = "constant",
    truncate: float = 3.5,
) -> np.ndarray:
    """Fixation density: Gaussian-blurred fixation map, ``float64 (H, W)`` summing to 1.

    ``sigma`` in pixels, or ``sigma_deg`` degrees × ``px_per_degree``; neither → 1° (24 px at
    OSIE's 24 px/°). ``count_duplicates=False`` blurs the binary :func:`fixation_map` (OSIE's
    convention); ``True`` weights each pixel by its number of fixations. ``mode`` is the
    :func:`scipy.ndimage.gaussian_filter` border mode ("constant" = zero padding, as OSIE).
    """
    if sigma is not None and sigma_deg is not None:
        raise ValueError("give sigma (pixels) or sigma_deg (degrees), not both")
    if sigma is None:
        sigma = (1.0 if sigma_deg is None else float(sigma_deg)) * float(px_per_degree)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma}")
    r, c = _pixels(points, size, "density_map")
    if len(r) == 0:
        raise DataError("density_map", "no fixations: the density is undefined")
    h, w = int(size[0]), int(size[1])
    base = np.zeros((h, w), dtype=np.float64)
    if count_duplicates:
        np.add.at(base, (r, c), 1.0)
    else:
        base[r, c] = 1.0
    dens = gaussian_filter(base, sigma=float(sigma), mode=mode, truncate=truncate)
    total = dens.sum()
    if not total > 0:
        raise DataError("density_map", "blurred map has zero mass (sigma too small?)")
    return dens / total
