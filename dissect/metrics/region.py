"""Exact NSS / NMM of upsampled unit maps without materialising the upsampled maps.

He et al. 2019 compare every unit's activation map with fixations at the original image size:
the map ``A`` (h × w) is bilinearly upsampled to (H, W) and NSS is computed at the fixations
inside each salient region (Eq. 1). Bilinear upsampling with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialias) is linear
and separable, ``up = Uy · A · Uxᵀ`` with ``Uy`` (H × h) and ``Ux`` (W × w) the interpolation
matrices (:func:`upsample_matrix`). Hence, with ``N = H·W``:

* mean ``μ = (1ᵀUy) A (Uxᵀ1) / N``
* second moment ``E[up²] = ‖Uy A Uxᵀ‖²_F / N = tr(Aᵀ Gy A Gx) / N`` with ``Gy = UyᵀUy``,
  ``Gx = UxᵀUx``; ``σ² = E[up²] − μ²`` (population variance)
* value at pixel (y, x): ``Uy[y, :] · A · Ux[x, :]ᵀ``
* mean under a mask ``M``: ``Σ_{(y,x)∈M} up[y, x] = Σ (Uyᵀ M Ux) ⊙ A``.

Everything is float64 (the torch variant computes in the maps' dtype, float32 at least). Each
map is first divided by the power of two that brings its max|A| into [0.5, 1) (exact, so the
z-scores are bit for bit unchanged, while maps of any finite magnitude neither overflow nor
underflow). Each row of ``Uy``/``Ux`` sums to 1, so ``up(A − c) = up(A) − c``: every map is then
centred on its own mean, which keeps ``E[up²] − μ²`` free of catastrophic cancellation. A map
whose upsampled std is ≤ ``1e-10 × max|A|`` (or ≤ ``1e-7 ×`` the centred map's max, which
catches maps that downsampling makes constant) is *constant*: its NSS/NMM is NaN, never 0 or inf.

Fixation pixels follow :mod:`dissect.metrics.saliency`: ``(rint(y), rint(x))`` of the (x, y)
points, numpy ``rint`` (half to even), every point counting (duplicates twice).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dissect.errors import DataError
from dissect.metrics.conventions import (
    CENTRED_RTOL,
    CONSTANT_RTOL,
    pixel_indices_torch,
    pow2_exponent,
)
from dissect.metrics.saliency import point_pixels

if TYPE_CHECKING:
    import torch

__all__ = [
    "nss_at_points_torch",
    "region_nss",
    "unit_nmm",
    "upsample_matrix",
    "upsampled_moments",
]



# --------------------------------------------------------------------------------------------
# interpolation matrices
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _taps(
    n_out: int, n_in: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """The two taps of each output sample: indices ``i0, i1`` and weights ``1 − λ, λ``."""
    scale = n_in / n_out  # PyTorch's area_pixel_compute_scale with a size and no scale_factor
    # source coordinate scale·(i + 0.5) − 0.5, rounded once as PyTorch's (fused multiply-add)
    # CPU kernels mostly do; the plain two-rounding formula differs by a few ulps at most.
    fs, half = Fraction(scale), Fraction(1, 2)
    src = np.array([float(fs * (i + half) - half) for i in range(n_out)], dtype=np.float64)
    src = np.maximum(src, 0.0)  # align_corners=False: clamped at 0
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    i1 = i0 + (i0 < n_in - 1)  # the last input pixel is its own right neighbour (edge clamp)
    w0 = 1.0 - lam
    for t in (i0, i1, w0, lam):
        t.setflags(write=False)
    return i0, i1, w0, lam


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n_out: int, n_in: int) -> NDArray[np.float64]:
    i0, i1, w0, w1 = _taps(n_out, n_in)
    u = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(u, (rows, i0), w0)
    np.add.at(u, (rows, i1), w1)
    u.setflags(write=False)
    return u


def upsample_matrix(n_out: int, n_in: int) -> NDArray[np.float64]:
    """The (n_out, n_in) float64 matrix ``U`` of 1-D bilinear resampling of ``n_in`` samples to
    ``n_out``, exactly as ``torch.nn.functional.interpolate(..., size=…, mode="bilinear",
    align_corners=False)`` (no antialias): source coordinate ``(i + 0.5)·n_in/n_out − 0.5``
    clamped at 0, weights ``1 − λ`` / ``λ`` on its floor and the next sample, the last sample
    standing in for its own neighbour at the far edge. ``interpolate(A) = Uy · A · Uxᵀ``.

    Cached (LRU, keyed by ``(n_out, n_in)``); the returned array is read-only.
    """
    for name, n in (("n_out", n_out), ("n_in", n_in)):
        if int(n) != n or n < 1:
            raise DataError(name, f"must be a positive integer, got {n!r}")
    return _upsample_matrix(int(n_out), int(n_in))


@functools.lru_cache(maxsize=64)
def _axis_terms(n_out: int, n_in: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Column sums ``Uᵀ1`` (n_in,) and Gram matrix ``UᵀU`` (n_in, n_in) of the upsampling."""
    u = _upsample_matrix(n_out, n_in)
    s = u.sum(axis=0)
    g = u.T @ u
    s.setflags(write=False)
    g.setflags(write=False)
    return s, g


