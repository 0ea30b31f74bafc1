"""What a linear readout picked: its largest weights as dissection units, and their category
selectivity (He et al. 2019, Eq. 1 statistics) against all units the readout could have used.

A readout over feature maps (DeepGaze I's ``Σ_c w_c f_c``, on unit-std features, so weights are
comparable across channels) weights every unit of its layers. Its channels are the dissection's
units (``channel → (layer, unit)``, :func:`dissect.models.deepgaze.channel_index`). For each
unit, ``m[u, c]`` is the mean region NSS of the unit's map over the held-out regions of category
``c`` (:func:`dissect.statistics.category_means`, the associate stage's ``*_unit_means.csv``).

* :func:`picked_units`: the ``top`` units of the largest positive weights (the units that raise
  the predicted density), with each unit's best category and its mean region NSS;
* :func:`picked_selectivity`: per category, the mean of ``m[u, c]`` over the picked units
  against (a) the mean over *all* the readout's units and (b) a permutation null — the same
  mean over ``n_null`` random sets of ``top`` units drawn without replacement from all the
  readout's units; ``p = (1 + #{null ≥ picked}) / (1 + n_null)`` (one-sided: does the readout
  pick units *more* selective for the category than chance?). A unit whose mean is undefined for
  a category (NaN: no region of it with fixations) is left out of that category's means, and
  ``n_units`` says how many entered (never averaged as 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dissect.errors import DataError

__all__ = ["picked_selectivity", "picked_units"]


def _weights(weights: pd.DataFrame) -> pd.DataFrame:
    need = {"layer", "unit", "weight"}
    if not need <= set(weights.columns):
        raise DataError("weights", f"needs columns {sorted(need)}, got {list(weights.columns)}")
    w = weights.copy()
    if not np.isfinite(w["weight"].to_numpy(np.float64)).all():
        raise DataError("weights", "non-finite readout weight(s)")
    if w.duplicated(["layer", "unit"]).any():
        raise DataError("weights", "a (layer, unit) appears twice")
    return w


def _means_wide(unit_means: pd.DataFrame, weights: pd.DataFrame) -> pd.DataFrame:
    """``m[u, c]`` as a (layer, unit) × category frame aligned with ``weights``' rows."""
    need = {"layer", "unit", "category", "mean_nss"}
    if not need <= set(unit_means.columns):
        raise DataError("unit_means", f"needs columns {sorted(need)}")
    wide = unit_means.pivot_table(index=["layer", "unit"], columns="category",
                                  values="mean_nss", aggfunc="first", dropna=False)
    order = list(pd.unique(unit_means["category"]))
    wide = wide.reindex(columns=order)
    key = pd.MultiIndex.from_frame(weights[["layer", "unit"]])
    missing = key.difference(wide.index)
    if len(missing):
        layer, unit = missing[0]
        raise DataError("unit_means", f"{len(missing)} readout unit(s) have no category means, "
                                      f"e.g. layer {layer} unit {unit}")
    return wide.reindex(key)


def picked_units(weights: pd.DataFrame, unit_means: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` units of the largest positive weights, largest first: ``rank, layer, unit,
    weight, best_category, best_mean_nss`` (best = the category of the unit's largest mean
    region NSS; NaN means are ignored). Fewer rows when fewer weights are positive."""
    if top < 1:
        raise DataError("top", f"must be ≥ 1, got {top}")
    w = _weights(weights)
    pos = w[w["weight"] > 0].sort_values("weight", ascending=False, kind="stable").head(top)
    wide = _means_wide(unit_means, pos)
    vals = wide.to_numpy(np.float64)
    defined = np.isfinite(vals).any(axis=1)
    best_idx = np.where(defined, np.nanargmax(np.where(np.isfinite(vals), vals, -np.inf),
                                              axis=1), 0)
    cats = np.asarray(wide.columns)
    out = pos[["layer", "unit", "weight"]].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["best_category"] = np.where(defined, cats[best_idx], None)
    out["best_mean_nss"] = np.where(defined, vals[np.arange(len(vals)), best_idx], np.nan)
    return out


def picked_selectivity(
    weights: pd.DataFrame, unit_means: pd.DataFrame, top: int, *, n_null: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per category: ``picked_mean`` (mean ``m[u, c]`` over the :func:`picked_units`),
    ``all_mean`` (over every unit of ``weights``), the null's 2.5 % / 97.5 % quantiles
    ``null_low`` / ``null_high``, ``p_value`` (module docstring), ``n_picked`` / ``n_all``
    (units with a defined mean). Random sets: ``numpy.random.default_rng(seed)``."""
    if n_null < 1:
        raise DataError("n_null", f"must be ≥ 1, got {n_null}")
    w = _weights(weights)
    picked = picked_units(w, unit_means, top)
    if picked.empty:
        raise DataError("weights", "no positive readout weight: nothing was picked")
    wide = _means_wide(unit_means, w)
    vals = wide.to_numpy(np.float64)  # (U, K)
    key = list(zip(w["layer"], w["unit"], strict=True))
    pos = {k: i for i, k in enumerate(key)}
    pick_rows = np.array([pos[(a, b)] for a, b in zip(picked["layer"], picked["unit"],
                                                        strict=True)])
    n = len(pick_rows)
    ok = np.isfinite(vals)
    vz = np.where(ok, vals, 0.0)
    rng = np.random.default_rng(seed)
    # (n_null, U) 0/1 membership of random n-unit sets (without replacement)
    member = np.zeros((n_null, len(vals)))
    for b in range(n_null):
        member[b, rng.choice(len(vals), size=n, replace=False)] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        null = (member @ vz) / (member @ ok)  # (n_null, K)
    rows = []
    for k, cat in enumerate(wide.columns):
        sel = pick_rows[ok[pick_rows, k]]
        picked_mean = float(vals[sel, k].mean()) if sel.size else np.nan
        col = null[:, k]
        col = col[np.isfinite(col)]
        p = (1 + int((col >= picked_mean).sum())) / (1 + col.size) if col.size and \
            np.isfinite(picked_mean) else np.nan
        rows.append({
            "category": cat, "picked_mean": picked_mean,
            "all_mean": float(vals[ok[:, k], k].mean()) if ok[:, k].any() else np.nan,
            "null_low": float(np.quantile(col, 0.025)) if col.size else np.nan,
            "null_high": float(np.quantile(col, 0.975)) if col.size else np.nan,
            "p_value": p, "n_picked": int(sel.size), "n_all": int(ok[:, k].sum()),
        })
    return pd.DataFrame(rows)
