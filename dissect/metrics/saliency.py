"""Saliency-map metrics after the MIT/Tübingen saliency benchmark (Bylinskii et al., "What do
different evaluation metrics tell us about saliency models?", TPAMI 2019), in numpy, float64.

Conventions shared by every function here
-----------------------------------------
* Maps are 2-D arrays of shape ``(H, W)``; they are converted to float64.
* ``fixations`` is either an ``(N, 2)`` array of ``(x, y)`` 0-based pixel coordinates (x to the
  right, y down; floats allowed) or a binary map of the image's shape.

  - Points: a fixation's pixel is ``(rint(y), rint(x))`` with numpy's ``rint`` (round half to
    even, so 0.5 → 0 and 1.5 → 2); the rounded pixel must lie inside the image, else
    ``DataError``. Each point counts, so duplicates count twice.
  - Binary map (values 0/1, or a bool array): each fixated pixel counts once. Pass a bool array to
    force the map reading when the image is exactly 2 pixels wide.
* NaN or ±inf anywhere → ``DataError`` naming the argument; shape mismatches → ``DataError``.
* NSS, CC and NMM use the population standard deviation (``ddof=0``; the MATLAB benchmark uses
  ``ddof=1``, which scales NSS by ``sqrt((n-1)/n)``, negligible for images). A map is *constant*
  when its std is ≤ ``1e-10 × max|map|`` (i.e. zero up to float rounding); metrics that divide by
  the std return NaN for it, never 0 or inf.
* Scale: each map is first divided by the power of two that brings max|map| into [0.5, 1)
  (exact, so results are bit for bit unchanged; a map scaled by 1e200 or 1e-200 then scores as
  the unscaled map instead of overflowing or underflowing).

Benchmark conventions (``conventions="mit"``)
---------------------------------------------
Every map metric except ``nmm`` takes ``conventions="dissect"`` (default: everything above,
unchanged) or ``"mit"``: a transcription of the MIT benchmark's MATLAB code (``cvzoya/saliency``,
``code_forMetrics``: ``NSS.m``, ``CC.m``, ``similarity.m``, ``KLdiv.m``, ``AUC_Judd.m``,
``AUC_Borji.m``, ``AUC_shuffled.m``, ``InfoGain.m``). Shared by all of them under ``"mit"``:

* Fixations are a *binary fixation map*. A 2-D array that is bool or not 2 columns wide is read
  as that map (0/1 values); ``(N, 2)`` points are turned into one, each fixated pixel set once
  (duplicates collapse), at the project's pixel ``(rint(y), rint(x))`` — the benchmark's own
  rounding of coordinates is not confirmed. The map's size is the *fixation map size*: the
  binary map's shape, else ``size=(H, W)``, else the saliency map's shape.
* Resizing: a saliency map (for CC/SIM/KLD: the first map) of another shape than the fixation
  map (the second map) is resized to it with :func:`matlab_imresize` — MATLAB ``imresize``'s
  default, bicubic (a = −0.5) with antialiasing when shrinking and mirrored borders, written
  from the published algorithm (not run against MATLAB; MATLAB also resizes the dimensions in
  order of scale and, for uint8 maps, rounds and clamps, neither of which is done here). With
  ``"dissect"`` a shape mismatch stays a ``DataError`` and ``size`` must be the map's shape.
* Randomness (AUC-Judd's jitter, AUC-Borji's and sAUC's draws) comes from a seeded numpy
  ``Generator`` (``rng``; seed 0 by default), so scores are reproducible but never equal to
  MATLAB's unseeded global stream. Map vectors are taken in MATLAB's column-major order.
* Min–max normalisation divides by ``max − min``: a constant map (exactly) gives NaN, where
  MATLAB's 0/0 NaN map would propagate through its comparisons (what MATLAB returns then is not
  confirmed). NSS and CC keep the ``CONSTANT_RTOL`` test (with the N − 1 std).
* No fixation, NaN/inf, out-of-image points → ``DataError`` as with ``"dissect"`` (the
  benchmark returns NaN for an empty fixation map).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dissect.errors import DataError
from dissect.metrics.conventions import (
    CONSTANT_RTOL,
    EPS,
    check_conventions,
    pixel_indices,
    pow2_exponent,
)

__all__ = [
    "EPS",
    "auc_borji",
    "auc_judd",
    "cc",
    "information_gain",
    "kld",
    "imresize_matrix",
    "matlab_colon",
    "matlab_imresize",
    "nmm",
    "nss",
    "sauc",
    "sim",
]


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
def _as_map(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """A finite 2-D float64 array, or ``DataError`` naming ``name``."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(name, f"cannot be read as a numeric array ({exc})") from exc
    if a.ndim != 2:
        raise DataError(name, f"must be a 2-D map (H, W), got shape {a.shape}")
    if a.size == 0:
        raise DataError(name, f"is empty (shape {a.shape})")
    _check_finite(a, name)
    return a


def _check_finite(a: NDArray[Any], name: str) -> None:
    if not np.all(np.isfinite(a)):
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise DataError(name, f"contains {n_nan} NaN and {n_inf} infinite value(s)")


