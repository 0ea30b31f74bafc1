"""Per-unit profiles for the unit browser: what each unit of a layer responds to.

For every unit ``u`` of one association array (Eq. 1 of He et al. 2019, dims ``(unit,
region)``), with ``m[u, c]`` the NaN-aware mean of Assoc(u, r) over the regions of category
``c`` (:func:`dissect.statistics.category_means`):

* best category ``c* = argmax_c m[u, c]`` over the categories where the unit is defined on at
  least ``min_regions`` regions (on OSIE with ``min_regions = 1``, 355 of the 8,384 pretrained
  units had a best category resting on one or two regions), and its value ``nss = m[u, c*]``.
  Small categories still win more often than large ones (a mean over few regions varies more);
  the null below takes the same maximum, so the p-value accounts for it;
* ``rank``: the unit's place among the layer's units in ``c*`` (1 = highest ``m``; units with
  fewer than ``min_regions`` defined regions there do not compete);
* ``n_above_T``: the number of categories with ``m[u, c] > T``;
* a per-unit permutation null: the category labels are permuted across regions (the same
  permutations :func:`dissect.statistics.category_statistics` draws for the same ``seed``,
  ``null="labels"`` or ``"images"``), and because ``c*`` is *chosen* as the unit's maximum, the
  null statistic is the maximum over the eligible categories of the permuted means,
  ``max_c m_b[u, c]`` (the same ``min_regions`` rule, applied to each relabelling).
  ``excess = nss − mean_b`` of it and ``p = (1 + #{max_c m_b[u, c] ≥ nss}) / (B + 1)``.
  Comparing with the null of the one category picked afterwards would ignore the selection and
  make every unit look selective;
* the null band per category (``band_low``, ``band_high``: the 2.5 % and 97.5 % quantiles of
  ``m_b[u, c]``), drawn behind the unit page's category bars.

p-values are per unit and uncorrected: a layer's table lists hundreds of them, so a few small
ones are expected by chance (the browser says so next to the column).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from dissect.errors import DataError
from dissect.statistics import (
    NULLS,
    _null_means,
    _one_hot,
    _permuted_labels,
    _prepare,
    _ratio,
)

PROFILE_COLUMNS = ("unit", "best_category", "nss", "rank", "null_mean", "excess", "p_value",
                   "n_above_T", "n_defined")


@dataclass(frozen=True)
class UnitProfiles:
    """The profiles of one layer's units (see the module docstring)."""

    table: pd.DataFrame  # PROFILE_COLUMNS, one row per unit, in unit order
    means: np.ndarray  # (units, categories) m[u, c]
    band_low: np.ndarray  # (units, categories) null 2.5 % quantile
    band_high: np.ndarray  # (units, categories) null 97.5 % quantile
    categories: list[str]
    threshold: float
    n_null: int
    eligible: np.ndarray  # (units, categories) n_defined[u, c] >= min_regions
    min_regions: int

    def top_units(self, k: int) -> dict[str, list[int]]:
        """category → the ``k`` units with the highest ``m[u, c]`` (eligible ones only)."""
        units = self.table["unit"].to_numpy()
        out = {}
        for j, cat in enumerate(self.categories):
            v = np.where(self.eligible[:, j], self.means[:, j], np.nan)
            ok = np.flatnonzero(np.isfinite(v))
            order = ok[np.argsort(-v[ok], kind="stable")][:k]
            out[cat] = [int(units[i]) for i in order]
        return out


def _ranks(means: np.ndarray) -> np.ndarray:  # NaN: not competing
    """rank[u, c]: 1 + the number of units with a strictly higher defined ``m[:, c]``."""
    v = np.where(np.isfinite(means), means, -np.inf)
    # sorted ascending per column; count of values greater than v = n − searchsorted(right)
    s = np.sort(v, axis=0)
    out = np.empty(v.shape, dtype=np.int64)
    for j in range(v.shape[1]):
        out[:, j] = 1 + v.shape[0] - np.searchsorted(s[:, j], v[:, j], side="right")
    return out


