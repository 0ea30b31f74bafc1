"""Category statistics over training seeds: how much of a fine-tuning result is the seed.

A readout fine-tuned with another seed (initialisation, data order) is another draw of the same
experiment; the study's §5.2 conclusions (which categories fine-tuning favours) should hold
across draws. Given the tidy category-statistics table of :func:`dissect.statistics.
category_statistics` for several seeds (a ``seed`` column; one row per seed, model, layer,
category and statistic), this module gives

* :func:`seed_summary` — per (model, layer, category, stat): the mean over seeds and its spread
  (sd, min, max), the per-seed significance against the permutation null and how many seeds
  agree, and a one-sample *t* test over seeds of the excess over the null (value − null mean).
  The *t* test treats the seed as a random effect: with one value per seed, the spread between
  seeds is the error of the mean, so a category is "favoured" only when its excess is large
  against the seed-to-seed variation, not against the (much smaller) noise within one run.
* :func:`seed_anova` — per (model, layer, stat): the two-way additive ANOVA
  ``excess ~ C(category) + C(seed)`` (statsmodels OLS + ``anova_lm``). The seed main effect is
  an overall shift of a run; the residual is the seed × category interaction, i.e. how much the
  *pattern* over categories changes with the seed. The category F test asks whether the
  category pattern is larger than that seed-dependent noise; the variance components say how
  large each part is (method of moments for the balanced design: σ²_seed =
  (MS_seed − MS_res) / K, σ²_category = (MS_category − MS_res) / S, floored at 0).

Both are written for the balanced case (every seed has every category); a missing or NaN cell is
an error naming it, never silently dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from dissect.errors import DataError

__all__ = ["seed_anova", "seed_summary"]

KEYS = ["model", "layer", "category", "stat"]


def _checked(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    need = {"seed", *KEYS, "value", "null_mean", "p_value"}
    missing = need - set(table.columns)
    if missing:
        raise DataError("seed statistics", f"table lacks columns {sorted(missing)}")
    if not 0 < alpha < 1:
        raise DataError("seed statistics", f"alpha must be in (0, 1), got {alpha}")
    dup = table.duplicated(["seed", *KEYS])
    if dup.any():
        row = table.loc[dup, ["seed", *KEYS]].iloc[0].to_dict()
        raise DataError("seed statistics", f"duplicate rows, e.g. {row}")
    out = table.copy()
    out["excess"] = out["value"] - out["null_mean"]
    return out


def seed_summary(table: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Per (model, layer, category, stat), over the seeds of ``table``: ``n_seeds``,
    ``value_mean``, ``value_sd`` (ddof 1), ``value_min``, ``value_max``, ``excess_mean``,
    ``excess_sd``, ``excess_t`` / ``excess_p`` (two-sided one-sample t test of the per-seed
    excess against 0, df = n_seeds − 1; NaN with fewer than two seeds or no spread),
    ``n_significant`` (seeds with permutation p < ``alpha``) and ``agreement``: "all",
    "none" or "mixed" (the seeds disagree on significance)."""
    t = _checked(table, alpha)
    rows = []
    for key, g in t.groupby(KEYS, sort=False):
        v, e = g["value"].to_numpy(float), g["excess"].to_numpy(float)
        if not (np.isfinite(v).all() and np.isfinite(e).all()):
            where = dict(zip(KEYS, key, strict=True))
            raise DataError("seed statistics", f"NaN value or null mean for {where}")
        n = len(g)
        sig = int((g["p_value"] < alpha).sum())
        if n >= 2 and np.ptp(e) > 0:
            res = sps.ttest_1samp(e, 0.0)
            t_stat, p = float(res.statistic), float(res.pvalue)
        else:
            t_stat = p = np.nan
        rows.append({
            **dict(zip(KEYS, key, strict=True)), "n_seeds": n,
            "value_mean": v.mean(), "value_sd": v.std(ddof=1) if n > 1 else np.nan,
            "value_min": v.min(), "value_max": v.max(),
            "excess_mean": e.mean(), "excess_sd": e.std(ddof=1) if n > 1 else np.nan,
            "excess_t": t_stat, "excess_p": p, "n_significant": sig,
            "agreement": "all" if sig == n else ("none" if sig == 0 else "mixed"),
        })
    return pd.DataFrame(rows)


def seed_anova(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer, stat): two-way additive ANOVA of the excess over the null on category
    and seed (one value per cell; the residual is the seed × category interaction). Columns:
    ``n_seeds, n_categories, F_category, p_category, F_seed, p_seed, ms_residual,
    var_seed, var_category, var_residual`` (method-of-moments variance components, floored at
    0). Needs ≥ 2 seeds and ≥ 2 categories, every seed with every category."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    t = _checked(table, 0.05)
    rows = []
    for key, g in t.groupby(["model", "layer", "stat"], sort=False):
        where = dict(zip(["model", "layer", "stat"], key, strict=True))
        seeds, cats = g["seed"].nunique(), g["category"].nunique()
        if seeds < 2 or cats < 2:
            raise DataError("seed statistics", f"{where}: needs ≥ 2 seeds and ≥ 2 categories "
                            f"(has {seeds} and {cats})")
        if len(g) != seeds * cats:
            raise DataError("seed statistics", f"{where}: {seeds} seeds × {cats} categories "
                            f"need {seeds * cats} rows, got {len(g)} (unbalanced)")
        if not np.isfinite(g["excess"]).all():
            raise DataError("seed statistics", f"{where}: NaN excess")
        d = pd.DataFrame({"y": g["excess"].to_numpy(float), "category": g["category"].astype(str),
                          "seed": g["seed"].astype(str)})
        a = anova_lm(smf.ols("y ~ C(category) + C(seed)", data=d).fit(), typ=2)
        ms = a["sum_sq"] / a["df"]
        ms_res = float(ms["Residual"])
        rows.append({
            **where, "n_seeds": seeds, "n_categories": cats,
            "F_category": float(a.loc["C(category)", "F"]),
            "p_category": float(a.loc["C(category)", "PR(>F)"]),
            "F_seed": float(a.loc["C(seed)", "F"]), "p_seed": float(a.loc["C(seed)", "PR(>F)"]),
            "ms_residual": ms_res,
            "var_seed": max(0.0, (float(ms["C(seed)"]) - ms_res) / cats),
            "var_category": max(0.0, (float(ms["C(category)"]) - ms_res) / seeds),
            "var_residual": ms_res,
        })
    return pd.DataFrame(rows)
