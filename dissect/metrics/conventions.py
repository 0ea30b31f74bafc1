"""The two numeric conventions every metric, loader and training loss shares, defined once.

* **Pixel rule.** A 0-based ``(x, y)`` point (x to the right, y down) falls on the pixel
  ``(row, col) = (rint(y), rint(x))``, with numpy's ``rint`` (round half to even: 10.5 → 10,
  11.5 → 12); torch's ``round`` is the same rule. Region lookup, fixation maps, bounds checks,
  NSS and the training loss all call :func:`pixel_indices` / :func:`pixel_indices_torch`.
* **Constant map.** A map whose standard deviation is ≤ :data:`CONSTANT_RTOL` × max|map| is
  constant (zero up to float rounding): NSS, CC and NMM return NaN for it, never 0 or inf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # torch is imported lazily by the torch variant only
    import torch

__all__ = ["CENTRED_RTOL", "CONSTANT_RTOL", "EPS", "pixel_indices", "pixel_indices_torch"]

#: MATLAB's ``eps`` (2**-52), the regulariser of the benchmark's ``KLdiv.m`` and ``InfoGain.m``.
EPS: float = float(np.finfo(np.float64).eps)

#: std ≤ CONSTANT_RTOL × max|A| → constant map (NaN). Float64 rounding of σ is ~1e-16 × max|A|.
CONSTANT_RTOL: float = 1e-10

#: std ≤ CENTRED_RTOL × max|A − mean(A)| → constant upsampled map (the exact region formulas of
#: :mod:`dissect.metrics.region`): with centred maps the rounding error of
#: σ = sqrt(E[up²] − μ²) is ≲ sqrt(eps) ≈ 1.5e-8 of the centred scale.
CENTRED_RTOL: float = 1e-7


def pixel_indices(points: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row and column index ``(rint(y), rint(x))`` of the pixel each ``(x, y)`` point falls on.

    ``points`` is anything of shape ``(N, 2)`` (or ``(2,)``); no bounds or NaN check here (the
    callers check and name their input).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.rint(pts[:, 1]).astype(np.int64), np.rint(pts[:, 0]).astype(np.int64)


def pixel_indices_torch(points: torch.Tensor) -> torch.Tensor:
    """The same rule for a ``(N, 2)`` ``(x, y)`` tensor: a long ``(N, 2)`` ``(col, row)`` tensor
    (float points rounded half to even, integer points unchanged)."""
    import torch

    pts = torch.as_tensor(points)
    if pts.is_floating_point():
        pts = torch.round(pts)  # half to even, like numpy rint
    return pts.to(dtype=torch.long)