@functools.cache
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return ThreadpoolController()


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread for the duration of a call.

    The matrix products here are small (units·h·w·max(h, w) multiply-adds); with several BLAS
    threads on a busy machine each product waits for every thread to be scheduled, which made
    a 3 ms call take 20–50 ms on the shared 2-core machine. The limit is process-wide while
    active (threadpoolctl); without threadpoolctl nothing is limited.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _activations(x: Any, name: str = "activations") -> NDArray[np.float64]:
    if _is_tensor(x):
        x = x.detach().to("cpu").double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(name, f"cannot be read as a numeric array ({exc})") from exc
    if a.ndim != 3 or min(a.shape[1:], default=0) < 1:
        raise DataError(name, f"must have shape (units, h, w) with h, w ≥ 1, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        units = np.flatnonzero(bad.any(axis=(1, 2)))
        raise DataError(
            name,
            f"{int(bad.sum())} NaN/inf value(s) in {units.size} unit(s), first unit {units[0]}",
        )
    return a


def _image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        hh, ww = (int(v) for v in image_size)
        ok = all(int(v) == v for v in image_size)
    except (TypeError, ValueError) as exc:
        raise DataError("image_size", f"must be (H, W), got {image_size!r}") from exc
    if not ok or hh < 1 or ww < 1:
        raise DataError("image_size", f"must be two positive integers (H, W), got {image_size!r}")
    return hh, ww


def _integer_ids(x: ArrayLike, name: str) -> NDArray[np.int64]:
    a = np.asarray(x)
    if a.ndim != 1:
        raise DataError(name, f"must be 1-D, got shape {a.shape}")
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    try:
        f = a.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(name, f"must hold integer region ids ({exc})") from exc
    if not np.all(np.isfinite(f)):
        raise DataError(name, f"contains {int((~np.isfinite(f)).sum())} NaN/inf value(s)")
    if not np.all(f == np.round(f)):
        raise DataError(name, "must hold integer region ids (found non-integral values)")
    return f.astype(np.int64)


# --------------------------------------------------------------------------------------------
# numpy, float64
# --------------------------------------------------------------------------------------------
def _centred_moments(
    a: NDArray[np.float64], image_size: tuple[int, int]
) -> tuple[
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.int64],
]:
    """Centred maps ``a' − c``, offsets ``c``, the mean/std of the upsampled centred maps (std
    NaN for constant maps) and the exponents ``k``, all of the maps ``a' = a · 2**-k`` with each
    unit's max|a'| in [0.5, 1) (exact: z-scores are those of ``a`` bit for bit, and no sum of
    squares overflows or underflows whatever the magnitude of ``a``; multiply a mean or std by
    ``2**k`` to return to the scale of ``a``)."""
    hh, ww = image_size
    u, h, w = a.shape
    amax = np.abs(a).max(axis=(1, 2))
    k = pow2_exponent(amax)
    a = np.ldexp(a, -k[:, None, None])
    c = a.mean(axis=(1, 2))
    ac = a - c[:, None, None]
    sy, gy = _axis_terms(hh, h)
    sx, gx = _axis_terms(ww, w)
    n = float(hh) * float(ww)
    with _single_threaded_blas():
        mu = (ac.reshape(u * h, w) @ sx).reshape(u, h) @ sy / n
        # tr(Aᵀ Gy A Gx) = Σ (Gy A) ⊙ (A Gx), each product one matrix multiply over all units
        agx = (ac.reshape(u * h, w) @ gx).reshape(u, h, w)
        gya = np.tensordot(gy, ac, axes=(1, 1))  # (h, u, w)
    e2 = np.einsum("iuj,uij->u", gya, agx) / n
    var = np.maximum(e2 - mu * mu, 0.0)
    sd = np.sqrt(var)
    scale = np.ldexp(amax, -k)  # max|a'|, exactly
    cscale = np.abs(ac).max(axis=(1, 2))
    const = (sd <= CONSTANT_RTOL * scale) | (sd <= CENTRED_RTOL * cscale)
    sd = np.where(const, np.nan, sd)
    return ac, c, mu, sd, k


