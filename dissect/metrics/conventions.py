"""The two numeric conventions every metric, loader and training loss shares, defined once.

* **Pixel rule.** A 0-based ``(x, y)`` point (x to the right, y down) falls on the pixel
  ``(row, col) = (rint(y), rint(x))``, with numpy's ``rint`` (round half to even: 10.5 → 10,
  11.5 → 12); torch's ``round`` is the same rule. Region lookup, fixation maps, bounds checks,
  NSS and the training loss all call :func:`pixel_indices` / :func:`pixel_indices_torch`.
  A NaN or ±inf coordinate has no pixel: both refuse it with :class:`~dissect.errors.DataError`
  (so no out-of-bounds policy can clip or drop it as if it were an ordinary point).
* **Constant map.** A map whose standard deviation is ≤ :data:`CONSTANT_RTOL` × max|map| is
  constant (zero up to float rounding): NSS, CC and NMM return NaN for it, never 0 or inf.
* **Scale.** Before summing squares or values, the metrics divide each map by the power of two
  :func:`pow2_exponent` gives for its max|map| (exact in binary floating point, so every result
  is bit for bit the same as without it on maps whose sums neither overflow nor underflow), so
  that a map scaled by 1e200 or 1e-200 scores as the unscaled map instead of overflowing.
* **Benchmark conventions.** Every map metric takes ``conventions=`` one of
  :data:`CONVENTIONS`: ``"dissect"`` (the project's documented defaults) or ``"mit"`` (the MIT
  saliency benchmark's MATLAB code: std with N − 1, binary fixation maps, jittered AUC-Judd,
  0.1-step thresholds, the saliency map resized to the fixation map's size);
  :func:`check_conventions` validates the value. See ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dissect.errors import DataError

if TYPE_CHECKING:  # torch is imported lazily by the torch variant only
    import torch

__all__ = [
    "CENTRED_RTOL",
    "CONSTANT_RTOL",
    "CONVENTIONS",
    "EPS",
    "check_conventions",
    "pixel_indices",
    "pixel_indices_torch",
    "pow2_exponent",
]

#: MATLAB's ``eps`` (2**-52), the regulariser of the benchmark's ``KLdiv.m`` and ``InfoGain.m``.
EPS: float = float(np.finfo(np.float64).eps)

#: std ≤ CONSTANT_RTOL × max|A| → constant map (NaN). Float64 rounding of σ is ~1e-16 × max|A|.
CONSTANT_RTOL: float = 1e-10

#: std ≤ CENTRED_RTOL × max|A − mean(A)| → constant upsampled map (the exact region formulas of
#: :mod:`dissect.metrics.region`): with centred maps the rounding error of
#: σ = sqrt(E[up²] − μ²) is ≲ sqrt(eps) ≈ 1.5e-8 of the centred scale.
CENTRED_RTOL: float = 1e-7

#: The values of the metrics' ``conventions`` argument: the project's defaults, or the MIT
#: saliency benchmark's MATLAB code (``cvzoya/saliency``, ``code_forMetrics``).
CONVENTIONS: tuple[str, ...] = ("dissect", "mit")


def check_conventions(value: object) -> str:
    """``value`` if it is one of :data:`CONVENTIONS`, else :class:`~dissect.errors.DataError`
    naming ``conventions`` and the allowed values."""
    if isinstance(value, str) and value in CONVENTIONS:
        return value
    allowed = ", ".join(repr(c) for c in CONVENTIONS)
    raise DataError("conventions", f"must be one of {allowed}, got {value!r}")


def _non_finite_message(n_bad: int, n_nan: int, n_inf: int, first: int, x: float, y: float) -> str:
    return (
        f"{n_bad} point(s) have non-finite coordinates ({n_nan} NaN, {n_inf} infinite value(s)), "
        f"first: #{first} (x={x:g}, y={y:g}); a NaN/inf point has no pixel and is never "
        "clipped or dropped as out of bounds"
    )


def pixel_indices(
    points: ArrayLike, name: str = "points"
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row and column index ``(rint(y), rint(x))`` of the pixel each ``(x, y)`` point falls on.

    ``points`` is anything of shape ``(N, 2)`` (or ``(2,)``). A NaN or ±inf coordinate →
    :class:`~dissect.errors.DataError` naming ``name`` and the number of such points; no bounds
    check here (the callers check bounds and name their input).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(pts)
    if not finite.all():
        bad = ~finite.all(axis=1)
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            name,
            _non_finite_message(
                int(bad.sum()),
                int(np.isnan(pts).sum()),
                int(np.isinf(pts).sum()),
                i,
                float(pts[i, 0]),
                float(pts[i, 1]),
            ),
        )
    return np.rint(pts[:, 1]).astype(np.int64), np.rint(pts[:, 0]).astype(np.int64)


def pixel_indices_torch(points: torch.Tensor, name: str = "points") -> torch.Tensor:
    """The same rule for a ``(N, 2)`` ``(x, y)`` tensor: a long ``(N, 2)`` ``(col, row)`` tensor
    (float points rounded half to even, integer points unchanged). A NaN or ±inf coordinate →
    :class:`~dissect.errors.DataError` naming ``name`` and the number of such points."""
    import torch

    pts = torch.as_tensor(points)
    if pts.is_floating_point():
        finite = torch.isfinite(pts)
        if not bool(finite.all()):
            flat = pts.reshape(-1, 2)
            bad = ~finite.reshape(-1, 2).all(dim=1)
            i = int(torch.nonzero(bad)[0, 0])
            raise DataError(
                name,
                _non_finite_message(
                    int(bad.sum()),
                    int(torch.isnan(pts).sum()),
                    int(torch.isinf(pts).sum()),
                    i,
                    float(flat[i, 0]),
                    float(flat[i, 1]),
                ),
            )
        pts = torch.round(pts)  # half to even, like numpy rint
    return pts.to(dtype=torch.long)


def pow2_exponent(scale: ArrayLike) -> NDArray[np.int64]:
    """The exponent ``k`` with ``scale · 2**-k`` in ``[0.5, 1)`` (``0`` where ``scale`` is 0).

    Dividing a map by ``2**k`` (``np.ldexp(a, -k)``) is exact in binary floating point barring
    underflow to subnormals, and every operation of the scale-invariant metrics (sums, products,
    square roots, quotients) then rounds exactly as on the original map: the results are bit for
    bit the same, while sums of squares of maps of any finite magnitude can no longer overflow
    or underflow.
    """
    return np.frexp(np.asarray(scale, dtype=np.float64))[1].astype(np.int64)
