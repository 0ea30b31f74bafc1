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
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dissect.errors import DataError
from dissect.metrics.conventions import CONSTANT_RTOL, EPS, pixel_indices, pow2_exponent

__all__ = [
    "EPS",
    "auc_borji",
    "auc_judd",
    "cc",
    "information_gain",
    "kld",
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
        if f.dtype != np.bool_:
            fv = f.astype(np.float64)
            _check_finite(fv, name)
            if not np.all((fv == 0) | (fv == 1)):
                raise DataError(
                    name,
                    "a fixation map must be binary (0/1); pass (N, 2) points to count "
                    "repeated fixations",
                )
            f = fv == 1
        rows, cols = np.nonzero(f)
        return rows.astype(np.intp), cols.astype(np.intp)
    return point_pixels(f, shape, name)


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
# location-based metrics
# --------------------------------------------------------------------------------------------
def nss(saliency_map: ArrayLike, fixations: ArrayLike) -> float:
    """Normalized Scanpath Saliency (Peters et al. 2005; He et al. 2019, Eq. 1 per region).

    ``NSS = mean_{f in fixations} (S(f) - mean(S)) / std(S)`` with the population std over the
    whole map. Points count with multiplicity; a binary map counts each fixated pixel once.
    A constant map → NaN. No fixation → ``DataError``.
    """
    s = _as_map(saliency_map, "saliency_map")
    z = _standardise(s)
    if z is None:
        # still validate the fixations so that bad input never passes silently
        _fixated_values(s, fixations)
        return float("nan")
    vals, _ = _fixated_values(z, fixations)
    return float(vals.mean())


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


def auc_judd(saliency_map: ArrayLike, fixations: ArrayLike) -> float:
    """AUC-Judd (Judd et al. 2009; benchmark ``AUC_Judd.m``).

    Positives are the map values at the fixations (with multiplicity for points); negatives are
    the values at all pixels that are not fixated. Thresholds are the distinct fixated values,
    from high to low; at each threshold ``t`` the true-positive rate is the fraction of
    fixations with value ≥ t and the false-positive rate the fraction of non-fixated pixels with
    value ≥ t. The ROC curve ``(0,0) → … → (1,1)`` is integrated with the trapezoid rule.

    The benchmark code breaks ties by adding random jitter (≤ 1e-7) to the map; here ties are
    resolved deterministically by using each distinct fixated value once, which gives the same
    score whenever there are no ties (a constant map scores 0.5). All pixels fixated → NaN.
    """
    s = _as_map(saliency_map, "saliency_map")
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
) -> float:
    """AUC-Borji (Borji et al. 2013; benchmark ``AUC_Borji.m``, step size 0.1).

    The map is rescaled to [0, 1]. Positives are the values at the fixations (with
    multiplicity); for each of ``n_splits`` splits, as many negatives as there are fixations
    are drawn uniformly at random (with replacement) from all pixels of the image. TPR/FPR are
    computed at the thresholds 1.0, 0.9, …, 0.0, the curve integrated with the trapezoid rule and
    the score averaged over splits. ``rng``: a ``numpy.random.Generator``, a seed, or ``None``
    for the fixed seed 0 (scores are reproducible by default). A constant map scores 0.5.
    """
    if n_splits < 1:
        raise DataError("n_splits", f"must be ≥ 1, got {n_splits}")
    s = _unit_range(_as_map(saliency_map, "saliency_map"))
    pos, _ = _fixated_values(s, fixations)
    gen = _as_generator(rng)
    idx = gen.integers(0, s.size, size=(n_splits, pos.size))
    neg = s.ravel()[idx]
    return float(_step_auc(pos, neg).mean())


def sauc(
    saliency_map: ArrayLike,
    fixations: ArrayLike,
    nonfixations: ArrayLike,
    *,
    n_splits: int | None = None,
    rng: np.random.Generator | int | None = None,
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
    """
    s = _as_map(saliency_map, "saliency_map")
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


def information_gain(
    density: ArrayLike, baseline_density: ArrayLike, fixations: ArrayLike
) -> float:
    """Information gain over a baseline, in bits per fixation (Kümmerer et al. 2015; benchmark
    ``InfoGain.m``).

    ``IG = mean_{f in fixations} [log2(p(f) + eps) - log2(b(f) + eps)]`` with ``p`` and ``b``
    the two densities normalised to sum 1 and ``eps`` = MATLAB ``eps`` = 2**-52 ≈ 2.22e-16
    (:data:`EPS`). Unlike ``InfoGain.m``, the maps are *not* min–max rescaled first (that would
    give the least-salient pixel probability 0); negative values or a zero sum → ``DataError``.
    """
    p = _as_map(density, "density")
    b = _as_map(baseline_density, "baseline_density")
    _same_shape(p, b, "density", "baseline_density")
    p = _to_distribution(p, "density")
    b = _to_distribution(b, "baseline_density")
    pv, flat = _fixated_values(p, fixations)
    bv = b.ravel()[flat]
    return float(np.mean(np.log2(pv + EPS) - np.log2(bv + EPS)))


# --------------------------------------------------------------------------------------------
# distribution-based metrics
# --------------------------------------------------------------------------------------------
def cc(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson linear correlation coefficient of two maps (benchmark ``CC.m``).

    Both maps are standardised (mean 0, population std 1) and ``CC = mean(za * zb)``. A constant
    map → NaN.
    """
    x = _as_map(a, "a")
    y = _as_map(b, "b")
    _same_shape(x, y, "a", "b")
    zx = _standardise(x)
    zy = _standardise(y)
    if zx is None or zy is None:
        return float("nan")
    return float(np.mean(zx * zy))


def sim(a: ArrayLike, b: ArrayLike) -> float:
    """Similarity (histogram intersection) of two maps (benchmark ``similarity.m``).

    As in the benchmark, each map is rescaled to [0, 1] by its min and max and then normalised to
    sum 1; ``SIM = sum(min(pa, pb))`` ∈ [0, 1]. A constant map (no min–max rescaling possible)
    → NaN.
    """
    x = _as_map(a, "a")
    y = _as_map(b, "b")
    _same_shape(x, y, "a", "b")
    out = []
    for m in (_unit_scaled(x), _unit_scaled(y)):
        lo, hi = m.min(), m.max()
        if not hi > lo:
            return float("nan")
        r = (m - lo) / (hi - lo)
        out.append(r / r.sum())
    return float(np.minimum(out[0], out[1]).sum())


def kld(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Kullback–Leibler divergence ``KL(reference ‖ prediction)`` in nats (benchmark ``KLdiv.m``).

    The prediction (the saliency map) comes first and the reference (e.g. the human fixation
    density) second, as in the MIT benchmark's ``KLdiv(saliencyMap, fixationMap)`` and in
    pysaliency. Both are normalised to sum 1, then
    ``KLD = sum r · ln(eps + r / (p + eps))`` (r = reference, p = prediction) with ``eps`` =
    MATLAB ``eps`` = 2**-52 ≈ 2.22e-16 (:data:`EPS`), exactly as the benchmark. Negative values
    or a zero sum → ``DataError`` naming the argument.
    """
    q = _as_map(prediction, "prediction")
    r = _as_map(reference, "reference")
    _same_shape(r, q, "reference", "prediction")
    q = _to_distribution(q, "prediction")
    r = _to_distribution(r, "reference")
    return float(np.sum(r * np.log(EPS + r / (q + EPS))))