def upsampled_moments(
    activations: Any, image_size: Sequence[int]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and population std, per unit, of each map upsampled to ``image_size`` (exact, float64,
    without upsampling). Returns ``(mean (units,), std (units,))``; std is NaN for a constant map.
    """
    a = _activations(activations)
    ac, c, mu, sd, k = _centred_moments(a, _image_size(image_size))
    return np.ldexp(mu + c, k), np.ldexp(sd, k)


def _values_at(
    ac: NDArray[np.float64],
    image_size: tuple[int, int],
    rows: NDArray[np.intp],
    cols: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Upsampled values ``(units, n)`` of maps ``ac`` at pixels ``(rows, cols)``:
    ``Uy[y, :] · A · Ux[x, :]ᵀ`` evaluated through the (at most) two nonzero taps per axis."""
    _, h, w = ac.shape
    y0, y1, wy0, wy1 = (t[rows] for t in _taps(image_size[0], h))
    x0, x1, wx0, wx1 = (t[cols] for t in _taps(image_size[1], w))
    return (
        ac[:, y0, x0] * (wy0 * wx0)
        + ac[:, y0, x1] * (wy0 * wx1)
        + ac[:, y1, x0] * (wy1 * wx0)
        + ac[:, y1, x1] * (wy1 * wx1)
    )


def region_nss(
    activations: Any,
    image_size: Sequence[int],
    fixations: ArrayLike,
    region_ids: ArrayLike,
    regions: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """NSS of every unit map inside every salient region (He et al. 2019, Eq. 1), exact.

    ``Assoc(u, r) = mean_{f in F_r} (up_u(f) − mean(up_u)) / std(up_u)``, where ``up_u`` is unit
    ``u``'s map bilinearly upsampled to ``image_size`` = (H, W) (as ``interpolate(...,
    mode="bilinear", align_corners=False)``), mean and population std are over the whole
    upsampled map, and ``F_r`` are the fixations whose region id is ``r`` (each point counts,
    duplicates twice; its pixel is ``(rint(y), rint(x))``). Computed in float64 without
    materialising the upsampled maps (see the module docstring).

    Parameters
    ----------
    activations: ``(units, h, w)`` numpy array or torch tensor.
    image_size: ``(H, W)`` of the image the fixations refer to.
    fixations: ``(N, 2)`` ``(x, y)`` 0-based pixel coordinates.
    region_ids: ``(N,)`` integer region id of each fixation; ids ≤ 0 mean "no region".
    regions: optional region ids to report, in the given order (unique, positive). A listed
        region with no fixation gets an all-NaN column; fixations of unlisted regions are unused.
        Default: the sorted distinct positive ids in ``region_ids``.

    Returns
    -------
    ``(units, regions)`` float64. Rows of constant maps are NaN.
    """
    a = _activations(activations)
    size = _image_size(image_size)
    rows, cols = point_pixels(fixations, size, "fixations")
    rid = _integer_ids(region_ids, "region_ids")
    if rid.shape[0] != rows.shape[0]:
        raise DataError(
            "region_ids", f"has {rid.shape[0]} entries but there are {rows.shape[0]} fixations"
        )
    if regions is None:
        cols_ids = np.unique(rid[rid > 0])
    else:
        cols_ids = _integer_ids(regions, "regions")
        if np.any(cols_ids <= 0):
            raise DataError("regions", "region ids must be positive (≤ 0 means no region)")
        if np.unique(cols_ids).size != cols_ids.size:
            raise DataError("regions", "contains duplicate region ids")
    n_units, n_reg = a.shape[0], cols_ids.size
    out = np.full((n_units, n_reg), np.nan)
    if n_reg == 0 or n_units == 0:
        return out
    # column index of each fixation (−1: not reported)
    order = np.argsort(cols_ids)
    pos = np.searchsorted(cols_ids, rid, sorter=order)
    pos = np.minimum(pos, n_reg - 1)
    col_of = np.where(cols_ids[order[pos]] == rid, order[pos], -1)
    sel = col_of >= 0
    if not sel.any():
        return out
    ac, _, mu, sd, _ = _centred_moments(a, size)
    vals = _values_at(ac, size, rows[sel], cols[sel])  # (u, n)
    z = (vals - mu[:, None]) / sd[:, None]
    # mean of z over the fixations of each region: sum over runs of fixations sorted by column
    col_sel = col_of[sel]
    by_col = np.argsort(col_sel, kind="stable")
    counts = np.bincount(col_sel, minlength=n_reg)
    has = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[has])[:-1]])
    out[:, has] = np.add.reduceat(z[:, by_col], starts, axis=1) / counts[has]
    return out


