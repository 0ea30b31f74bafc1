"""Independent numpy references for the resampling conventions the package relies on.

Written from the definitions, not from the package (nor from the torch call the package makes),
so a test comparing against them checks the convention rather than restating the code:

* :func:`bilinear_matrix`: 1-D bilinear resampling with half-pixel centres
  (``align_corners=False``): output sample ``i`` sits at source coordinate
  ``(i + 0.5)·n_in/n_out − 0.5``, clamped at 0; it takes ``1 − λ`` of the sample at its floor
  and ``λ`` of the next one, the last sample standing in for its missing right neighbour.
* :func:`antialias_matrix`: bilinear resampling *with* antialiasing, the separable triangle
  filter of PIL's ``resize(BILINEAR)``: output sample ``i`` is centred at ``(i + 0.5)·s`` in
  input pixel-edge coordinates (``s = n_in/n_out``), and input sample ``j`` (centre ``j + 0.5``)
  gets weight ``max(0, 1 − |j + 0.5 − (i + 0.5)·s| / max(s, 1))``, renormalised over the image.
  When upsampling (``s ≤ 1``) this is the plain bilinear interpolation above.

A 2-D map resamples as ``Wy · A · Wxᵀ``.
"""

from __future__ import annotations

import math

import numpy as np


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of plain bilinear resampling, half-pixel centres."""
    u = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        lam = min(src - i0, 1.0)
        i1 = min(i0 + 1, n_in - 1)
        u[i, i0] += 1.0 - lam
        u[i, i1] += lam
    return u


def antialias_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of bilinear resampling with a triangle antialiasing filter."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = np.arange(n_in) + 0.5
    u = np.zeros((n_out, n_in))
    for i in range(n_out):
        w = np.clip(1.0 - np.abs(centres - (i + 0.5) * scale) / support, 0.0, None)
        u[i] = w / w.sum()
    return u


def resize(a: np.ndarray, size: tuple[int, int], *, antialias: bool = False) -> np.ndarray:
    """Resample the last two axes of ``a`` to ``size = (H, W)`` (float64)."""
    make = antialias_matrix if antialias else bilinear_matrix
    wy = make(int(size[0]), a.shape[-2])
    wx = make(int(size[1]), a.shape[-1])
    return np.einsum("ij,...jk,lk->...il", wy, np.asarray(a, dtype=np.float64), wx)
