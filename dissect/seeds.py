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
  seeds is the error of the mean. What it tests is "the excess is above 0 beyond seed noise"
  for that model — not that fine-tuning favours the category (setup I has an excess too; the
  improvement over k0 is :func:`improvement_summary` / :func:`finetuning_conclusions`) — and it
  is conditional on the held-out images (every seed sees the same 200), so it leaves out the
  image-sampling variance that the per-seed bootstrap intervals carry.
* :func:`seed_anova` — per (model, layer, stat): the two-way additive ANOVA
  ``excess ~ C(category) + C(seed)`` (statsmodels OLS + ``anova_lm``). The seed main effect is
  an overall shift of a run; the residual is the seed × category interaction, i.e. how much the
  *pattern* over categories changes with the seed. The category F test asks whether the
  category pattern is larger than that seed-dependent noise; the variance components say how
  large each part is (method of moments for the balanced design: σ²_seed =
  (MS_seed − MS_res) / K, σ²_category = (MS_category − MS_res) / S, floored at 0).

Both are written for the balanced case (every seed has every category); a missing or NaN cell is
an error naming it, never silently dropped.

For the other per-seed tables (Fig. 4 improvements, the inner-vs-output Spearman, ANOVA and
Tukey decisions, Table 7): :func:`spread` (mean, sd, min, max of numeric columns over seeds),
:func:`agreement` (how many seeds make a yes/no decision), :func:`improvement_summary` and
:func:`finetuning_conclusions` (the study's §5.2 readings, checked seed by seed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from dissect.errors import DataError

__all__ = [
    "CLAIMS",
    "agreement",
    "finetuning_conclusions",
    "improvement_summary",
    "seed_anova",
    "seed_summary",
    "spread",
]

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
        raise DataError("seed statistics", "duplicate rows, e.g. "
                        + ", ".join(f"{k}={v}" for k, v in row.items()))
    out = table.copy()
    out["excess"] = out["value"] - out["null_mean"]
    return out


def seed_summary(table: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Per (model, layer, category, stat), over the seeds of ``table``: ``n_seeds``,
    ``value_mean``, ``value_sd`` (ddof 1), ``value_min``, ``value_max``, ``excess_mean``,
    ``excess_sd``, ``excess_min``, ``excess_max``, ``excess_t`` / ``excess_p`` (two-sided
    one-sample t test of the per-seed excess against 0, df = seeds − 1; NaN with fewer than
    two seeds or no spread), ``n_nan`` (seeds whose value or null mean is NaN — e.g. no
    permutations, or no defined unit — left out of every statistic and counted as not
    significant),
    ``n_significant`` (seeds with permutation p < ``alpha``), ``significant_seeds`` (their
    labels) and ``agreement``: "all",
    "none" or "mixed" (the seeds disagree on significance)."""
    t = _checked(table, alpha)
    rows = []
    for key, g in t.groupby(KEYS, sort=False):
        n_all = len(g)
        ok = np.isfinite(g["value"].to_numpy(float)) & np.isfinite(g["excess"].to_numpy(float))
        g = g[ok]  # a seed without a value (no defined unit, no null) is counted, not averaged
        v, e = g["value"].to_numpy(float), g["excess"].to_numpy(float)
        n = len(g)
        if n == 0:
            rows.append({**dict(zip(KEYS, key, strict=True)), "n_seeds": n_all, "n_nan": n_all,
                         "n_significant": 0, "significant_seeds": "", "agreement": "none"})
            continue
        sig = int((g["p_value"] < alpha).sum())
        if n >= 2 and np.ptp(e) > 0:
            res = sps.ttest_1samp(e, 0.0)
            t_stat, p = float(res.statistic), float(res.pvalue)
        else:
            t_stat = p = np.nan
        rows.append({
            **dict(zip(KEYS, key, strict=True)), "n_seeds": n_all, "n_nan": n_all - n,
            "value_mean": v.mean(), "value_sd": v.std(ddof=1) if n > 1 else np.nan,
            "value_min": v.min(), "value_max": v.max(),
            "excess_mean": e.mean(), "excess_sd": e.std(ddof=1) if n > 1 else np.nan,
            "excess_min": e.min(), "excess_max": e.max(),
            "excess_t": t_stat, "excess_p": p, "n_significant": sig,
            "significant_seeds": " ".join(str(x) for x in g.loc[g["p_value"] < alpha, "seed"]),
            "agreement": "all" if sig == n_all else ("none" if sig == 0 else "mixed"),
        })
    cols = [*KEYS, "n_seeds", "n_nan", "value_mean", "value_sd", "value_min", "value_max",
            "excess_mean", "excess_sd", "excess_min", "excess_max", "excess_t", "excess_p",
            "n_significant", "significant_seeds", "agreement"]
    return pd.DataFrame(rows).reindex(columns=cols)


def seed_anova(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer, stat): two-way additive ANOVA of the excess over the null on category
    and seed (one value per cell; the residual is the seed × category interaction). Columns:
    ``n_seeds, n_categories, F_category, p_category, F_seed, p_seed, ms_residual,
    var_seed, var_category, var_residual`` (method-of-moments variance components, floored at
    0). Needs ≥ 2 seeds and ≥ 2 categories, every seed with every category. A group whose
    excess is the same in every cell has no test (NaN F and p, zero variance components)."""
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
        if not np.isfinite(g["excess"]).all():  # no test on an incomplete design
            rows.append({**where, "n_seeds": seeds, "n_categories": cats,
                         "F_category": np.nan, "p_category": np.nan, "F_seed": np.nan,
                         "p_seed": np.nan, "ms_residual": np.nan, "var_seed": np.nan,
                         "var_category": np.nan, "var_residual": np.nan,
                         "n_nan": int((~np.isfinite(g["excess"])).sum())})
            continue
        d = pd.DataFrame({"y": g["excess"].to_numpy(float), "category": g["category"].astype(str),
                          "seed": g["seed"].astype(str)})
        if np.ptp(d["y"]) == 0:  # every cell equal (e.g. no unit above T anywhere): no test
            rows.append({**where, "n_seeds": seeds, "n_categories": cats,
                         "F_category": np.nan, "p_category": np.nan, "F_seed": np.nan,
                         "p_seed": np.nan, "ms_residual": 0.0, "var_seed": 0.0,
                         "var_category": 0.0, "var_residual": 0.0})
            continue
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


def _need(table: pd.DataFrame, cols: list[str], source: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise DataError(source, f"table lacks columns {missing}")


def spread(table: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """Per ``keys`` group of a per-seed table (column ``seed``, one row per seed and group):
    ``n_seeds`` and, for each column ``v`` of ``values``, ``v_mean``, ``v_sd`` (ddof 1, NaN with
    one seed), ``v_min``, ``v_max``. NaN values are kept out of the mean and counted in
    ``v_n_nan`` (never silently: a group whose values are all NaN has NaN statistics)."""
    _need(table, ["seed", *keys, *values], "seed spread")
    if table.duplicated(["seed", *keys]).any():
        row = table.loc[table.duplicated(["seed", *keys]), ["seed", *keys]].iloc[0].to_dict()
        raise DataError("seed spread", "duplicate rows, e.g. "
                        + ", ".join(f"{k}={v}" for k, v in row.items()))
    rows = []
    for key, g in table.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(keys, key, strict=True)), "n_seeds": int(g["seed"].nunique())}
        for v in values:
            x = g[v].to_numpy(float)
            ok = x[np.isfinite(x)]
            row[f"{v}_mean"] = ok.mean() if len(ok) else np.nan
            row[f"{v}_sd"] = ok.std(ddof=1) if len(ok) > 1 else np.nan
            row[f"{v}_min"] = ok.min() if len(ok) else np.nan
            row[f"{v}_max"] = ok.max() if len(ok) else np.nan
            row[f"{v}_n_nan"] = int(len(x) - len(ok))
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(table: pd.DataFrame, keys: list[str], flag: str) -> pd.DataFrame:
    """Per ``keys`` group of a per-seed table: ``n_seeds``, ``n_<flag>`` (seeds where the
    boolean column ``flag`` is true), ``seeds_<flag>`` (their labels, e.g. ``"0 2"``) and
    ``agreement``: "all", "none" or "mixed"."""
    _need(table, ["seed", *keys, flag], "seed agreement")
    rows = []
    for key, g in table.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        f = g[flag]
        if f.isna().any():
            where = dict(zip(keys, key, strict=True))
            raise DataError("seed agreement", f"{flag} is missing for {where}")
        f = f.astype(bool)
        n, k = int(g["seed"].nunique()), int(f.sum())
        rows.append({**dict(zip(keys, key, strict=True)), "n_seeds": n, f"n_{flag}": k,
                     f"seeds_{flag}": " ".join(str(s) for s in g.loc[f, "seed"]),
                     "agreement": "all" if k == n else ("none" if k == 0 else "mixed")})
    return pd.DataFrame(rows)


def improvement_summary(improvement: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4 over seeds: per (model, k, category) of a per-seed
    :func:`dissect.statistics.improvement` table (column ``seed``), the spread of
    ``improvement_pct`` and ``excess_improvement_pct`` (:func:`spread`) and in how many seeds
    each is positive (``n_improved``, ``n_excess_improved``)."""
    keys = ["model", "k", "category"]
    out = spread(improvement, keys, ["improvement_pct", "excess_improvement_pct"])
    pos = improvement.assign(
        improved=improvement["improvement_pct"] > 0,
        excess_improved=improvement["excess_improvement_pct"] > 0,
    ).groupby(keys, sort=False)[["improved", "excess_improved"]].sum()
    pos.columns = ["n_improved", "n_excess_improved"]
    return out.merge(pos.reset_index(), on=keys, how="left", validate="one_to_one")


CLAIMS: dict[str, str] = {
    "every_category_improves": "fine-tuning raises the top-k mean NSS of every category",
    "head_over_text": "fine-tuning favours person heads over text (larger improvement)",
    "animal_head_over_text": "fine-tuning favours animal heads over text (larger improvement)",
    "head_over_text_excess": "person heads over text, in excess over the permutation null",
}
"""The study's fine-tuning readings (He et al. §5.2 and abstract: fine-tuning "makes them favor
some categories (e.g. head) over some others (e.g. text)"), as checks on one seed's Fig. 4
improvement table. "improvement" = ``improvement_pct`` (top-k mean of the fine-tuned model vs
setup I); the ``_excess`` variant uses ``excess_improvement_pct`` (value − null mean), which
discounts the top-k selection inflation."""


def _claims_one(g: pd.DataFrame) -> dict[str, bool]:
    """The :data:`CLAIMS` that one seed's improvement table can decide (a claim about a
    category the table lacks, e.g. on a subset without animal heads, is left out)."""
    by = g.set_index("category")
    imp, exc = by["improvement_pct"], by["excess_improvement_pct"]
    out = {"every_category_improves": bool((imp > 0).all())}
    for claim, (a, b, col) in {"head_over_text": ("person head", "text", imp),
                               "animal_head_over_text": ("animal head", "text", imp),
                               "head_over_text_excess": ("person head", "text", exc)}.items():
        if a in col.index and b in col.index:
            out[claim] = bool(col[a] > col[b])
    return out


def finetuning_conclusions(improvement: pd.DataFrame, *, top: int = 3) -> tuple[
        pd.DataFrame, pd.DataFrame]:
    """Check the study's fine-tuning readings (:data:`CLAIMS`) in every seed and k.

    ``improvement``: a per-seed Fig. 4 table (``seed, model, k, category, improvement_pct,
    excess_improvement_pct``); a claim about a category the table lacks is not evaluated (it
    has no rows). Returns ``(per_seed, summary)``: ``per_seed`` has one row per
    (claim, model, k, seed) with ``holds`` and, for the claim ``favoured_top<top>``, the
    ``top`` categories with the largest improvement in that seed; ``summary`` one row per
    (claim, model, k) with ``n_seeds``, ``n_holds``, ``agreement`` ("all" = holds in every
    seed) — for ``favoured_top<top>`` a seed "holds" when its top set is the most frequent one
    and at least one other seed has it too (so "all" = the same set in every seed, "none" = no
    two seeds agree), and ``detail`` lists the categories among the top ``top`` in every seed —
    and the mean
    pairwise Spearman correlation between seeds of the improvement profile over categories
    (``profile_rs``: 1 = the seeds rank the categories identically; NaN with one seed)."""
    need = ["seed", "model", "k", "category", "improvement_pct", "excess_improvement_pct"]
    _need(improvement, need, "fine-tuning conclusions")
    rows, summary = [], []
    fav = f"favoured_top{top}"
    for (model, k), gk in improvement.groupby(["model", "k"], sort=False):
        tops = {}
        for seed, g in gk.groupby("seed", sort=True):
            for claim, holds in _claims_one(g).items():
                rows.append({"claim": claim, "model": model, "k": k, "seed": seed,
                             "holds": holds, "detail": ""})
            best = g.sort_values("improvement_pct", ascending=False, kind="stable")
            tops[seed] = list(best["category"].head(top))
        common_top = [c for c in next(iter(tops.values())) if all(c in t for t in tops.values())]
        sets = [frozenset(t) for t in tops.values()]
        modal = max(sets, key=sets.count)  # the most frequent top set (ties: the first seed's)
        shared = sets.count(modal) >= 2  # a set no other seed has is agreement with nobody
        for seed, t in tops.items():
            rows.append({"claim": fav, "model": model, "k": k, "seed": seed,
                         "holds": shared and frozenset(t) == modal, "detail": ", ".join(t)})
        wide = gk.pivot(index="category", columns="seed", values="improvement_pct")
        seeds = list(wide.columns)
        rs = [sps.spearmanr(wide[a], wide[b]).statistic
              for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        summary.append({"model": model, "k": k, "profile_rs": float(np.mean(rs)) if rs
                        else np.nan, "common_top": ", ".join(common_top)})
    per_seed = pd.DataFrame(rows)
    agree = agreement(per_seed, ["claim", "model", "k"], "holds")
    agree = agree.merge(pd.DataFrame(summary), on=["model", "k"], how="left")
    agree["detail"] = np.where(agree["claim"] == fav, agree.pop("common_top"), "")
    agree["statement"] = agree["claim"].map(
        {**CLAIMS, fav: f"the {top} most improved categories are the same in every seed"})
    return per_seed, agree