def _binary_mask(mask: ArrayLike, size: tuple[int, int]) -> NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.shape != size:
        raise DataError("mask", f"shape {m.shape} does not match image_size {size}")
    if m.dtype != np.bool_:
        mv = m.astype(np.float64)
        if not np.all((mv == 0) | (mv == 1)):
            raise DataError("mask", "must be binary (bool or 0/1)")
        m = mv == 1
    if not m.any():
        raise DataError("mask", "is empty (no pixel inside the target)")
    return m


def unit_nmm(activations: Any, image_size: Sequence[int], mask: ArrayLike) -> NDArray[np.float64]:
    """NMM (He et al. 2019, Eq. 4; definition as in :func:`dissect.metrics.nmm`) of every unit's
    map upsampled to ``image_size`` under the (H, W) target ``mask``: the mean over the mask of
    the upsampled map standardised by its own mean and population std. Exact, float64, computed
    as ``(Σ (Uyᵀ M Ux) ⊙ A / |M| − μ) / σ`` without upsampling. Returns ``(units,)``; NaN for a
    constant map; an empty or mis-shaped mask → ``DataError``.
    """
    a = _activations(activations)
    size = _image_size(image_size)
    m = _binary_mask(mask, size)
    _, h, w = a.shape
    uy = _upsample_matrix(size[0], h)
    ux = _upsample_matrix(size[1], w)
    with _single_threaded_blas():
        wm = uy.T @ (m.astype(np.float64) @ ux)  # (h, w)
    ac, _, mu, sd, _ = _centred_moments(a, size)
    inside = np.einsum("uij,ij->u", ac, wm) / float(m.sum())
    return (inside - mu) / sd


