"""Seed-aware category statistics (dissect.seeds) against hand formulas and synthetic data whose
seed and category effects are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dissect.errors import DataError
from dissect.seeds import seed_anova, seed_summary

CATS = ["person head", "text", "food", "drink"]


def table(excess: np.ndarray, *, null: float = 1.0, p: np.ndarray | None = None,
          cats=CATS, stat="top10_mean") -> pd.DataFrame:
    """Tidy rows for one (model, layer, stat): ``excess[s, c]`` for seed s and category c."""
    S, K = excess.shape
    p = np.full((S, K), 0.01) if p is None else p
    return pd.DataFrame([{"seed": s, "model": "k1", "layer": "head", "category": cats[c],
                          "stat": stat, "value": null + excess[s, c], "null_mean": null,
                          "p_value": p[s, c]} for s in range(S) for c in range(K)])


def test_summary_by_hand():
    ex = np.array([[1.0, 0.2, -0.5, 0.0],
                   [2.0, 0.4, -0.3, 0.0],
                   [3.0, -0.6, -0.1, 0.0]])
    pv = np.array([[0.01, 0.2, 0.5, 0.5], [0.02, 0.03, 0.9, 0.5], [0.001, 0.7, 0.6, 0.5]])
    out = seed_summary(table(ex, p=pv)).set_index("category")
    head = out.loc["person head"]
    assert head.n_seeds == 3 and head.value_mean == pytest.approx(3.0)
    assert head.value_sd == pytest.approx(1.0) and (head.value_min, head.value_max) == (2.0, 4.0)
    # t = mean / (sd / √n) = 2 / (1/√3); two-sided p from the t distribution with 2 df
    assert head.excess_t == pytest.approx(2 * np.sqrt(3))
    assert head.excess_p == pytest.approx(2 * sps.t.sf(2 * np.sqrt(3), 2))
    assert list(out.agreement) == ["all", "mixed", "none", "none"]
    assert list(out.n_significant) == [3, 1, 0, 0]
    assert np.isnan(out.loc["drink", "excess_t"])  # no spread between seeds: no test


def test_anova_equals_the_balanced_two_way_sums_of_squares():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(5, 4)) + np.array([0.0, 1.0, -0.5, 2.0]) + rng.normal(size=(5, 1))
    S, K = y.shape
    g, ys, yc = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ss_c, ss_s = S * ((yc - g) ** 2).sum(), K * ((ys - g) ** 2).sum()
    ss_r = ((y - yc[None, :] - ys[:, None] + g) ** 2).sum()
    ms_c, ms_s, ms_r = ss_c / (K - 1), ss_s / (S - 1), ss_r / ((S - 1) * (K - 1))
    row = seed_anova(table(y)).iloc[0]
    assert row.F_category == pytest.approx(ms_c / ms_r)
    assert row.F_seed == pytest.approx(ms_s / ms_r)
    assert row.p_category == pytest.approx(sps.f.sf(ms_c / ms_r, K - 1, (S - 1) * (K - 1)))
    assert row.var_seed == pytest.approx(max(0.0, (ms_s - ms_r) / K))
    assert row.var_category == pytest.approx(max(0.0, (ms_c - ms_r) / S))
    assert row.ms_residual == pytest.approx(ms_r)


def test_known_seed_and_category_effects_are_recovered():
    rng = np.random.default_rng(11)
    S, K = 60, 12
    cats = [f"c{i}" for i in range(K)]
    # (a) a big seed shift (σ_seed = 1) and no category effect: the seed is found, the
    # categories are not, and σ²_seed is estimated near 1
    y = rng.normal(0, 1.0, size=(S, 1)) + rng.normal(0, 0.3, size=(S, K))
    a = seed_anova(table(y, cats=cats)).iloc[0]
    assert a.p_seed < 1e-10 and a.p_category > 0.001
    assert a.var_seed == pytest.approx(1.0, rel=0.4)
    assert a.var_residual == pytest.approx(0.09, rel=0.2)
    # (b) category effects (σ_category² = 0.25) and a seed × category interaction (σ = 0.3)
    effects = rng.normal(0, 0.5, size=K)
    y = effects[None, :] + rng.normal(0, 0.3, size=(S, K))
    b = seed_anova(table(y, cats=cats)).iloc[0]
    assert b.p_category < 1e-10
    assert b.var_category == pytest.approx(effects.var(ddof=1), rel=0.1)
    # the per-category t test over seeds finds the categories whose effect is large
    summ = seed_summary(table(y, cats=cats)).set_index("category")
    big = np.abs(effects) > 0.3
    assert (summ.excess_p.to_numpy()[big] < 1e-6).all()


def test_bad_tables_are_refused():
    t = table(np.ones((3, 4)))
    with pytest.raises(DataError, match="duplicate"):
        seed_summary(pd.concat([t, t.iloc[:1]]))
    with pytest.raises(DataError, match="unbalanced"):
        seed_anova(t.iloc[1:])
    with pytest.raises(DataError, match="≥ 2 seeds"):
        seed_anova(t[t.seed == 0])
    bad = t.copy()
    bad.loc[0, "null_mean"] = np.nan
    with pytest.raises(DataError, match="NaN"):
        seed_summary(bad)
    with pytest.raises(DataError, match="lacks columns"):
        seed_summary(t.drop(columns="seed"))
