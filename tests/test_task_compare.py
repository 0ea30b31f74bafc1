"""Task vs data analyses: mean-map NSS, Table 8, paired deltas, sign-flip permutation test."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from scipy import stats

from dissect.errors import DataError
from dissect.task_compare import (
    finetuned_trunk,
    mean_map_nss,
    paired_deltas,
    paired_permutation_test,
    per_image_mean_nss,
    table8,
    task_statistics,
)


# -- mean-map NSS --------------------------------------------------------------------------------
def reference_nss(acts: np.ndarray, size: tuple[int, int], points: np.ndarray) -> float:
    """Upsample every unit map explicitly, average, then NSS (population std)."""
    up = F.interpolate(torch.from_numpy(acts)[None], size=size, mode="bilinear",
                       align_corners=False)[0].mean(0).numpy()  # fmt: skip
    z = (up - up.mean()) / up.std()
    r, c = np.rint(points[:, 1]).astype(int), np.rint(points[:, 0]).astype(int)
    return float(z[r, c].mean())


def test_mean_map_nss_matches_explicit_upsampling():
    rng = np.random.default_rng(0)
    acts = rng.random((5, 7, 9))
    pts = np.column_stack([rng.uniform(0, 79, 30), rng.uniform(0, 59, 30)])
    got = mean_map_nss(acts, (60, 80), pts)
    assert got == pytest.approx(reference_nss(acts, (60, 80), pts), abs=1e-9)
    # a torch tensor gives the same; fixations on the map's peak give a high NSS
    assert mean_map_nss(torch.from_numpy(acts), (60, 80), pts) == pytest.approx(got)
    peak = np.zeros((2, 6, 8))
    peak[:, 3, 4] = 1.0
    on = np.array([[4.5 * 10, 3.5 * 10]])  # pixel centre of cell (3, 4) at 10x upsampling
    assert mean_map_nss(peak, (60, 80), on) > 3
    assert np.isnan(mean_map_nss(np.ones((3, 4, 4)), (60, 80), on))  # constant map
    with pytest.raises(DataError):
        mean_map_nss(acts, (60, 80), np.zeros((0, 2)))
    with pytest.raises(DataError):
        mean_map_nss(acts[0], (60, 80), pts)


class _Const(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.relu(x[:, :2, ::4, ::4]) * self.scale


def test_per_image_mean_nss_and_table(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {i: rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for i in ("a", "b", "c")}
    pts = {i: np.column_stack([rng.uniform(0, 31, 6), rng.uniform(0, 23, 6)]) for i in imgs}
    ds = SimpleNamespace(
        load_image=lambda i: imgs[i],
        points=lambda i, drop_first=False: pts[i][1:] if drop_first else pts[i],
    )

    def pre(images):
        return torch.stack([torch.from_numpy(m).permute(2, 0, 1).float() / 255 - 0.5
                            for m in images])  # fmt: skip

    bb = SimpleNamespace(stages=[("s", _Const(1.0))], preprocess=pre)
    bb2 = SimpleNamespace(stages=[("s", _Const(3.0))], preprocess=pre)
    pred = pd.DataFrame({"image": ["a", "b", "c"], "correct": [True, False, True]})
    t = per_image_mean_nss({"pt": bb, "sr": bb2}, ds, ["a", "b", "c"], correct=pred)
    assert list(t.columns) == ["image", "model", "nss", "correct"]
    assert t["model"].tolist() == ["pt"] * 3 + ["sr"] * 3
    for _, row in t.iterrows():
        x = pre([imgs[row["image"]]])
        acts = _Const(1.0)(x)[0].double().numpy()
        assert row["nss"] == pytest.approx(reference_nss(acts, (24, 32), pts[row["image"]][1:]))
    # NSS is scale invariant: pt and sr agree
    np.testing.assert_allclose(t["nss"][:3], t["nss"][3:], atol=1e-6)  # float32 trunk
    assert t["correct"].tolist() == [True, False, True] * 2
    with pytest.raises(DataError, match="no scene prediction"):
        per_image_mean_nss({"pt": bb}, ds, ["a"], correct={"b": True})


# -- Table 8 -----------------------------------------------------------------------------------
def test_table8_toy():
    per = pd.DataFrame({
        "image": [str(i) for i in range(8)] * 2,
        "model": ["pt"] * 8 + ["sr"] * 8,
        "nss": [2.0, 2.2, 2.4, 2.6, 1.0, 1.1, np.nan, 1.2] + [1, 1, 1, 1, 1, 1, 1, 1],
        "correct": [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4,
    })  # fmt: skip
    t = table8(per).set_index("model")
    assert list(t.index) == ["pt", "sr"]
    pt = t.loc["pt"]
    assert (pt["n_correct"], pt["n_wrong"], pt["n_undefined"]) == (4, 3, 1)
    assert pt["nss_correct"] == pytest.approx(2.3)
    assert pt["nss_wrong"] == pytest.approx(1.1)
    assert pt["diff"] == pytest.approx(1.2)
    ref = stats.mannwhitneyu([2.0, 2.2, 2.4, 2.6], [1.0, 1.1, 1.2], alternative="two-sided")
    assert pt["u_stat"] == ref.statistic == 12 and pt["p_value"] == pytest.approx(ref.pvalue)
    assert t.loc["sr", "diff"] == 0 and t.loc["sr", "p_value"] == pytest.approx(1.0)
    # only one group -> NaN p, no crash
    one = table8(per[per["correct"]])
    assert one["n_wrong"].tolist() == [0, 0] and one["p_value"].isna().all()


def test_table8_errors():
    ok = pd.DataFrame({"image": ["1", "2"], "model": ["pt", "pt"], "nss": [1.0, 2.0],
                       "correct": [True, False]})  # fmt: skip
    with pytest.raises(DataError, match="missing columns"):
        table8(ok.drop(columns="correct"))
    with pytest.raises(DataError, match="duplicate"):
        table8(pd.concat([ok, ok]))
    with pytest.raises(DataError, match="boolean"):
        table8(ok.assign(correct=["yes", "no"]))


# -- paired deltas + permutation test ----------------------------------------------------------
def test_paired_deltas():
    long = pd.DataFrame({
        "category": ["head", "text"] * 3,
        "model": ["pt", "pt", "sp", "sp", "sr", "sr"],
        "value": [1.0, 2.0, 1.5, 1.0, 1.1, 2.2],
    })  # fmt: skip
    d = paired_deltas(long, "category")
    assert d.loc["head", "sp"] == pytest.approx(0.5) and d.loc["text", "sp"] == pytest.approx(-1)
    assert d.loc["head", "sr"] == pytest.approx(0.1) and d.loc["text", "sr"] == pytest.approx(0.2)
    with pytest.raises(DataError, match="not present for all"):
        paired_deltas(long.iloc[:-1], "category")
    with pytest.raises(DataError, match="duplicate"):
        paired_deltas(pd.concat([long, long.iloc[:1]]), "category")


def test_permutation_planted_effect_small_p():
    rng = np.random.default_rng(0)
    n = 200  # e.g. units
    sp = rng.normal(0, 1.0, n)  # saliency tuning moves units a lot
    sr = rng.normal(0, 0.3, n)  # scene tuning much less
    r = paired_permutation_test(sp, sr, n_perm=2000, seed=1)
    assert len(r) == 1 and r.loc[0, "method"] == "monte-carlo"
    assert r.loc[0, "observed"] > 0
    assert r.loc[0, "p_value"] == pytest.approx(1 / 2001)  # the smallest attainable
    assert r.loc[0, "observed"] == pytest.approx(np.abs(sp).mean() - np.abs(sr).mean())
    # signed statistic: both centred at 0 -> no directional difference
    assert paired_permutation_test(sp, sr, n_perm=2000, statistic="signed").loc[0, "p_value"] > 0.01


def test_permutation_null_not_small_and_reproducible():
    rng = np.random.default_rng(5)
    ps = []
    for _ in range(20):
        sp, sr = rng.normal(0, 1, 50), rng.normal(0, 1, 50)
        ps.append(paired_permutation_test(sp, sr, n_perm=500, seed=2).loc[0, "p_value"])
    ps = np.array(ps)
    assert (ps < 0.01).sum() <= 1 and np.median(ps) > 0.2  # ~uniform under the null
    a = paired_permutation_test(sp, sr, n_perm=500, seed=3)
    b = paired_permutation_test(sp, sr, n_perm=500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = paired_permutation_test(sp, sr, n_perm=500, seed=4)
    assert (
        c.loc[0, "p_value"] != a.loc[0, "p_value"] or c.loc[0, "null_q95"] != a.loc[0, "null_q95"]
    )


def test_permutation_exact_small_n_and_alignment():
    # 7 categories: 2**7 = 128 <= n_perm -> exact enumeration
    sp = pd.Series([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.8], index=list("abcdefg"))
    sr = pd.Series([0.1, 0.0, 0.2, 0.1, -0.1, 0.1, 0.0], index=list("abcdefg"))
    r = paired_permutation_test(sp, sr[::-1], n_perm=10000)  # aligned by label
    assert r.loc[0, "method"] == "exact" and r.loc[0, "n_perm"] == 128
    # all d_i > 0: only the identity and the all-flipped vector reach |T| -> p = 2/128
    assert r.loc[0, "p_value"] == pytest.approx(2 / 128)
    sp2 = sp.copy()
    sp2["c"] = np.nan
    r2 = paired_permutation_test(sp2, sr)
    assert (r2.loc[0, "n"], r2.loc[0, "n_excluded"]) == (6, 1)
    with pytest.raises(DataError, match="items differ"):
        paired_permutation_test(sp, sr.rename({"a": "z"}))
    with pytest.raises(DataError, match="paired"):
        paired_permutation_test([1.0, 2.0], [1.0])


def test_finetuned_trunk_generic():
    model = SimpleNamespace(backbone=SimpleNamespace(model=torch.nn.Linear(2, 2), weights_id="w0",
                                                     stages=[]))  # fmt: skip
    bb = finetuned_trunk(model, "saliency")
    assert bb.weights_id.startswith("w0+saliency:") and model.backbone.weights_id == "w0"
    assert bb.model is not model.backbone.model
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_finetuned_trunk_of_saliency_readout():
    from dissect.backbones import load_backbone
    from dissect.models.readout import SaliencyReadout

    bb = load_backbone("efficientnet_lite0", weights="random", seed=0)
    model = SaliencyReadout(bb, 1)
    with torch.no_grad():
        dict(model.backbone.stages)["head"][0].weight.add_(0.1)  # "fine-tune" the head stage
    ft = finetuned_trunk(model, "saliency")
    assert ft.stage_names == bb.stage_names and ft.layers == bb.layers
    assert ft.weights_id.startswith(bb.weights_id + "+saliency:")
    new, old = ft.model.state_dict(), bb.model.state_dict()
    changed = [k for k in old if not torch.equal(new[k], old[k])]
    assert changed == ["_conv_head.weight"]
    # the stage modules are the copy's own submodules at the same paths
    assert dict(ft.stages)["head"][0] is ft.model.get_submodule("_conv_head")


# -- Table 7 -------------------------------------------------------------------------------------
def _stat_rows(model, layer, top1, counts):
    cats = ["person head", "text", "food"]
    return [{"model": model, "k": 1, "layer": layer, "category": c, "stat": stat, "value": v,
             "null_mean": 0.0, "p_value": 0.5}
            for stat, vals in (("top1_mean", top1), ("count_above_T", counts))
            for c, v in zip(cats, vals, strict=True)]  # fmt: skip


def test_task_statistics_hand_computed():
    stats = pd.DataFrame(
        _stat_rows("pt", "head", [1.0, 1.5, 1.0], [0, 1, 0])
        + _stat_rows("k1", "head", [2.5, 1.0, 0.2], [3, 0, 0])
        + _stat_rows("k2", "head", [9.0, 9.0, 9.0], [9, 9, 9])  # not the sp model: ignored
        + _stat_rows("pt", "block8", [9.0, 9.0, 9.0], [9, 9, 9])  # another layer: ignored
    )
    # sr trunk: 2 units × 4 regions of 2 images. Category means of unit 0 / unit 1:
    # person head (1+3)/2 = 2 / (3+1)/2 = 2; text 2 / 0; food 0.5 / undefined
    sr = xr.DataArray(
        [[1.0, 2.0, 3.0, 0.5], [3.0, 0.0, 1.0, np.nan]], dims=("unit", "region"),
        coords={"image": ("region", ["a", "a", "b", "b"]),
                "category": ("region", ["person head", "text", "person head", "food"])},
        attrs={"layer": "head"},
    )  # fmt: skip
    t7, tests = task_statistics(stats, sr, "k1", k=1, threshold=1.5, n_null=0, n_boot=0)
    assert list(t7.columns[:3]) == ["model", "layer", "category"]
    assert len(t7) == 3 * 2 * 3 and set(t7.layer) == {"head"}
    got = t7.set_index(["model", "stat", "category"]).value.sort_index()
    cats = ["person head", "text", "food"]
    np.testing.assert_allclose(got.loc["sr", "top1_mean"].loc[cats], [2.0, 2.0, 0.5])
    np.testing.assert_array_equal(got.loc["sr", "count_above_T"].loc[cats], [2, 1, 0])
    np.testing.assert_allclose(got.loc["sp", "top1_mean"].loc[cats], [2.5, 1.0, 0.2])
    np.testing.assert_allclose(got.loc["pt", "top1_mean"].loc[cats], [1.0, 1.5, 1.0])
    t = tests.set_index("stat")
    # top1: |Δsp| = 1.5, 0.5, 0.8; |Δsr| = 1.0, 0.5, 0.5 → T = mean(0.5, 0, 0.3)
    # count: |Δsp| = 3, 1, 0; |Δsr| = 2, 0, 0 → T = mean(1, 1, 0)
    for stat, d in (("top1_mean", [0.5, 0.0, 0.3]), ("count_above_T", [1.0, 1.0, 0.0])):
        assert t.loc[stat, "observed"] == pytest.approx(np.mean(d))
        # exhaustive enumeration of the 2^3 sign vectors, written out independently
        null = [abs(np.dot(s, d)) / 3 for s in itertools.product([1, -1], repeat=3)]
        assert t.loc[stat, "p_value"] == pytest.approx(np.mean(np.array(null) >= np.mean(d)
                                                               - 1e-12))  # fmt: skip
        assert t.loc[stat, "method"] == "exact" and t.loc[stat, "n"] == 3
    assert t.loc["top1_mean", "p_value"] == pytest.approx(0.5)  # by hand: 4 of 8 vectors
    # the same with a {layer: array} mapping
    t7b, _ = task_statistics(stats, {"head": sr}, "k1", k=1, threshold=1.5, n_null=0, n_boot=0)
    pd.testing.assert_frame_equal(t7, t7b)


def test_task_statistics_errors():
    stats = pd.DataFrame(_stat_rows("pt", "head", [1.0, 1.5, 1.0], [0, 1, 0]))
    sr = xr.DataArray(np.ones((2, 3)), dims=("unit", "region"),
                      coords={"image": ("region", ["a", "b", "c"]),
                              "category": ("region", ["person head", "text", "food"])},
                      attrs={"layer": "head"})  # fmt: skip
    with pytest.raises(DataError, match="k1"):
        task_statistics(stats, sr, "k1", k=1, n_null=0, n_boot=0)
    with pytest.raises(DataError, match="one layer"):
        task_statistics(stats, {"head": sr, "block8": sr}, "k1")
    with pytest.raises(DataError, match="pt"):
        task_statistics(stats.assign(layer="block8"), sr, "pt", k=1, n_null=0, n_boot=0)