# --------------------------------------------------------------------------------------------
# torch, differentiable
# --------------------------------------------------------------------------------------------
def nss_at_points_torch(
    maps: torch.Tensor, image_size: Sequence[int], points: torch.Tensor
) -> torch.Tensor:
    """Differentiable NSS of each map in ``maps`` (B, h, w), bilinearly upsampled to
    ``image_size`` (as ``interpolate(..., mode="bilinear", align_corners=False)``), at
    ``points`` (N, 2) ``(x, y)`` (long, or float rounded half-to-even like numpy ``rint``; each
    point counts). Same exact math as :func:`region_nss`, on the maps' device, autograd-friendly
    (for training readouts). Returns ``(B,)`` in the maps' dtype; NaN for a constant map (with a
    zero, not NaN, gradient into the other maps).

    The statistics are computed in the maps' dtype when it is float32 or float64 and in float32
    for narrower dtypes (float16, bfloat16: their sums over an image overflow or lose every
    digit), on each map divided by the power of two that brings its max|A| into [0.5, 1) (exact:
    float32/float64 results and gradients are bit for bit those without it, and maps of any
    finite magnitude neither overflow nor underflow). Constant means std ≤ ``max(1e-10,
    10·eps) × max|A|``, eps of the computing dtype. NaN/inf map values or points →
    :class:`~dissect.errors.DataError`.
    """
    import torch

    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or not maps.is_floating_point():
        raise DataError("maps", "must be a floating-point tensor of shape (B, h, w)")
    if not bool(torch.isfinite(maps).all()):
        raise DataError("maps", "contains NaN/inf values")
    hh, ww = _image_size(image_size)
    pts = torch.as_tensor(points)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise DataError("points", f"must be a non-empty (N, 2) tensor, got {tuple(pts.shape)}")
    pts = pixel_indices_torch(pts, "points").cpu()  # refuses NaN/inf points
    xs, ys = pts[:, 0], pts[:, 1]
    bad = (xs < 0) | (xs > ww - 1) | (ys < 0) | (ys > hh - 1)
    if bool(bad.any()):
        raise DataError("points", f"{int(bad.sum())} point(s) outside the {hh}x{ww} image")
    _, h, w = maps.shape
    work = torch.promote_types(maps.dtype, torch.float32)  # float16/bfloat16 → float32
    x = maps.to(work)
    with torch.no_grad():
        amax = x.abs().amax(dim=(1, 2))
        # 2**-k as an exact power of two of the computing dtype (k clamped to its normal range)
        k = pow2_exponent(amax.double().cpu().numpy())
        lim = int(np.log2(torch.finfo(work).max)) - 1
        factor = torch.tensor(np.ldexp(1.0, -np.clip(k, -lim, lim)), dtype=work)
        factor = factor.to(maps.device)
    x = x * factor[:, None, None]
    opts = {"dtype": work, "device": maps.device}
    uy = torch.tensor(_upsample_matrix(hh, h), **opts)  # copies: the cached arrays are read-only
    ux = torch.tensor(_upsample_matrix(ww, w), **opts)
    sy, gy = (torch.tensor(t, **opts) for t in _axis_terms(hh, h))
    sx, gx = (torch.tensor(t, **opts) for t in _axis_terms(ww, w))
    n = float(hh) * float(ww)
    ac = x - x.mean(dim=(1, 2), keepdim=True)
    mu = torch.einsum("i,bij,j->b", sy, ac, sx) / n
    e2 = (ac * (gy @ ac @ gx)).sum(dim=(1, 2)) / n
    var = e2 - mu * mu
    with torch.no_grad():
        rtol = max(CONSTANT_RTOL, 10.0 * torch.finfo(work).eps)
        scale = x.abs().amax(dim=(1, 2))
        cscale = ac.abs().amax(dim=(1, 2))
        const = (var <= (rtol * scale) ** 2) | (var <= (CENTRED_RTOL * cscale) ** 2)
    sd = torch.sqrt(torch.where(const, torch.ones_like(var), var))
    ry = uy[ys.to(maps.device)]
    rx = ux[xs.to(maps.device)]
    vals = torch.einsum("ni,bij,nj->bn", ry, ac, rx)
    out = (vals.mean(dim=1) - mu) / sd
    return torch.where(const, torch.full_like(out, float("nan")), out).to(maps.dtype)