def unit_profiles(assoc: xr.DataArray, *, threshold: float, n_null: int, seed: int,
                  null: str = "labels", min_regions: int = 1) -> UnitProfiles:
    """:class:`UnitProfiles` of one layer's association array (module docstring).

    ``seed`` seeds the permutations; ``null`` is ``"labels"`` or ``"images"`` as in
    :func:`dissect.statistics.category_statistics`; ``min_regions``: the defined regions a
    category needs to be a unit's best. A unit with no eligible category (a map constant on
    every image, say) gets NaN values and rank and no best category; the count above T counts
    every defined category.
    """
    if null not in NULLS:
        raise DataError("unit_profiles", f"null must be one of {NULLS}, got {null!r}")
    if n_null < 1:
        raise DataError("unit_profiles", f"n_null must be at least 1, got {n_null}")
    if min_regions < 1:
        raise DataError("unit_profiles", f"min_regions must be at least 1, got {min_regions}")
    p = _prepare(assoc)
    if not p.used.any():
        raise DataError(assoc.attrs.get("layer", "unit_profiles"),
                        "every association is NaN (no unit is defined on any region)")
    K = len(p.categories)
    C = _one_hot(p.labels, K)
    means = _ratio(p.X @ C, p.D @ C)
    n_def = (p.D @ C).round().astype(np.int64)
    eligible = n_def >= min_regions
    used = np.flatnonzero(p.used)  # regions no unit is defined on carry no information
    # the permutation stream of dissect.statistics.category_statistics for the same seed
    rng_null, _ = np.random.default_rng(seed).spawn(2)
    perms = _permuted_labels(rng_null, p.labels[used], p.images[used], n_null, null)
    X, D = p.X[:, used], p.D[:, used]
    null_means, null_def = _null_means(X, D, perms, K, dense_d=bool(D.all()), counts=True)
    null_means = np.where(null_def >= min_regions, null_means, np.nan)  # (B, U, K)

    ranked = np.where(eligible, means, np.nan)
    defined = np.isfinite(ranked).any(axis=1)
    best = np.where(defined, np.argmax(np.where(np.isfinite(ranked), ranked, -np.inf), axis=1),
                    0)
    rows = np.arange(means.shape[0])
    nss = np.where(defined, means[rows, best], np.nan)
    with np.errstate(invalid="ignore"):
        null_best = np.max(np.where(np.isfinite(null_means), null_means, -np.inf), axis=2)
    null_best = np.where(np.isfinite(null_best), null_best, np.nan)  # (B, U)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit never defined: NaN
        null_mean = np.nanmean(null_best, axis=0)
        p_value = (1 + (null_best >= nss[None, :]).sum(axis=0)) / (n_null + 1)
        n_above = (means > threshold).sum(axis=1)
    p_value = np.where(defined, p_value, np.nan)
    ranks = _ranks(ranked)[rows, best]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (u, c) columns give NaN
        low = np.nanquantile(null_means, 0.025, axis=0)
        high = np.nanquantile(null_means, 0.975, axis=0)
    table = pd.DataFrame({
        "unit": p.units,
        "best_category": [p.categories[b] if d else "" for b, d in zip(best, defined,
                                                                     strict=True)],
        "nss": nss,
        "rank": np.where(defined, ranks, np.nan),  # NaN: no eligible category
        "null_mean": np.where(defined, null_mean, np.nan),
        "excess": nss - null_mean,
        "p_value": p_value,
        "n_above_T": n_above.astype(np.int64),
        "n_defined": np.where(defined, n_def[rows, best], 0),
    }, columns=list(PROFILE_COLUMNS))
    return UnitProfiles(table=table, means=means, band_low=low, band_high=high,
                        categories=list(p.categories), threshold=float(threshold),
                        n_null=int(n_null), eligible=eligible, min_regions=int(min_regions))