def _same_shape(a: NDArray[Any], b: NDArray[Any], name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise DataError(name_b, f"shape {b.shape} does not match {name_a} shape {a.shape}")


def point_pixels(
    points: ArrayLike, shape: tuple[int, int], name: str = "fixations"
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pixel indices ``(rows, cols)`` of ``(N, 2)`` ``(x, y)`` points in an image of ``shape``.

    The pixel is ``(rint(y), rint(x))`` (numpy ``rint``: round half to even). NaN/inf or a rounded
    pixel outside ``[0, H-1] × [0, W-1]`` → ``DataError`` naming ``name``.
    """
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(name, f"cannot be read as (N, 2) points ({exc})") from exc
    if p.ndim != 2 or p.shape[1] != 2:
        raise DataError(
            name,
            f"must be an (N, 2) array of (x, y) points or a binary map of shape {shape}, "
            f"got shape {p.shape}",
        )
    _check_finite(p, name)
    h, w = shape
    ys, xs = pixel_indices(p)
    bad = (xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            name,
            f"{int(bad.sum())} point(s) outside the {h}x{w} image (x in [0, {w - 1}], "
            f"y in [0, {h - 1}] after rounding), first: #{i} (x={p[i, 0]:g}, y={p[i, 1]:g})",
        )
    return ys.astype(np.intp), xs.astype(np.intp)


def _is_binary_map(f: NDArray[Any], shape: tuple[int, int]) -> bool:
    if f.ndim != 2:
        return False
    if f.dtype == np.bool_:
        return True
    return f.shape == shape and f.shape[1] != 2


def fixation_pixels(
    fixations: ArrayLike, shape: tuple[int, int], name: str = "fixations"
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Flattened pixel indices of ``fixations`` (points with multiplicity, or a binary map's
    fixated pixels once each), checked against an image of ``shape``: ``(rows, cols)``."""
    f = np.asarray(fixations)
    if _is_binary_map(f, shape):
        if f.shape != shape:
            raise DataError(name, f"binary map shape {f.shape} does not match map shape {shape}")
        rows, cols = np.nonzero(_binary_map(f, name))
        return rows.astype(np.intp), cols.astype(np.intp)
    return point_pixels(f, shape, name)


def _binary_map(f: NDArray[Any], name: str) -> NDArray[np.bool_]:
    """``f`` (bool, or numbers that are all 0 or 1) as a bool map, else ``DataError``."""
    if f.dtype == np.bool_:
        return f
    fv = f.astype(np.float64)
    _check_finite(fv, name)
    if not np.all((fv == 0) | (fv == 1)):
        raise DataError(
            name,
            "a fixation map must be binary (0/1); pass (N, 2) points to count repeated fixations",
        )
    return fv == 1


def _fixated_values(
    smap: NDArray[np.float64], fixations: ArrayLike, name: str = "fixations"
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Map values at the fixations (with multiplicity) and the flat indices of the fixations."""
    rows, cols = fixation_pixels(fixations, smap.shape, name)
    if rows.size == 0:
        raise DataError(name, "contains no fixation")
    flat = np.ravel_multi_index((rows, cols), smap.shape)
    return smap.ravel()[flat], flat


def _unit_scaled(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """``a`` divided by the power of two that brings max|a| into [0.5, 1) (exact; see
    :func:`dissect.metrics.conventions.pow2_exponent`): sums of values and of squares of a map of
    any finite magnitude then neither overflow nor underflow, and scale-invariant results are
    bit for bit those of the unscaled computation wherever that one does not overflow."""
    return np.ldexp(a, -pow2_exponent(np.max(np.abs(a))))


def _standardise(a: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """``(a - mean) / std`` with the population std, or ``None`` for a constant map."""
    a = _unit_scaled(a)
    mu = a.mean()
    sd = a.std()
    scale = float(np.max(np.abs(a)))
    if not sd > CONSTANT_RTOL * scale:
        return None
    return (a - mu) / sd


def _to_distribution(a: NDArray[np.float64], name: str) -> NDArray[np.float64]:
    if np.any(a < 0):
        raise DataError(name, f"is not a density: {int((a < 0).sum())} negative value(s)")
    a = _unit_scaled(a)
    total = a.sum()
    if not total > 0:
        raise DataError(name, "is not a density: it sums to 0")
    return a / total


# --------------------------------------------------------------------------------------------
# MIT benchmark conventions: resizing, fixation maps, thresholds
# --------------------------------------------------------------------------------------------
def _keys_cubic(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The cubic convolution kernel of MATLAB ``imresize`` (Keys, a = −0.5), support [−2, 2]."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def imresize_matrix(n_out: int, n_in: int) -> NDArray[np.float64]:
    """``(n_out, n_in)`` matrix of MATLAB ``imresize``'s default 1-D resampling (bicubic,
    antialiasing on), as its algorithm is published: scale ``s = n_out / n_in``; output sample
    ``i`` (1-based) sits at input coordinate ``u = i/s + (1 − 1/s)/2``; the kernel is the Keys
    cubic (a = −0.5), widened to ``s·k(s·x)`` with support ``4/s`` when shrinking
    (antialiasing); the weights of the integer positions within the support are normalised to
    sum 1 and positions outside ``1..n_in`` are mirrored (``…, 2, 1, 1, 2, …``).
    ``n_out == n_in`` gives the identity."""
    scale = n_out / n_in
    if scale < 1.0:
        width = 4.0 / scale

        def kernel(x: NDArray[np.float64]) -> NDArray[np.float64]:
            return scale * _keys_cubic(scale * x)

    else:
        width = 4.0
        kernel = _keys_cubic
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(np.ceil(width)) + 2
    positions = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    weights = kernel(u[:, None] - positions)
    weights = weights / weights.sum(axis=1, keepdims=True)
    folded = (positions.astype(np.int64) - 1) % (2 * n_in)
    cols = np.where(folded < n_in, folded, 2 * n_in - 1 - folded)
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    out = np.zeros((n_out, n_in))
    np.add.at(out, (rows, cols), weights)
    return out


def matlab_imresize(a: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    """``a`` resized to ``shape`` like MATLAB's ``imresize(a, shape)`` for a double map:
    ``Wy · a · Wxᵀ`` with the matrices of :func:`imresize_matrix`. ``a`` itself (float64) when
    the shape already matches; a constant map stays exactly constant (the normalised weights
    would otherwise add rounding noise that min–max normalisation amplifies).

    Differences from MATLAB, by construction: MATLAB resizes one dimension after the other (the
    one with the smaller scale first), which rounds differently in the last bits; a uint8 or
    other integer map is rounded and clamped by MATLAB, not here. Not run against MATLAB."""
    m = np.asarray(a, dtype=np.float64)
    h, w = int(shape[0]), int(shape[1])
    if m.shape == (h, w):
        return m
    if m.min() == m.max():
        return np.full((h, w), m.flat[0])
    return imresize_matrix(h, m.shape[0]) @ m @ imresize_matrix(w, m.shape[1]).T


def matlab_colon(a: float, d: float, b: float) -> NDArray[np.float64]:
    """MATLAB's ``a:d:b`` for ``d > 0``, as MathWorks describes its algorithm: the number of
    intervals ``n = floor((b − a)/d)``, raised by one when ``a + (n+1)·d`` overshoots ``b`` by
    less than ``tol = 2·eps·max(|a|, |b|)``; the last value ``c = a + n·d``, replaced by ``b``
    when within ``tol`` of it; the first half of the values is ``a + k·d`` and the second half
    ``c − k·d`` (counting from the end), the middle one ``(a + c)/2`` when ``n`` is even. So
    ``0:0.1:1`` holds 0.30000000000000004 where ``k/10`` is 0.3. Empty when ``b < a`` or ``b``
    is NaN. Known MATLAB values (``0:0.1:0.3`` ends at exactly 0.3, its third value is
    0.2 − 2.8e-17) are reproduced; the rest is not run against MATLAB."""
    if not b >= a:
        return np.zeros(0)
    tol = 2.0 * EPS * max(abs(a), abs(b))
    n = int(np.floor((b - a) / d))
    if a + (n + 1) * d - b < tol:
        n += 1
    c = a + n * d
    if c - b > -tol:
        c = b
    k = np.arange(n // 2 + 1)
    v = np.empty(n + 1)
    v[k] = a + k * d
    v[n - k] = c - k * d
    if n % 2 == 0:
        v[n // 2] = (a + c) / 2.0
    return v


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
        ok = all(int(v) == v for v in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise DataError("size", f"must be a pair of positive integers (H, W), got {size!r}")
    return h, w


def _check_dissect_size(size: Any, shape: tuple[int, ...]) -> None:
    """``size`` with the project's conventions: ``None`` or the map's own shape."""
    target = _check_size(size)
    if target is not None and target != shape:
        raise DataError(
            "size",
            f"{target} differs from the saliency map shape {shape}; maps are resized only with "
            "conventions='mit'",
        )


def _is_mit_map(f: NDArray[Any]) -> bool:
    return f.ndim == 2 and (f.dtype == np.bool_ or f.shape[1] != 2)


def _mit_fixation_map(
    fixations: ArrayLike,
    shape: tuple[int, int],
    *,
    fixed: bool,
    name: str = "fixations",
) -> NDArray[np.bool_]:
    """The benchmark's binary fixation map: a binary map as given (its shape must be ``shape``
    when ``fixed``), or ``(N, 2)`` points set once each in a map of ``shape``. No fixation →
    ``DataError``."""
    f = np.asarray(fixations)
    if _is_mit_map(f):
        if f.size == 0:
            raise DataError(name, f"is empty (shape {f.shape})")
        fmap = _binary_map(f, name)
        if fixed and fmap.shape != shape:
            raise DataError(name, f"binary map shape {fmap.shape} does not match {shape}")
    else:
        rows, cols = point_pixels(f, shape, name)
        fmap = np.zeros(shape, dtype=bool)
        fmap[rows, cols] = True
    if not fmap.any():
        raise DataError(name, "contains no fixation")
    return fmap


def _mit_fixations(
    fixations: ArrayLike, default_shape: tuple[int, ...], size: Any
) -> NDArray[np.bool_]:
    target = _check_size(size)
    shape = target if target is not None else (int(default_shape[0]), int(default_shape[1]))
    return _mit_fixation_map(fixations, shape, fixed=target is not None)


def _mit_unit_range(m: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """``(m − min)/(max − min)`` (after the exact power-of-two scaling), ``None`` when constant."""
    m = _unit_scaled(m)
    lo, hi = m.min(), m.max()
    if not hi > lo:
        return None
    return (m - lo) / (hi - lo)


def _mit_step_auc(pos: NDArray[np.float64], neg: NDArray[np.float64]) -> float:
    """One split of ``AUC_Borji.m`` / ``AUC_shuffled.m``: thresholds ``fliplr(0:0.1:max)`` over
    the pooled values, rates with ``>=``, ``(0,0)`` and ``(1,1)`` added, trapezoid rule."""
    top = float(max(pos.max(), neg.max()))
    thresholds = matlab_colon(0.0, 0.1, top)[::-1]
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    tp = (pos.size - np.searchsorted(pos_sorted, thresholds, side="left")) / pos.size
    fp = (neg.size - np.searchsorted(neg_sorted, thresholds, side="left")) / neg.size
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float(np.trapezoid(tp, fp))


# --------------------------------------------------------------------------------------------
# location-based metrics
# --------------------------------------------------------------------------------------------
def nss(
    saliency_map: ArrayLike,
    fixations: ArrayLike,
    *,
    conventions: str = "dissect",
    size: tuple[int, int] | None = None,
) -> float:
    """Normalized Scanpath Saliency (Peters et al. 2005; He et al. 2019, Eq. 1 per region).

    ``NSS = mean_{f in fixations} (S(f) - mean(S)) / std(S)`` with the population std over the
    whole map. Points count with multiplicity; a binary map counts each fixated pixel once.
    A constant map → NaN. No fixation → ``DataError``. ``size`` must be ``None`` or the map's
    shape.

    ``conventions="mit"`` (``NSS.m``): the fixations become a binary map (each pixel once) of
    the fixation map size (``size`` for points, default the saliency map's shape), the map is
    resized to it (:func:`matlab_imresize`), standardised with the *sample* std (N − 1, which
    scales NSS by ``sqrt((N−1)/N)``), and averaged over the fixated pixels. A constant map → NaN
    (``CONSTANT_RTOL`` on the N − 1 std), as MATLAB's 0/0.
    """
    conventions = check_conventions(conventions)
    s = _as_map(saliency_map, "saliency_map")
    if conventions == "mit":
        return _nss_mit(s, fixations, size)
    _check_dissect_size(size, s.shape)
    z = _standardise(s)
    if z is None:
        # still validate the fixations so that bad input never passes silently
        _fixated_values(s, fixations)
        return float("nan")
    vals, _ = _fixated_values(z, fixations)
    return float(vals.mean())


def _nss_mit(s: NDArray[np.float64], fixations: ArrayLike, size: Any) -> float:
    fmap = _mit_fixations(fixations, s.shape, size)
    m = matlab_imresize(_unit_scaled(s), fmap.shape)
    if m.size < 2:
        return float("nan")
    sd = m.std(ddof=1)
    if not sd > CONSTANT_RTOL * float(np.max(np.abs(m))):
        return float("nan")
    return float(((m - m.mean()) / sd)[fmap].mean())


def nmm(saliency_map: ArrayLike, mask: ArrayLike) -> float | NDArray[np.float64]:
    """Normalised map mean of ``saliency_map`` inside the target ``mask`` (He et al. 2019, Eq. 4).

    Definition used (the paper's text could not be confirmed from the sources available when
    this was written, so this is the NSS-style reading of the name): the mean, over the pixels
    of ``mask``, of the map standardised by its own mean and population std over the whole image,
    ``NMM = mean_{p in mask} (S(p) - mean(S)) / std(S)`` — i.e. NSS with the mask as the set of
    fixated pixels (each pixel once). A constant map → NaN; an empty mask, a mask of another
    shape or a non-binary mask → ``DataError``. A stack of masks ``(K, H, W)`` gives an array
    ``(K,)``, the map standardised once.
    """
    s = _as_map(saliency_map, "saliency_map")
    stacked = np.ndim(mask) == 3
    masks = [_nmm_mask(m, s.shape) for m in (mask if stacked else [mask])]
    z = _standardise(s)
    out = np.array([float("nan") if z is None else float(z[m].mean()) for m in masks])
    return out if stacked else float(out[0])


def _nmm_mask(mask: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.shape != shape:
        raise DataError("mask", f"shape {m.shape} does not match saliency_map shape {shape}")
    if m.dtype != np.bool_:
        mv = m.astype(np.float64)
        _check_finite(mv, "mask")
        if not np.all((mv == 0) | (mv == 1)):
            raise DataError("mask", "must be binary (bool or 0/1)")
        m = mv == 1
    if not m.any():
        raise DataError("mask", "is empty (no pixel inside the target)")
    return m


def auc_judd(
    saliency_map: ArrayLike,
    fixations: ArrayLike,
    *,
    conventions: str = "dissect",
    size: tuple[int, int] | None = None,
    rng: np.random.Generator | int | None = None,
) -> float:
    """AUC-Judd (Judd et al. 2009; benchmark ``AUC_Judd.m``).

    Positives are the map values at the fixations (with multiplicity for points); negatives are
    the values at all pixels that are not fixated. Thresholds are the distinct fixated values,
    from high to low; at each threshold ``t`` the true-positive rate is the fraction of
    fixations with value ≥ t and the false-positive rate the fraction of non-fixated pixels with
    value ≥ t. The ROC curve ``(0,0) → … → (1,1)`` is integrated with the trapezoid rule.

    The benchmark code breaks ties by adding random jitter (≤ 1e-7) to the map; here ties are
    resolved deterministically by using each distinct fixated value once, which gives the same
    score whenever there are no ties (a constant map scores 0.5). All pixels fixated → NaN.
    ``rng`` is not used; ``size`` must be ``None`` or the map's shape.

    ``conventions="mit"`` (``AUC_Judd.m`` with its default ``jitter=1``): binary fixation map
    (each pixel once; ``size`` as in :func:`nss`); the map resized to it; the jitter
    ``rand(size)/1e7`` added — here ``rng.random(shape) / 1e7`` from ``rng`` (a ``Generator``,
    a seed, or ``None`` for seed 0), absolute, so it reorders values closer than 1e-7 and breaks
    every tie at random; then min–max normalisation; one threshold per fixated pixel, in
    descending order, duplicates included: ``tp(i) = i/Nfix``, ``fp(i) = (#{S ≥ t_i} − i) /
    (Npix − Nfix)``; trapezoid rule. A constant map therefore scores ≈ 0.5 at random; a map
    still constant after the jitter (values ≳ 1e9) → NaN; every pixel fixated → NaN. The
    ``jitter=0`` variant is not offered.
    """
    conventions = check_conventions(conventions)
    s = _as_map(saliency_map, "saliency_map")
    if conventions == "mit":
        return _auc_judd_mit(s, fixations, size, rng)
    _check_dissect_size(size, s.shape)
    pos, flat = _fixated_values(s, fixations)
    fixated = np.zeros(s.size, dtype=bool)
    fixated[flat] = True
    neg = s.ravel()[~fixated]
    if neg.size == 0:
        return float("nan")
    thresholds = np.unique(pos)[::-1]
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    tp = (pos.size - np.searchsorted(pos_sorted, thresholds, side="left")) / pos.size
    fp = (neg.size - np.searchsorted(neg_sorted, thresholds, side="left")) / neg.size
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float(np.trapezoid(tp, fp))


def _auc_judd_mit(
    s: NDArray[np.float64],
    fixations: ArrayLike,
    size: Any,
    rng: np.random.Generator | int | None,
) -> float:
    fmap = _mit_fixations(fixations, s.shape, size)
    m = matlab_imresize(s, fmap.shape)
    m = m + _as_generator(rng).random(m.shape) / 1e7
    unit = _mit_unit_range(m)
    if unit is None:
        return float("nan")
    values = unit.ravel(order="F")
    fixated = values[fmap.ravel(order="F")]
    n_fix, n_pix = fixated.size, values.size
    if n_pix == n_fix:
        return float("nan")
    thresholds = np.sort(fixated)[::-1]
    above = n_pix - np.searchsorted(np.sort(values), thresholds, side="left")
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / (n_pix - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp))


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _unit_range(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Map rescaled to [0, 1] as in the benchmark; a constant map becomes all zeros."""
    s = _unit_scaled(s)
    lo, hi = s.min(), s.max()
    if hi > lo:
        return (s - lo) / (hi - lo)
    return np.zeros_like(s)


_STEP_THRESHOLDS = np.arange(10, -1, -1) / 10.0  # 1.0, 0.9, …, 0.0


def _step_auc(pos: NDArray[np.float64], neg: NDArray[np.float64]) -> NDArray[np.float64]:
    """Benchmark-style AUC with thresholds 1.0, 0.9, …, 0 on [0,1] values, one per row of neg.

    ``pos``: (P,), ``neg``: (splits, K). Thresholds above a split's maximum add (0, 0) points,
    which add no area, so one fixed threshold list reproduces the benchmark's per-split list.
    """
    t = _STEP_THRESHOLDS
    tp = (pos[None, :] >= t[:, None]).mean(axis=1)  # (T,)
    fp = (neg[:, None, :] >= t[None, :, None]).mean(axis=2)  # (splits, T)
    n = neg.shape[0]
    tp = np.concatenate([np.zeros(1), tp, np.ones(1)])
    fp = np.concatenate([np.zeros((n, 1)), fp, np.ones((n, 1))], axis=1)
    return np.trapezoid(np.broadcast_to(tp, fp.shape), fp, axis=1)


def auc_borji(
    saliency_map: ArrayLike,
    fixations: ArrayLike,
    n_splits: int = 100,
    rng: np.random.Generator | int | None = None,
    *,
    conventions: str = "dissect",
    size: tuple[int, int] | None = None,
) -> float:
    """AUC-Borji (Borji et al. 2013; benchmark ``AUC_Borji.m``, step size 0.1).

    The map is rescaled to [0, 1]. Positives are the values at the fixations (with
    multiplicity); for each of ``n_splits`` splits, as many negatives as there are fixations
    are drawn uniformly at random (with replacement) from all pixels of the image. TPR/FPR are
    computed at the thresholds 1.0, 0.9, …, 0.0, the curve integrated with the trapezoid rule and
    the score averaged over splits. ``rng``: a ``numpy.random.Generator``, a seed, or ``None``
    for the fixed seed 0 (scores are reproducible by default). A constant map scores 0.5.
    ``size`` must be ``None`` or the map's shape.

    ``conventions="mit"`` (``AUC_Borji.m``, ``stepSize=0.1``): binary fixation map (each pixel
    once; ``size`` as in :func:`nss`); the map resized to it and min–max normalised (a constant
    map → NaN); positives at the fixated pixels; ``r = rng.integers(0, Npix, (n_splits, Nfix))``
    stands for MATLAB's ``randi([1 Npixels], [Nfixations, Nsplits])`` (indices into the
    column-major map vector); per split the thresholds are ``fliplr(0:0.1:max([Sth; curfix]))``
    with MATLAB's colon values (:func:`matlab_colon`, e.g. 0.30000000000000004, which matters
    only for values lying exactly on a threshold); rates with ``>=``; trapezoid rule; mean over
    splits. With a single fixated pixel MATLAB's ``S(r)`` returns a column and the code fails;
    here it is scored like any other case.
    """
    if n_splits < 1:
        raise DataError("n_splits", f"must be ≥ 1, got {n_splits}")
    conventions = check_conventions(conventions)
    if conventions == "mit":
        s = _as_map(saliency_map, "saliency_map")
        return _auc_borji_mit(s, fixations, n_splits, rng, size)
    s = _unit_range(_as_map(saliency_map, "saliency_map"))
    _check_dissect_size(size, s.shape)
    pos, _ = _fixated_values(s, fixations)
    gen = _as_generator(rng)
    idx = gen.integers(0, s.size, size=(n_splits, pos.size))
    neg = s.ravel()[idx]
    return float(_step_auc(pos, neg).mean())


def _auc_borji_mit(
    s: NDArray[np.float64],
    fixations: ArrayLike,
    n_splits: int,
    rng: np.random.Generator | int | None,
    size: Any,
) -> float:
    fmap = _mit_fixations(fixations, s.shape, size)
    unit = _mit_unit_range(matlab_imresize(s, fmap.shape))
    if unit is None:
        return float("nan")
    values = unit.ravel(order="F")
    fixated = values[fmap.ravel(order="F")]
    draws = _as_generator(rng).integers(0, values.size, size=(n_splits, fixated.size))
    return float(np.mean([_mit_step_auc(fixated, values[row]) for row in draws]))


def sauc(
    saliency_map: ArrayLike,
    fixations: ArrayLike,
    nonfixations: ArrayLike,
    *,
    n_splits: int | None = None,
    rng: np.random.Generator | int | None = None,
    conventions: str = "dissect",
    size: tuple[int, int] | None = None,
) -> float:
    """Shuffled AUC (Zhang et al. 2008; benchmark ``AUC_shuffled.m``).

    Positives are the map values at ``fixations``; negatives the values at ``nonfixations``
    (typically the fixations of other images: (N, 2) points with multiplicity, or a binary map
    of the image's shape, each pixel once).

    * ``n_splits=None`` (default): the exact, deterministic AUC of positives against *all*
      negatives over all thresholds, ties counting one half (the Mann–Whitney statistic, as in
      pysaliency).
    * ``n_splits=k``: the benchmark procedure — the map rescaled to [0, 1]; in each of ``k``
      splits ``min(#fixations, #nonfixations)`` negatives drawn without replacement; thresholds
      1.0, 0.9, …, 0.0; trapezoid rule; mean over splits. ``rng`` as in :func:`auc_borji`.

    ``size`` must be ``None`` or the map's shape.

    ``conventions="mit"`` (``AUC_shuffled.m``, ``stepSize=0.1``): always the split procedure,
    ``n_splits=None`` meaning the benchmark's 100. Binary fixation map (each pixel once; ``size``
    as in :func:`nss`) and the map resized to it and min–max normalised (a constant map → NaN);
    ``nonfixations`` become a binary ``otherMap`` of the same size (points set once each; a
    binary map must have that shape), ``ind`` its pixels in column-major order;
    ``Nfixations_oth = min(Nfix, numel(ind))``; per split ``rng.permutation(numel(ind))`` stands
    for ``randperm`` and its first ``Nfixations_oth`` entries pick the negatives; thresholds
    ``fliplr(0:0.1:max([Sth; curfix]))`` (:func:`matlab_colon`); rates with ``>=``; trapezoid
    rule; mean over splits. Building ``otherMap`` (MIT: the union of 10 other images' fixation
    maps, each ``imresize``d) is the caller's part.
    """
    conventions = check_conventions(conventions)
    s = _as_map(saliency_map, "saliency_map")
    if conventions == "mit":
        splits = 100 if n_splits is None else n_splits
        if splits < 1:
            raise DataError("n_splits", f"must be ≥ 1, got {splits}")
        return _sauc_mit(s, fixations, nonfixations, splits, rng, size)
    _check_dissect_size(size, s.shape)
    if n_splits is None:
        pos, _ = _fixated_values(s, fixations)
        neg, _ = _fixated_values(s, nonfixations, "nonfixations")
        neg = np.sort(neg)
        below = np.searchsorted(neg, pos, side="left")
        below_or_equal = np.searchsorted(neg, pos, side="right")
        return float(np.mean((below + below_or_equal) / (2.0 * neg.size)))
    if n_splits < 1:
        raise DataError("n_splits", f"must be ≥ 1, got {n_splits}")
    s = _unit_range(s)
    pos, _ = _fixated_values(s, fixations)
    neg_all, _ = _fixated_values(s, nonfixations, "nonfixations")
    k = min(pos.size, neg_all.size)
    gen = _as_generator(rng)
    order = np.argsort(gen.random((n_splits, neg_all.size)), axis=1)[:, :k]
    return float(_step_auc(pos, neg_all[order]).mean())


def _sauc_mit(
    s: NDArray[np.float64],
    fixations: ArrayLike,
    nonfixations: ArrayLike,
    n_splits: int,
    rng: np.random.Generator | int | None,
    size: Any,
) -> float:
    fmap = _mit_fixations(fixations, s.shape, size)
    other = _mit_fixation_map(nonfixations, fmap.shape, fixed=True, name="nonfixations")
    unit = _mit_unit_range(matlab_imresize(s, fmap.shape))
    if unit is None:
        return float("nan")
    values = unit.ravel(order="F")
    fixated = values[fmap.ravel(order="F")]
    ind = np.flatnonzero(other.ravel(order="F"))
    k = min(fixated.size, ind.size)
    gen = _as_generator(rng)
    aucs = [
        _mit_step_auc(fixated, values[ind[gen.permutation(ind.size)[:k]]]) for _ in range(n_splits)
    ]
    return float(np.mean(aucs))


def information_gain(
    density: ArrayLike,
    baseline_density: ArrayLike,
    fixations: ArrayLike,
    *,
    conventions: str = "dissect",
    size: tuple[int, int] | None = None,
) -> float:
    """Information gain over a baseline, in bits per fixation (Kümmerer et al. 2015; benchmark
    ``InfoGain.m``).

    ``IG = mean_{f in fixations} [log2(p(f) + eps) - log2(b(f) + eps)]`` with ``p`` and ``b``
    the two densities normalised to sum 1 and ``eps`` = MATLAB ``eps`` = 2**-52 ≈ 2.22e-16
    (:data:`EPS`). Unlike ``InfoGain.m``, the maps are *not* min–max rescaled first (that would
    give the least-salient pixel probability 0); negative values or a zero sum → ``DataError``.
    ``size`` must be ``None`` or the maps' shape.

    ``conventions="mit"`` (``InfoGain.m``): binary fixation map (each pixel once; ``size`` as in
    :func:`nss`, default the density's shape); *both* maps resized to it (so they may differ in
    shape), min–max normalised to [0, 1] (the least salient pixel gets probability 0 and costs
    ≈ −52 bits if fixated; negative values are allowed) and divided by their sums;
    ``mean(log2(eps + p) − log2(eps + b))`` over the fixated pixels. A constant map → NaN (0/0).
    """
    conventions = check_conventions(conventions)
    p = _as_map(density, "density")
    b = _as_map(baseline_density, "baseline_density")
    if conventions == "mit":
        return _information_gain_mit(p, b, fixations, size)
    _same_shape(p, b, "density", "baseline_density")
    _check_dissect_size(size, p.shape)
    p = _to_distribution(p, "density")
    b = _to_distribution(b, "baseline_density")
    pv, flat = _fixated_values(p, fixations)
    bv = b.ravel()[flat]
    return float(np.mean(np.log2(pv + EPS) - np.log2(bv + EPS)))


def _information_gain_mit(
    p: NDArray[np.float64], b: NDArray[np.float64], fixations: ArrayLike, size: Any
) -> float:
    fmap = _mit_fixations(fixations, p.shape, size)
    maps = []
    for m in (p, b):
        unit = _mit_unit_range(matlab_imresize(_unit_scaled(m), fmap.shape))
        if unit is None:
            return float("nan")
        maps.append(unit / unit.sum())
    return float(np.mean(np.log2(EPS + maps[0][fmap]) - np.log2(EPS + maps[1][fmap])))


# --------------------------------------------------------------------------------------------
# distribution-based metrics
# --------------------------------------------------------------------------------------------
def cc(a: ArrayLike, b: ArrayLike, *, conventions: str = "dissect") -> float:
    """Pearson linear correlation coefficient of two maps (benchmark ``CC.m``).

    Both maps are standardised (mean 0, population std 1) and ``CC = mean(za * zb)``. A constant
    map → NaN.

    ``conventions="mit"`` (``CC.m``): ``a`` is resized to ``b``'s shape
    (:func:`matlab_imresize`), both are standardised with the sample std (N − 1) and
    ``corr2`` is taken (centred cross-product over the root of the product of the centred sums
    of squares) — Pearson's r again, so only the resizing changes the value. A constant map →
    NaN (``CONSTANT_RTOL`` on the N − 1 std).
    """
    conventions = check_conventions(conventions)
    x = _as_map(a, "a")
    y = _as_map(b, "b")
    if conventions == "mit":
        return _cc_mit(x, y)
    _same_shape(x, y, "a", "b")
    zx = _standardise(x)
    zy = _standardise(y)
    if zx is None or zy is None:
        return float("nan")
    return float(np.mean(zx * zy))


def _sample_standardise(a: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """``(a − mean)/std`` with the sample std (N − 1), ``None`` for a constant map."""
    a = _unit_scaled(a)
    if a.size < 2:
        return None
    sd = a.std(ddof=1)
    if not sd > CONSTANT_RTOL * float(np.max(np.abs(a))):
        return None
    return (a - a.mean()) / sd


def _cc_mit(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    zx = _sample_standardise(matlab_imresize(_unit_scaled(x), y.shape))
    zy = _sample_standardise(y)
    if zx is None or zy is None:
        return float("nan")
    cx = zx - zx.mean()
    cy = zy - zy.mean()
    return float(np.sum(cx * cy) / np.sqrt(np.sum(cx * cx) * np.sum(cy * cy)))


def sim(a: ArrayLike, b: ArrayLike, *, conventions: str = "dissect") -> float:
    """Similarity (histogram intersection) of two maps (benchmark ``similarity.m``).

    As in the benchmark, each map is rescaled to [0, 1] by its min and max and then normalised to
    sum 1; ``SIM = sum(min(pa, pb))`` ∈ [0, 1]. A constant map (no min–max rescaling possible)
    → NaN.

    ``conventions="mit"`` (``similarity.m``): ``a`` is resized to ``b``'s shape
    (:func:`matlab_imresize`); each map with a nonzero value is min–max normalised and divided
    by its sum, an all-zero map stays all zero (so SIM with it is 0); a constant nonzero map →
    NaN (MATLAB's 0/0 map, which ``similarity.m`` returns as NaN).
    """
    conventions = check_conventions(conventions)
    x = _as_map(a, "a")
    y = _as_map(b, "b")
    if conventions == "mit":
        return _sim_mit(x, y)
    _same_shape(x, y, "a", "b")
    out = []
    for m in (_unit_scaled(x), _unit_scaled(y)):
        lo, hi = m.min(), m.max()
        if not hi > lo:
            return float("nan")
        r = (m - lo) / (hi - lo)
        out.append(r / r.sum())
    return float(np.minimum(out[0], out[1]).sum())


def _sim_mit(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    out = []
    for m in (matlab_imresize(_unit_scaled(x), y.shape), _unit_scaled(y)):
        if not m.any():
            out.append(m)
            continue
        unit = _mit_unit_range(m)
        if unit is None:
            return float("nan")
        out.append(unit / unit.sum())
    return float(np.minimum(out[0], out[1]).sum())


def kld(prediction: ArrayLike, reference: ArrayLike, *, conventions: str = "dissect") -> float:
    """Kullback–Leibler divergence ``KL(reference ‖ prediction)`` in nats (benchmark ``KLdiv.m``).

    The prediction (the saliency map) comes first and the reference (e.g. the human fixation
    density) second, as in the MIT benchmark's ``KLdiv(saliencyMap, fixationMap)`` and in
    pysaliency. Both are normalised to sum 1, then
    ``KLD = sum r · ln(eps + r / (p + eps))`` (r = reference, p = prediction) with ``eps`` =
    MATLAB ``eps`` = 2**-52 ≈ 2.22e-16 (:data:`EPS`), exactly as the benchmark. Negative values
    or a zero sum → ``DataError`` naming the argument.

    ``conventions="mit"`` (``KLdiv.m``): ``prediction`` is resized to ``reference``'s shape
    (:func:`matlab_imresize`); a map with a nonzero value is divided by its sum, an all-zero
    map stays all zero (an all-zero reference scores 0; an all-zero prediction is not
    rejected); same formula. Negative values are still rejected (MATLAB's ``log`` would make the
    score complex); negative values that the bicubic resize itself creates (overshoot next to
    sharp edges) are clipped to 0 — a uint8 map would be clamped by MATLAB's ``imresize``, a
    double one would not (then MATLAB's score may be complex; not reproduced).
    """
    conventions = check_conventions(conventions)
    q = _as_map(prediction, "prediction")
    r = _as_map(reference, "reference")
    if conventions == "mit":
        return _kld_mit(q, r)
    _same_shape(r, q, "reference", "prediction")
    q = _to_distribution(q, "prediction")
    r = _to_distribution(r, "reference")
    return float(np.sum(r * np.log(EPS + r / (q + EPS))))


def _kld_mit(q: NDArray[np.float64], r: NDArray[np.float64]) -> float:
    for m, name in ((q, "prediction"), (r, "reference")):
        if np.any(m < 0):
            raise DataError(name, f"is not a density: {int((m < 0).sum())} negative value(s)")
    q = np.maximum(matlab_imresize(_unit_scaled(q), r.shape), 0.0)
    r = _unit_scaled(r)
    if q.any():
        q = q / q.sum()
    if r.any():
        r = r / r.sum()
    return float(np.sum(r * np.log(EPS + r / (q + EPS))))
