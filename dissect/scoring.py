"""Probabilistic scores of saliency models: log-likelihood, information gain, IG explained.

Kümmerer, Wallis & Bethge (2015, PNAS 112:16054) score a model by the log-likelihood of the
observed fixations under its density over the image's pixels; information gain over a baseline
(the centre bias) is the difference of log-likelihoods, in bits per fixation::

    LL(p)      = mean_f log2 p(f) − log2(1/(H·W))           [reference = "uniform", default]
    IG(p | b)  = mean_f log2 p(f) − log2 b(f)
    IG explained = IG(model | centre bias) / IG(gold standard | centre bias)

``f`` runs over fixations with multiplicity; ``p(f)`` is the density at the fixation's pixel
``(rint(y), rint(x))`` (:func:`dissect.metrics.point_pixels`, the package's pixel rule, with a
bounds check). Densities are given as natural-log ``(H, W)`` maps normalised over the pixels
(:class:`dissect.models.base.ProbabilisticModel.log_density`). ``LL`` with the default reference
is itself the IG over the pixel-uniform model, so it is comparable across image sizes;
``reference=None`` gives the raw ``mean log2 p(f)`` (pysaliency's ``log_likelihood`` is this raw
value in nats).

**Strictness (no epsilon).** Every log density is checked: NaN or +inf anywhere, or a
``logsumexp`` off 0 by more than 1e-6, → :class:`~dissect.errors.DataError`. A density of zero
(``-inf``) at a fixation would make LL and IG ``-inf``; rather than hide it behind an epsilon,
that is a ``DataError`` naming the image and the fixation: a model must give every pixel some
probability (mix it with a uniform or centre-bias component, as the baselines do).

**Difference from** :func:`dissect.metrics.information_gain`: that function takes *saliency
maps* (MIT benchmark ``InfoGain.m``): each map is divided by its sum and ``eps = 2**-52`` is
added inside the log, so any non-negative map can be scored, and zeros are silently floored at
``log2(eps) ≈ −52`` bits. Here the inputs are *log densities* a model claims as probabilities:
nothing is renormalised or floored, so the score is exactly the model's log-likelihood ratio. On
two strictly positive normalised densities the two agree up to the eps (≲ 1e-15 relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from dissect.errors import DataError
from dissect.metrics import point_pixels
from dissect.models.base import ProbabilisticModel, StimulusImage, check_log_density

__all__ = [
    "fixation_log_densities",
    "ig_explained",
    "information_gain",
    "log_likelihood",
]

_LN2 = float(np.log(2.0))


def _label(image: str | None, what: str) -> str:
    return f"{what} of image {image}" if image is not None else what


def _values_at_fixations(
    log_density: ArrayLike, fixations: ArrayLike, image: str | None, what: str
) -> NDArray[np.float64]:
    """Natural-log density at each fixation's pixel, with every check of the module docstring."""
    src = _label(image, what)
    ld = check_log_density(np.asarray(log_density), src)
    rows, cols = point_pixels(fixations, ld.shape, name=_label(image, "fixations"))
    if rows.size == 0:
        raise DataError(_label(image, "fixations"), "contains no fixation")
    vals = ld[rows, cols]
    zero = np.isneginf(vals)
    if zero.any():
        k = int(np.flatnonzero(zero)[0])
        pts = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
        raise DataError(
            src,
            f"density is zero (log = -inf) at {int(zero.sum())} of {vals.size} fixation(s), "
            f"first #{k} at (x, y) = ({pts[k, 0]:g}, {pts[k, 1]:g}), pixel "
            f"({int(rows[k])}, {int(cols[k])}); the log-likelihood would be -inf. Give every "
            "pixel some probability (mix with a uniform or centre-bias density)",
        )
    return vals


