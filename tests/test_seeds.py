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
    with pytest.raises(DataError, match="lacks columns"):
        seed_summary(t.drop(columns="seed"))


# ------------------------------------------------------------------ spread / agreement / claims
from dissect.seeds import (  # noqa: E402
    agreement,
    finetuning_conclusions,
    improvement_summary,
    spread,
)
from dissect.tables import format_seed_cell, pivot_improvement_seeds, pivot_seeds  # noqa: E402


def test_spread_and_agreement_by_hand():
    t = pd.DataFrame({"seed": [0, 1, 2, 0, 1, 2], "model": ["a"] * 3 + ["b"] * 3,
                      "r": [0.1, 0.5, np.nan, 1.0, 1.0, 1.0],
                      "sig": [True, False, True, True, True, True]})
    s = spread(t, ["model"], ["r"]).set_index("model")
    assert s.loc["a", "r_mean"] == pytest.approx(0.3)
    assert s.loc["a", "r_sd"] == pytest.approx(np.std([0.1, 0.5], ddof=1))
    assert (s.loc["a", "r_min"], s.loc["a", "r_max"], s.loc["a", "r_n_nan"]) == (0.1, 0.5, 1)
    assert s.loc["b", "r_sd"] == 0 and s.loc["b", "n_seeds"] == 3
    a = agreement(t, ["model"], "sig").set_index("model")
    assert a.loc["a", "n_sig"] == 2 and a.loc["a", "seeds_sig"] == "0 2"
    assert a.loc["a", "agreement"] == "mixed" and a.loc["b", "agreement"] == "all"
    with pytest.raises(DataError, match="duplicate"):
        spread(pd.concat([t, t.iloc[:1]]), ["model"], ["r"])
    with pytest.raises(DataError, match="missing"):
        agreement(t.assign(sig=[True, None, True, True, True, True]), ["model"], "sig")


def improvement_table(imp: dict[int, dict[str, float]], model="k1", k=1) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "model": model, "k": k, "category": c,
                          "improvement_pct": v, "excess_improvement_pct": v / 2}
                         for s, row in imp.items() for c, v in row.items()])


def test_conclusions_are_checked_seed_by_seed():
    imp = improvement_table({
        0: {"person head": 30, "animal head": 20, "text": 5, "food": 10},
        1: {"person head": 25, "animal head": 2, "text": 8, "food": 12},
        2: {"person head": 4, "animal head": 22, "text": 9, "food": -1},
    })
    per_seed, summary = finetuning_conclusions(imp, top=2)
    s = summary.set_index("claim")
    assert s.loc["head_over_text", "n_holds"] == 2  # seeds 0, 1 (seed 2: 4 < 9)
    assert s.loc["head_over_text", "agreement"] == "mixed"
    assert s.loc["animal_head_over_text", "n_holds"] == 2  # seeds 0, 2
    assert s.loc["every_category_improves", "n_holds"] == 2  # seed 2 has food −1
    # the two most improved: {ph, ah}, {ph, food}, {ah, text}: no category in all three, and
    # no two seeds share a set: nobody agrees
    assert s.loc["favoured_top2", "detail"] == "" and s.loc["favoured_top2", "n_holds"] == 0
    assert s.loc["favoured_top2", "agreement"] == "none"
    # profile agreement: mean of the three pairwise Spearman correlations, computed by scipy
    wide = imp.pivot(index="category", columns="seed", values="improvement_pct")
    rs = np.mean([sps.spearmanr(wide[a], wide[b]).statistic for a, b in ((0, 1), (0, 2), (1, 2))])
    assert s.loc["head_over_text", "profile_rs"] == pytest.approx(rs)
    top = per_seed[per_seed.claim == "favoured_top2"].set_index("seed")["detail"]
    assert top[0] == "person head, animal head" and top[2] == "animal head, text"
    # a subset without animal heads: that claim is not evaluated, the others are
    _, sub = finetuning_conclusions(imp[imp.category != "animal head"], top=2)
    assert "animal_head_over_text" not in set(sub.claim)
    # top 2 without animal heads: {ph, food}, {ph, food}, {text, ph}: modal set in 2 seeds
    fav = sub.set_index("claim").loc["favoured_top2"]
    assert fav["n_holds"] == 2 and fav["detail"] == "person head"


