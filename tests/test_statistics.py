"""Tests of dissect.statistics on synthetic association arrays (hand-computed cases, loop
references, null and bootstrap behaviour, §6 tests against direct scipy/statsmodels calls)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr
from scipy import stats as sps
from statsmodels.formula.api import ols
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from dissect.categories import NAMES
from dissect.errors import DataError
from dissect.statistics import (
    STAT_COLUMNS,
    _null_means,
    _permuted_labels,
    category_means,
    category_statistics,
    improvement,
    inner_output_spearman,
    od_anova,
    output_difference,
    output_saliency,
    region_output_difference,
    top_units_table,
    unit_anova_tukey,
)

NAN = np.nan


def make_assoc(values, images, categories, layer="conv5_3") -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    return xr.DataArray(
        values,
        dims=("unit", "region"),
        coords={
            "unit": np.arange(values.shape[0]),
            "image": ("region", [str(i) for i in images]),
            "region_id": ("region", np.arange(1, values.shape[1] + 1)),
            "category": ("region", list(categories)),
        },
        name="nss",
        attrs={"layer": layer},
    )


def random_assoc(rng, n_units, n_images, cats, per_image=(1, 6), nan_frac=0.1, shift=None):
    images, labels = [], []
    for i in range(n_images):
        for _ in range(rng.integers(per_image[0], per_image[1] + 1)):
            images.append(f"img{i:03d}")
            labels.append(cats[rng.integers(len(cats))])
    vals = rng.normal(size=(n_units, len(labels)))
    if shift:
        for cat, amount in shift.items():
            vals[:, np.array(labels) == cat] += amount
    vals[rng.random(vals.shape) < nan_frac] = NAN
    return make_assoc(vals, images, labels)


# 3 units × 6 regions, 3 images; categories text (2 regions), person head (3), food (1)
SMALL = make_assoc(
    [
        [1.0, 2.0, 3.0, NAN, 5.0, 6.0],
        [NAN, NAN, NAN, NAN, NAN, NAN],  # an all-NaN unit
        [2.0, NAN, 0.0, 4.0, -1.0, 3.0],
    ],
    images=["a", "a", "b", "b", "c", "c"],
    categories=["text", "person head", "person head", "food", "text", "person head"],
)


# --------------------------------------------------------------------------- category means


def test_category_means_hand_computed():
    m, n = category_means(SMALL)
    assert list(m.category.values) == ["person head", "text", "food"]  # display order
    assert m.dims == ("unit", "category") and n.dims == ("unit", "category")
    # unit 0: head (2, 3, 6) → 11/3; text (1, 5) → 3; food (NaN) → undefined
    np.testing.assert_allclose(m.sel(unit=0).values, [11 / 3, 3.0, NAN])
    np.testing.assert_array_equal(n.sel(unit=0).values, [3, 2, 0])
    # unit 1: all NaN → all undefined, counted as 0 defined (not averaged as 0)
    assert np.isnan(m.sel(unit=1).values).all()
    np.testing.assert_array_equal(n.sel(unit=1).values, [0, 0, 0])
    # unit 2: head (NaN, 0, 3) → 1.5 over 2; text (2, -1) → 0.5; food (4) → 4 (single region)
    np.testing.assert_allclose(m.sel(unit=2).values, [1.5, 0.5, 4.0])
    np.testing.assert_array_equal(n.sel(unit=2).values, [2, 2, 1])
    np.testing.assert_array_equal(m.coords["n_regions"].values, [3, 2, 1])
    assert m.attrs["layer"] == "conv5_3"


def test_category_means_equal_loop_on_random_data():
    rng = np.random.default_rng(3)
    assoc = random_assoc(rng, 17, 30, NAMES, nan_frac=0.3)
    m, n = category_means(assoc)
    for cat in m.category.values:
        sel = assoc.values[:, assoc.category.values == cat]
        for u in range(assoc.sizes["unit"]):
            row = sel[u][~np.isnan(sel[u])]
            assert n.sel(unit=u, category=cat) == row.size
            ref = row.mean() if row.size else NAN
            np.testing.assert_allclose(m.sel(unit=u, category=cat), ref)


def test_category_names_are_canonicalised_and_validated():
    a = SMALL.assign_coords(category=("region", ["Text", "person_head", "PERSON HEAD", "food",
                                                  "text", "person head"]))  # fmt: skip
    m, _ = category_means(a)
    assert list(m.category.values) == ["person head", "text", "food"]
    bad = SMALL.assign_coords(category=("region", ["text"] * 5 + ["dog"]))
    with pytest.raises(DataError, match="dog"):
        category_means(bad)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.rename(region="r"), "dims"),
        (lambda a: a.drop_vars("image"), "image"),
        (lambda a: a.copy(data=np.where(np.isnan(a.values), np.inf, a.values)), "inf"),
    ],
)
def test_bad_association_array_raises(mutate, match):
    with pytest.raises(DataError, match=match) as err:
        category_statistics(mutate(SMALL), n_null=2, n_boot=2)
    assert "conv5_3" in str(err.value)  # names the layer


def test_transposed_input_is_accepted():
    m1, _ = category_means(SMALL)
    m2, _ = category_means(SMALL.transpose("region", "unit"))
    xr.testing.assert_identical(m1, m2)


# --------------------------------------------------------------------------- observed statistics


def test_statistics_hand_computed_small_case():
    df = category_statistics(SMALL, k=1, threshold=3.0, n_null=0, n_boot=0)
    assert list(df.columns) == list(STAT_COLUMNS)
    top = df[df.stat == "top1_mean"].set_index("category")
    # top-1 over units 0 and 2 (unit 1 undefined): head max(11/3, 1.5), text max(3, .5),
    # food only unit 2 defined → 4
    np.testing.assert_allclose(top.loc[["person head", "text", "food"], "value"], [11 / 3, 3, 4])
    np.testing.assert_array_equal(top.loc[["person head", "text", "food"], "n_units"], [2, 2, 1])
    np.testing.assert_array_equal(
        top.loc[["person head", "text", "food"], "n_undefined"], [1, 1, 2]
    )
    np.testing.assert_array_equal(top.loc[["person head", "text", "food"], "n_regions"], [3, 2, 1])
    cnt = df[df.stat == "count_above_T"].set_index("category")
    # m > 3 (strictly): head (11/3 yes, 1.5 no) → 1; text (3 no, .5 no) → 0; food (4) → 1
    np.testing.assert_array_equal(cnt.loc[["person head", "text", "food"], "value"], [1, 0, 1])
    assert df["p_value"].isna().all() and df["ci_low"].isna().all()
    assert (df.layer == "conv5_3").all()


def test_topk_with_fewer_defined_units_than_k():
    df = category_statistics(SMALL, k=10, n_null=0, n_boot=0)
    top = df[df.stat == "top10_mean"].set_index("category")
    np.testing.assert_allclose(top.loc["person head", "value"], (11 / 3 + 1.5) / 2)
    np.testing.assert_allclose(top.loc["food", "value"], 4.0)


def test_observed_statistics_equal_loop_on_random_data():
    rng = np.random.default_rng(5)
    assoc = random_assoc(rng, 40, 50, ["person head", "text", "object", "food"], nan_frac=0.2)
    assoc[3] = NAN  # an all-NaN unit
    k, T = 5, 0.4
    df = category_statistics(assoc, k=k, threshold=T, n_null=0, n_boot=0)
    for cat in ["person head", "text", "object", "food"]:
        sel = assoc.values[:, assoc.category.values == cat]
        means = np.array([np.nanmean(r) if np.isfinite(r).any() else NAN for r in sel])
        defined = np.sort(means[np.isfinite(means)])[::-1]
        row = df[(df.category == cat) & (df.stat == f"top{k}_mean")].iloc[0]
        np.testing.assert_allclose(row.value, defined[:k].mean())
        assert row.n_units == defined.size
        row = df[(df.category == cat) & (df.stat == "count_above_T")].iloc[0]
        assert row.value == (defined > T).sum()


# --------------------------------------------------------------------------- null and bootstrap


def test_null_means_equal_loop():
    rng = np.random.default_rng(7)
    assoc = random_assoc(rng, 9, 12, ["text", "food", "plant"], nan_frac=0.3)
    m0, _ = category_means(assoc)
    cats = list(m0.category.values)
    X = np.nan_to_num(assoc.values)
    D = np.isfinite(assoc.values).astype(float)
    labels = np.array([cats.index(c) for c in assoc.category.values])
    perms = np.stack([rng.permutation(labels) for _ in range(5)])
    got = _null_means(X, D, perms, len(cats), dense_d=False, chunk=2)
    for b in range(5):
        ref, _ = category_means(assoc.assign_coords(category=("region", np.array(cats)[perms[b]])))
        ref = ref.reindex(category=cats).values
        np.testing.assert_allclose(got[b], ref)
    # dense shortcut gives the same numbers when nothing is undefined
    Xd = rng.normal(size=X.shape)
    np.testing.assert_allclose(
        _null_means(Xd, np.ones_like(Xd), perms, 3, dense_d=True),
        _null_means(Xd, np.ones_like(Xd), perms, 3, dense_d=False),
    )


def test_permutation_within_images_preserves_composition():
    rng = np.random.default_rng(0)
    images = np.array([0, 3, 0, 1, 2, 3, 3, 0, 2, 3])  # regions of an image need not be adjacent
    labels = np.array([0, 1, 2, 1, 0, 0, 2, 1, 1, 0])
    perms = _permuted_labels(rng, labels, images, 50, "images")
    for p in perms:
        for i in np.unique(images):
            assert sorted(p[images == i]) == sorted(labels[images == i])
    assert (perms[:, 3] == 1).all()  # single-region image never changes
    assert not (perms == labels).all(axis=1).all()  # it does shuffle
    across = _permuted_labels(rng, labels, images, 50, "labels")
    assert any(sorted(p[images == 0]) != [0, 1, 2] for p in across)  # composition not kept


@pytest.mark.parametrize("null", ["labels", "images"])
def test_planted_category_is_significant(null):
    rng = np.random.default_rng(11)
    cats = ["person head", "text", "object", "food"]
    assoc = random_assoc(rng, 60, 60, cats, per_image=(3, 6), shift={"person head": 1.0})
    B = 49
    df = category_statistics(assoc, n_null=B, n_boot=50, seed=1, null=null)
    head = df[df.category == "person head"].set_index("stat")
    assert head.loc["top10_mean", "p_value"] == pytest.approx(1 / (B + 1))
    assert head.loc["top10_mean", "value"] > head.loc["top10_mean", "null_q95"]
    others = df[(df.category != "person head") & (df.stat == "top10_mean")]
    assert (others.p_value > 0.5).all()  # the planted category pulls the others below the null


def test_pure_noise_p_values_are_roughly_uniform():
    cats = ["person head", "text", "object", "food"]
    ps = []
    for s in range(20):
        rng = np.random.default_rng(100 + s)
        assoc = random_assoc(rng, 30, 40, cats, per_image=(2, 5), nan_frac=0.05)
        df = category_statistics(assoc, n_null=39, n_boot=0, seed=s)
        ps.extend(df.loc[df.stat == "top10_mean", "p_value"])
    ps = np.array(ps)
    assert ps.min() >= 1 / 40
    assert 0.35 < ps.mean() < 0.65
    assert (ps < 0.05).mean() < 0.15


def test_reproducible_with_seed():
    rng = np.random.default_rng(2)
    assoc = random_assoc(rng, 20, 25, ["text", "food", "plant"])
    a = category_statistics(assoc, n_null=20, n_boot=30, seed=4)
    b = category_statistics(assoc, n_null=20, n_boot=30, seed=4)
    c = category_statistics(assoc, n_null=20, n_boot=30, seed=5)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_series_equal(a.value, c.value)
    assert not np.allclose(a.null_mean, c.null_mean)
    assert not np.allclose(a.ci_low, c.ci_low)
    assert not np.allclose(a.excess_ci_low, c.excess_ci_low)


def test_bootstrap_ci_contains_value_on_stable_data():
    rng = np.random.default_rng(6)
    cats = ["person head", "text", "object"]
    assoc = random_assoc(rng, 40, 80, cats, per_image=(2, 5), nan_frac=0.0)
    # units with clearly different, stable levels (noise sd 0.3): the top set does not change
    level = np.linspace(-2, 2, 40)[:, None]
    assoc = assoc.copy(data=level + 0.3 * assoc.values)
    kw = dict(k=10, threshold=1.0, n_null=10, n_boot=200, seed=0)
    df = category_statistics(assoc, **kw, ci_method="percentile")
    assert (df.ci_low <= df.value).all() and (df.value <= df.ci_high).all()
    top = df[df.stat == "top10_mean"]
    assert ((top.ci_high - top.ci_low) < 0.3).all()
    assert (df.ci_method == "percentile").all() and (df.ci_level == 0.95).all()
    basic = category_statistics(assoc, **kw, ci_method="basic")
    np.testing.assert_allclose(basic.ci_low, 2 * df.value - df.ci_high)
    np.testing.assert_allclose(basic.ci_high, 2 * df.value - df.ci_low)
    assert (basic.ci_used == "basic").all()
    bca = category_statistics(assoc, **kw, ci_method="bca")  # case-insensitive
    assert (bca.ci_method == "BCa").all()
    assert (bca.ci_low <= bca.value).all() and (bca.value <= bca.ci_high).all()
    with pytest.raises(DataError, match="ci_method"):
        category_statistics(assoc, **kw, ci_method="studentized")


def test_driver_over_layers():
    rng = np.random.default_rng(9)
    a = random_assoc(rng, 12, 15, ["text", "food"])
    b = random_assoc(rng, 8, 15, ["text", "plant"])
    df = category_statistics({"conv4_3": a, "conv5_3": b}, n_null=5, n_boot=5)
    assert list(pd.unique(df.layer)) == ["conv4_3", "conv5_3"]
    assert set(df[df.layer == "conv5_3"].category) == {"text", "plant"}
    single = category_statistics(b, n_null=5, n_boot=5)  # same seed per layer: same numbers
    pd.testing.assert_frame_equal(
        df[df.layer == "conv5_3"].drop(columns="layer").reset_index(drop=True),
        single.drop(columns="layer"),
    )
    listed = category_statistics([a, b], n_null=5, n_boot=5)
    assert (listed.layer == "conv5_3").all()  # from attrs
    with pytest.raises(DataError, match="null"):
        category_statistics(a, null="regions")


# --------------------------------------------------------------------------- §6


def region_array(values, categories):
    return xr.DataArray(
        np.asarray(values, dtype=float),
        dims=("region",),
        coords={
            "image": ("region", [f"i{j // 2}" for j in range(len(values))]),
            "region_id": ("region", np.arange(len(values))),
            "category": ("region", categories),
        },
    )


CATS6 = ["text", "person head", "text", "food", "person head", "person head"]


def test_output_saliency_hand_computed():
    pred = region_array([1.0, 2.0, 3.0, NAN, 4.0, NAN], CATS6)
    df = output_saliency(pred).set_index("category")
    assert list(df.index) == ["person head", "text", "food"]
    np.testing.assert_allclose(df.os, [3.0, 2.0, NAN])
    np.testing.assert_array_equal(df.n, [2, 2, 0])
    np.testing.assert_array_equal(df.n_regions, [3, 2, 1])
    same = output_saliency(np.array([1.0, 2.0, 3.0, NAN, 4.0, NAN]), CATS6)
    pd.testing.assert_frame_equal(same, df.reset_index())
    with pytest.raises(DataError, match="category labels"):
        output_saliency(np.ones(3), CATS6)


def test_output_difference_hand_computed():
    pred = region_array([1.0, 2.0, 3.0, 1.0, 4.0, NAN], CATS6)
    gt = region_array([2.0, 2.5, 0.0, 1.5, 1.0, 3.0], CATS6)
    od = output_difference(pred, gt).set_index("category")
    np.testing.assert_allclose(od.od, [(0.5 + 3.0) / 2, (1.0 + 3.0) / 2, 0.5])
    np.testing.assert_array_equal(od.n, [2, 2, 1])
    reg = region_output_difference(pred, gt)
    assert list(reg.cluster) == ["rest", "head", "rest", "rest", "head", "head"]
    assert {"image", "region_id"} <= set(reg.columns)
    with pytest.raises(DataError, match="category"):
        output_difference(pred, region_array(np.ones(6), ["text"] * 6))


def test_od_anova_against_statsmodels():
    rng = np.random.default_rng(12)
    cats = rng.choice(NAMES, size=80)
    table = pd.DataFrame({"category": cats, "od": rng.gamma(2.0, 0.5, size=80)})
    table.loc[3, "od"] = NAN
    out = od_anova(table).set_index("term")
    ref_df = table.dropna().assign(cluster=lambda d: [
        "head" if c in ("person head", "animal head") else "rest" for c in d.category])  # fmt: skip
    ref = sm.stats.anova_lm(ols("od ~ C(cluster)", data=ref_df).fit(), typ=2)
    np.testing.assert_allclose(out.loc["cluster", "F"], ref.iloc[0]["F"])
    np.testing.assert_allclose(out.loc["cluster", "p_value"], ref.iloc[0]["PR(>F)"])
    np.testing.assert_array_equal(out["df"], ref["df"])
    np.testing.assert_allclose(out.loc["cluster", "eta_sq"], ref.sum_sq.iloc[0] / ref.sum_sq.sum())
    assert out.n.iloc[0] == 79
    f, p = sps.f_oneway(*[g.od.to_numpy() for _, g in ref_df.groupby("cluster")])
    np.testing.assert_allclose([out.loc["cluster", "F"], out.loc["cluster", "p_value"]], [f, p])
    by_cat = od_anova(table, factor="category")
    assert by_cat.df.iloc[0] == len(set(table.dropna().category)) - 1


def test_unit_anova_tukey_against_statsmodels():
    rng = np.random.default_rng(13)
    cats = ["person head", "text", "food"]
    m = xr.DataArray(
        rng.normal(size=(30, 3)) + np.array([1.0, 0.0, 0.2]),
        dims=("unit", "category"),
        coords={"unit": np.arange(30), "category": cats},
    )
    m[0, 1] = NAN
    top = top_units_table(m, k=10)
    assert len(top) == 30
    for cat in cats:  # the 10 best defined units of each category
        v = m.sel(category=cat).values
        np.testing.assert_allclose(
            np.sort(top[top.category == cat].nss), np.sort(v[np.isfinite(v)])[-10:]
        )
    anova, tukey = unit_anova_tukey(m, k=10)
    f, p = sps.f_oneway(*[top[top.category == c].nss.to_numpy() for c in cats])
    row = anova.set_index("term").loc["category"]
    np.testing.assert_allclose([row.F, row.p_value], [f, p])
    assert row.df == 2 and anova.n.iloc[0] == 30
    ref = pairwise_tukeyhsd(top.nss.to_numpy(), top.category.to_numpy())
    ref_rows = pd.DataFrame(ref.summary().data[1:], columns=ref.summary().data[0])
    np.testing.assert_array_equal(tukey.group1, ref_rows.group1)
    np.testing.assert_array_equal(tukey.group2, ref_rows.group2)
    np.testing.assert_allclose(tukey.meandiff, ref_rows.meandiff.astype(float), atol=1e-4)
    np.testing.assert_allclose(tukey.p_adj, ref.pvalues)
    np.testing.assert_array_equal(tukey.reject, ref.reject)
    # all units: every defined value enters
    anova_all, _ = unit_anova_tukey(m, k=None)
    assert anova_all.n.iloc[0] == 89
    # a tidy table is used as is
    anova_tab, _ = unit_anova_tukey(top)
    pd.testing.assert_frame_equal(anova_tab, anova)


def test_inner_output_spearman_against_scipy():
    inner = pd.Series({"person head": 3.0, "text": 2.0, "food": 1.2, "plant": NAN, "other": 0.5})
    os_ = pd.DataFrame(
        {
            "category": ["other", "text", "person head", "food", "plant"],
            "os": [0.9, 1.5, 2.5, 1.0, 0.7],
            "n": [3, 4, 5, 6, 7],
        }  # fmt: skip
    )
    res = inner_output_spearman(inner, os_)
    ref = sps.spearmanr([3.0, 2.0, 1.2, 0.5], [2.5, 1.5, 1.0, 0.9])
    assert res.n == 4 and res.categories == ("person head", "text", "food", "other")
    np.testing.assert_allclose([res.r_s, res.p_value], [ref.statistic, ref.pvalue])
    with pytest.raises(DataError, match="differ"):
        inner_output_spearman(inner.drop("other"), os_)


# --------------------------------------------------------------------------- Fig. 4


def test_improvement_hand_computed():
    rows = []
    for k, vals in [(0, (2.0, 1.0)), (1, (3.0, 0.5)), (5, (2.5, 1.0))]:
        for cat, v in zip(["text", "person head"], vals, strict=True):
            rows.append({"layer": "conv5_3", "k": k, "category": cat, "stat": "top10_mean",
                         "value": v, "null_mean": 0.5})  # fmt: skip
            rows.append({"layer": "conv5_3", "k": k, "category": cat, "stat": "count_above_T",
                         "value": 9.0, "null_mean": 1.0})  # fmt: skip
    out = improvement(pd.DataFrame(rows))
    assert list(out.k) == [1, 1, 5, 5] and list(out.category[:2]) == ["person head", "text"]
    got = out.set_index(["k", "category"])
    np.testing.assert_allclose(got.loc[(1, "text"), "improvement_pct"], 50.0)
    np.testing.assert_allclose(got.loc[(1, "person head"), "improvement_pct"], -50.0)
    np.testing.assert_allclose(got.loc[(5, "text"), "improvement_pct"], 25.0)
    # excess over null: text 1.5 → 2.5 (+66.7 %); person head 0.5 → 0 (−100 %)
    np.testing.assert_allclose(got.loc[(1, "text"), "excess_improvement_pct"], 100 / 1.5)
    np.testing.assert_allclose(got.loc[(1, "person head"), "excess_improvement_pct"], -100.0)
    with pytest.raises(DataError, match="k == 0"):
        improvement(pd.DataFrame(rows).query("k != 0"))


def test_improvement_keeps_the_display_name():
    models = [(0, "k0", 2.0), (1, "k1", 3.0), (18, "all", 4.0)]
    rows = [{"k": k, "model": name, "category": "text", "stat": "top5_mean", "value": v,
             "null_mean": 1.0} for k, name, v in models]  # fmt: skip
    out = improvement(pd.DataFrame(rows))  # stat found: the single top-k one, here top5_mean
    assert list(out.model) == ["k1", "all"] and list(out.k) == [1, 18]
    np.testing.assert_allclose(out.improvement_pct, [50.0, 100.0])
    assert list(out.columns[:3]) == ["category", "k", "model"]


def test_compare_with_layers_hand_made():
    from dissect.statistics import compare_with_layers

    rows = []
    for layer, vals in (("a", (1.0, 5.0)), ("b", (3.0, 2.0)), ("enc", (2.0, 6.0))):
        for cat, v in zip(("person head", "text"), vals, strict=True):
            rows.append({"layer": layer, "category": cat, "stat": "top10_mean", "value": v,
                         "excess": v - 1, "p_value": 0.01})
    rows.append({"layer": "a", "category": "text", "stat": "count_above_T", "value": 99.0,
                 "excess": 0.0, "p_value": 1.0})
    got = compare_with_layers(pd.DataFrame(rows), "enc", "top10_mean")
    assert got["category"].tolist() == ["person head", "text"]
    assert got["best_other_layer"].tolist() == ["b", "a"]
    assert got["best_other_value"].tolist() == [3.0, 5.0]
    assert got["value"].tolist() == [2.0, 6.0] and got["excess"].tolist() == [1.0, 5.0]
    assert got["higher"].tolist() == [False, True]
    with pytest.raises(DataError, match="no top10_mean rows for 'x'"):
        compare_with_layers(pd.DataFrame(rows), "x", "top10_mean")
    # an undefined (NaN) layer value is skipped, never "the best"
    nan = [dict(r, value=np.nan) if (r["layer"], r["category"]) == ("b", "person head") else r
           for r in rows]
    got = compare_with_layers(pd.DataFrame(nan), "enc", "top10_mean")
    assert got["best_other_layer"].tolist() == ["a", "a"] and got["higher"].tolist() == [True,
                                                                                          True]
    with pytest.raises(DataError, match=r"repeated .* \(a, text\)"):
        compare_with_layers(pd.DataFrame(rows + [rows[1]]), "enc", "top10_mean")