def log_likelihood(
    log_density: ArrayLike,
    fixations: ArrayLike,
    *,
    image: str | None = None,
    reference: str | None = "uniform",
) -> float:
    """Mean log-likelihood of ``fixations`` (``(N, 2)`` 0-based ``(x, y)``) in bits/fixation.

    ``mean_f log2 p(f)`` minus ``log2(1/(H·W))`` with ``reference="uniform"`` (default: the IG
    over the pixel-uniform model), raw with ``reference=None``. ``image`` names the image in
    errors (zero density at a fixation, NaN, not normalised, fixation outside the map).
    """
    if reference not in ("uniform", None):
        raise ValueError(f"reference must be 'uniform' or None, not {reference!r}")
    vals = _values_at_fixations(log_density, fixations, image, "log density")
    ll = float(np.mean(vals)) / _LN2
    if reference == "uniform":
        h, w = np.shape(log_density)
        ll += float(np.log2(float(h) * float(w)))
    return ll


def information_gain(
    log_density: ArrayLike,
    baseline_log_density: ArrayLike,
    fixations: ArrayLike,
    *,
    image: str | None = None,
) -> float:
    """Information gain of a density over a baseline density, bits/fixation (Kümmerer et al.
    2015): ``mean_f [log2 p(f) − log2 b(f)]``, both natural-log maps of one shape."""
    p = np.asarray(log_density)
    b = np.asarray(baseline_log_density)
    if p.shape != b.shape:
        raise DataError(
            _label(image, "baseline log density"),
            f"shape {b.shape} does not match the model's {p.shape}",
        )
    pv = _values_at_fixations(p, fixations, image, "log density")
    bv = _values_at_fixations(b, fixations, image, "baseline log density")
    return float(np.mean(pv - bv)) / _LN2


def ig_explained(ig_model: float, ig_gold: float) -> float:
    """``IG(model) / IG(gold standard)``, both over the same baseline (the centre bias) on the
    same fixations. ``ig_gold ≤ 0`` (the gold standard no better than the baseline) leaves the
    ratio undefined → ``DataError``; non-finite inputs → ``DataError``."""
    m, g = float(ig_model), float(ig_gold)
    if not (np.isfinite(m) and np.isfinite(g)):
        raise DataError("ig_explained", f"non-finite information gain (model {m}, gold {g})")
    if not g > 0:
        raise DataError(
            "ig_explained",
            f"the gold standard's information gain over the baseline is {g:.4g} ≤ 0 bits/fixation:"
            " IG explained is undefined",
        )
    return m / g


def fixation_log_densities(
    model: ProbabilisticModel, stimulus: StimulusImage, fixations: pd.DataFrame,
    log_density: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Natural-log density of ``model`` at each fixation (rows of ``fixations`` with columns
    ``subject, x, y``; the output follows the row order), every check of :func:`log_likelihood`.

    For an ``observer_dependent`` model (the gold standard) each subject's fixations are scored
    under :meth:`~dissect.models.base.ProbabilisticModel.log_density_held_out` (the density
    without that subject); for every other model under one ``log_density``. Averaging
    ``(model − baseline) / ln 2`` over all fixations of all images gives IG in bits/fixation
    (pysaliency's ``average='fixation'``). ``log_density``: the model's log density on this
    image when the caller has it already (observer-independent models only).
    """
    missing = {"subject", "x", "y"} - set(fixations.columns)
    if missing:
        raise DataError(stimulus.id, f"fixation table lacks column(s) {sorted(missing)}")
    xy = fixations[["x", "y"]].to_numpy(np.float64)
    if len(xy) == 0:
        raise DataError(_label(stimulus.id, "fixations"), "contains no fixation")
    out = np.empty(len(xy))
    name = getattr(model, "name", type(model).__name__) or type(model).__name__
    what = f"{name} log density"
    if not model.observer_dependent:
        ld = model.log_density(stimulus) if log_density is None else log_density
        out[:] = _values_at_fixations(ld, xy, stimulus.id, what)
        return out
    if log_density is not None:
        raise ValueError(f"{name} is observer-dependent: its log density differs per subject")
    subjects = fixations["subject"].to_numpy()
    for s in pd.unique(subjects):
        mine = subjects == s
        ld: Any = model.log_density_held_out(stimulus, int(s))
        out[mine] = _values_at_fixations(ld, xy[mine], stimulus.id, f"{what} without subject {s}")
    return out