def test_improvement_summary_and_pivots_by_hand():
    imp = improvement_table({0: {"text": 10.0, "food": -4.0}, 1: {"text": 20.0, "food": 2.0},
                             2: {"text": 30.0, "food": -1.0}})
    s = improvement_summary(imp).set_index("category")
    assert s.loc["text", "improvement_pct_mean"] == pytest.approx(20.0)
    assert s.loc["text", "improvement_pct_sd"] == pytest.approx(10.0)
    assert s.loc["food", "n_improved"] == 1 and s.loc["text", "n_improved"] == 3
    wide = pivot_improvement_seeds(improvement_summary(imp))
    assert wide.loc["k1", "text"] == "+20 ± 10 [+10, +30] 3/3"
    assert format_seed_cell(1.0, 0.5, 0.4, 1.6, 2, 3) == "1.00 ± 0.50 [0.40, 1.60] 2/3"
    assert format_seed_cell(1.0, np.nan, 1.0, 1.0, 1, 1) == "1.00 1/1"
    summ = seed_summary(table(np.array([[1.0, 0.0, 0.5, 0.2], [3.0, 0.2, 0.5, 0.4]]),
                              p=np.array([[0.01, 0.5, 0.01, 0.01], [0.01, 0.01, 0.2, 0.01]])))
    cells = pivot_seeds(summ, "top10_mean")
    # value = null (1.0) + excess; person head: mean 3.0, sd √2, range [2, 4], significant 2/2
    assert cells.loc["k1", "person head"] == f"3.00 ± {np.sqrt(2):.2f} [2.00, 4.00] 2/2"
    assert cells.loc["k1", "text"].endswith("1/2")
    assert pivot_seeds(summ, "top10_mean", cells="excess").loc["k1", "drink"].startswith("0.30")
    with pytest.raises(DataError, match="cells"):
        pivot_seeds(summ, "top10_mean", cells="nope")


def test_constant_excess_gives_no_anova_test():
    t = table(np.zeros((3, 4)))
    row = seed_anova(t).iloc[0]
    assert np.isnan(row.F_category) and row.var_category == 0


def test_a_seed_without_a_value_is_counted_not_averaged():
    """No permutations (null mean NaN) or no defined unit (value NaN) in one seed: that seed is
    left out of the mean and spread, counted in n_nan and as not significant; a cell with no
    value in any seed has NaN statistics; the seed ANOVA of that statistic has no test."""
    ex = np.array([[1.0, 0.2, 0.5, 0.0], [3.0, 0.4, 0.7, 0.1], [5.0, 0.6, 0.9, 0.2]])
    t = table(ex)
    t.loc[(t.seed == 2) & (t.category == "person head"), "null_mean"] = np.nan
    t.loc[t.category == "drink", "value"] = np.nan
    s = seed_summary(t).set_index("category")
    assert s.loc["person head", "n_seeds"] == 3 and s.loc["person head", "n_nan"] == 1
    assert s.loc["person head", "value_mean"] == pytest.approx(1.0 + 2.0)  # seeds 0 and 1
    assert s.loc["person head", "n_significant"] == 2
    assert s.loc["person head", "agreement"] == "mixed"
    assert np.isnan(s.loc["drink", "value_mean"]) and s.loc["drink", "n_nan"] == 3
    assert s.loc["drink", "agreement"] == "none"
    assert s.loc["text", "n_nan"] == 0 and s.loc["text", "agreement"] == "all"
    row = seed_anova(t).iloc[0]
    assert np.isnan(row.F_category) and row.n_nan == 4

