"""Inner vs output saliency (He et al. §6, Eqs. 2–3): :mod:`dissect.inner_output` against
independent references — ``F.interpolate`` upsampling with a loop over each region's fixations,
hand-computed OS / OD / top-k tables, :func:`scipy.stats.spearmanr`, ``f_oneway`` and
``tukey_hsd``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from _helpers_cache import tiny_backbone
from PIL import Image
from scipy import stats as sps

from dissect.data import FixationDataset, RegionSet, Stimulus, density_map
from dissect.errors import DataError
from dissect.inner_output import (
    SPEARMAN_NOTE,
    inner_output_tables,
    inner_saliency,
    model_tables,
    null_of_topk,
    readout_performance,
    region_output_table,
)
from dissect.metrics import auc_judd
from dissect.models.readout import SaliencyReadout

GT = {"sigma_deg": 0.25, "px_per_degree": 24.0}  # σ = 6 px on the small test images


# --------------------------------------------------------------------------- synthetic data


def _dataset(tmp_path) -> tuple[FixationDataset, RegionSet]:
    """Three images (one without regions), 3 observers × 6 fixations, rectangular regions."""
    sizes = {"a": (30, 40), "b": (26, 34), "c": (28, 28)}
    rng = np.random.default_rng(0)
    stimuli, fix, masks, table = [], [], {}, []
    for image_id, (h, w) in sizes.items():
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        stimuli.append(Stimulus(image_id, path, h, w))
        for subject in range(3):
            for order in range(6):
                # half-pixel coordinates exercise the rint (half to even) pixel rule
                x = float(rng.integers(0, w - 1)) + (0.5 if order % 2 else 0.0)
                y = float(rng.integers(0, h - 1)) + (0.5 if order % 3 == 0 else 0.0)
                fix.append({"image": image_id, "subject": subject, "order": order,
                            "x": x, "y": y, "duration": 200.0})
        mask = np.zeros((h, w), dtype=np.int32)
        if image_id != "c":
            mask[2:14, 3:20] = 1
            mask[15:h - 1, 5:w - 2] = 2
            mask[0:2, w - 3:w] = 3  # a tiny corner region: usually without fixations
            mask[2:14, 22:w - 4] = 4
            table += [{"image": image_id, "region": 1, "category": "person head", "code": 1},
                      {"image": image_id, "region": 2, "category": "text", "code": 37},
                      {"image": image_id, "region": 3, "category": "object", "code": 27},
                      {"image": image_id, "region": 4, "category": "animal head", "code": 16}]
        masks[image_id] = mask
    dataset = FixationDataset.from_table(stimuli, pd.DataFrame(fix), "synthetic")
    regions = RegionSet.from_masks(pd.DataFrame(table, columns=["image", "region", "category",
                                                                "code"]), masks)
    return dataset, regions


def _models() -> dict[str, SaliencyReadout]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        out = {"k0": SaliencyReadout(tiny_backbone(0), 0),
               "k1": SaliencyReadout(tiny_backbone(1), 1)}
    return {name: m.eval() for name, m in out.items()}


def _zscore_loop(full: np.ndarray, points: np.ndarray) -> list[float]:
    """Standardised map (population std) at each point's pixel (rint(y), rint(x))."""
    mu, sd = full.mean(), full.std()
    return [(full[int(np.rint(y)), int(np.rint(x))] - mu) / sd for x, y in points]


@pytest.mark.parametrize("drop_first", [True, False])
def test_region_output_table_against_interpolate_and_a_loop(tmp_path, drop_first):
    dataset, regions = _dataset(tmp_path)
    models = _models()
    ids = ["a", "b", "c"]
    table, perf = region_output_table(models, dataset, regions, ids, drop_first=drop_first,
                                      gt=GT)
    assert list(table.columns) == ["model", "image", "region_id", "category", "nss_pred",
                                   "nss_gt"]
    # 2 images × 4 regions × 2 models; image "c" has no regions but has performance rows
    assert len(table) == 16 and len(perf) == 6
    assert set(zip(perf["model"], perf["image"], strict=True)) == {
        (m, i) for m in models for i in ids}
    n_checked = 0
    for image_id in ids:
        fx = dataset.fixations_of(image_id)
        if drop_first:
            fx = fx[fx["order"] != 0]
        pts = fx[["x", "y"]].to_numpy()
        stim = dataset[image_id]
        h, w = stim.height, stim.width
        inst = regions.instance_mask(image_id)
        density = density_map(pts, (h, w), sigma_deg=GT["sigma_deg"],
                              px_per_degree=GT["px_per_degree"])
        image = np.asarray(Image.open(stim.file).convert("RGB"))
        for name, model in models.items():
            with torch.no_grad():
                pred = model(model.backbone.preprocess(image))[0].double()
            up = torch.nn.functional.interpolate(pred[None, None], size=(h, w), mode="bilinear",
                                                 align_corners=False)[0, 0].numpy()
            assert pred.shape != (h, w)  # a feature-resolution map, upsampled by the table
            rows = table[(table["model"] == name) & (table["image"] == image_id)]
            for _, row in rows.iterrows():
                inside = [(x, y) for x, y in pts
                          if inst[int(np.rint(y)), int(np.rint(x))] == row["region_id"]]
                if not inside:
                    assert np.isnan(row["nss_pred"]) and np.isnan(row["nss_gt"])
                    continue
                n_checked += 1
                assert row["nss_pred"] == pytest.approx(np.mean(_zscore_loop(up, inside)),
                                                        abs=1e-6)
                assert row["nss_gt"] == pytest.approx(np.mean(_zscore_loop(density, inside)),
                                                      abs=1e-9)
            p = perf[(perf["model"] == name) & (perf["image"] == image_id)].iloc[0]
            assert p["nss"] == pytest.approx(np.mean(_zscore_loop(up, pts)), abs=1e-6)
            assert p["cc"] == pytest.approx(np.corrcoef(up.ravel(), density.ravel())[0, 1],
                                            abs=1e-6)
            assert p["auc_judd"] == pytest.approx(auc_judd(up, pts), abs=1e-9)
        cats = table[table["image"] == image_id].drop_duplicates("region_id")
        if image_id != "c":
            assert dict(zip(cats["region_id"], cats["category"], strict=True)) == {
                1: "person head", 2: "text", 3: "object", 4: "animal head"}
    assert n_checked >= 10  # most regions have fixations
    summary = readout_performance(perf)
    assert list(summary["model"]) == ["k0", "k1"]
    for name in models:
        assert summary.set_index("model").loc[name, "nss"] == pytest.approx(
            perf.loc[perf["model"] == name, "nss"].mean())


def test_region_output_table_without_regions_is_empty(tmp_path):
    dataset, regions = _dataset(tmp_path)
    table, perf = region_output_table(_models(), dataset, regions, ["c"], drop_first=True, gt=GT)
    assert table.empty and list(table.columns)[:2] == ["model", "image"]
    assert len(perf) == 2 and np.isfinite(perf[["nss", "cc", "auc_judd"]].to_numpy()).all()


# --------------------------------------------------------------------------- hand-computed §6

CATS = ["person head", "animal head", "object", "text"]  # the study's display order
#: per-unit category means m[u, c] (units × CATS)
M = np.array([[2.0, 0.2, 1.0, 0.5],
              [1.0, 0.4, 4.0, 1.5],
              [3.0, 0.6, 0.0, 0.5],
              [0.0, 0.8, 2.0, 2.5]])
#: top-2 mean of each column, by hand: (3+2)/2, (0.8+0.6)/2, (4+2)/2, (2.5+1.5)/2
INNER = {"person head": 2.5, "animal head": 0.7, "text": 2.0, "object": 3.0}
NULL = {"person head": 0.5, "animal head": 0.2, "text": 1.8, "object": 2.9}
EXCESS = {"person head": 2.0, "animal head": 0.5, "text": 0.2, "object": 0.1}  # INNER − NULL


def _assoc() -> xr.DataArray:
    """(unit, region): two regions per category whose NaN-aware mean is M (one NaN cell)."""
    cols, cats, images = [], [], []
    for j, c in enumerate(CATS):
        a = M[:, j] - 1.0
        b = M[:, j] + 1.0
        cols += [a, b]
        cats += [c, c]
        images += ["i1", "i2"]
    values = np.stack(cols, axis=1)
    values[0, 0], values[0, 1] = np.nan, M[0, 0]  # unit 0, person head: mean of one region
    return xr.DataArray(values, dims=("unit", "region"),
                        coords={"unit": np.arange(4), "image": ("region", images),
                                "category": ("region", cats)})


def _region_rows(model: str = "m1") -> pd.DataFrame:
    pred = {"person head": [1.5, 2.5], "animal head": [1.0, np.nan], "text": [0.0, 1.0],
            "object": [-1.0, 1.0]}
    gt = {"person head": [2.0, 2.0], "animal head": [0.0, 1.0], "text": [1.0, 1.0],
          "object": [0.0, 3.0]}
    rows = [{"model": model, "image": f"i{r + 1}", "region_id": r + 1, "category": c,
             "nss_pred": pred[c][r], "nss_gt": gt[c][r]} for c in CATS for r in range(2)]
    return pd.DataFrame(rows)


def _stats(model: str = "m1", layer: str = "L") -> pd.DataFrame:
    """A statistics-stage tidy table with decoy rows (other stat, layer, model)."""
    rows = []
    for c in CATS:
        rows.append({"model": model, "layer": layer, "category": c, "stat": "top2_mean",
                     "value": INNER[c], "null_mean": NULL[c]})
        rows.append({"model": model, "layer": layer, "category": c, "stat": "count_above_T",
                     "value": 3.0, "null_mean": 99.0})
        rows.append({"model": model, "layer": "other", "category": c, "stat": "top2_mean",
                     "value": 0.0, "null_mean": -99.0})
        rows.append({"model": "decoy", "layer": layer, "category": c, "stat": "top2_mean",
                     "value": 0.0, "null_mean": 77.0})
    return pd.DataFrame(rows)


def test_inner_saliency_is_the_hand_top_k():
    inner, m = inner_saliency(_assoc(), 2)
    assert list(inner.index) == CATS
    np.testing.assert_allclose(inner.to_numpy(), [INNER[c] for c in CATS], atol=1e-12)
    np.testing.assert_allclose(m.transpose("unit", "category").values, M, atol=1e-12)
    # k larger than the number of units: the mean of all units
    all_units, _ = inner_saliency(_assoc(), 50)
    np.testing.assert_allclose(all_units.to_numpy(), M.mean(axis=0), atol=1e-12)


def test_null_of_topk_picks_the_right_rows():
    null = null_of_topk(_stats(), "m1", "L", 2)
    assert null.loc[CATS, "null_mean"].tolist() == [NULL[c] for c in CATS]
    with pytest.raises(DataError, match="top10_mean"):
        null_of_topk(_stats(), "m1", "L", 10)
    with pytest.raises(DataError, match="lacks column"):
        null_of_topk(_stats().drop(columns="null_mean"), "m1", "L", 2)


def test_model_tables_os_od_inner_excess_by_hand():
    table, spear, anova, tukey = model_tables(_region_rows(), _assoc(),
                                              null_of_topk(_stats(), "m1", "L", 2),
                                              model="m1", k=2)
    t = table.set_index("category")
    assert list(t.index) == CATS and set(t["model"]) == {"m1"}
    # Eq. 2: mean of the defined per-region NSS; n counts them, n_regions all
    assert t["os"].to_dict() == pytest.approx({"person head": 2.0, "animal head": 1.0,
                                               "text": 0.5, "object": 0.0})
    assert t["n"].to_dict() == {"person head": 2, "animal head": 1, "object": 2, "text": 2}
    assert t["n_regions"].tolist() == [2, 2, 2, 2]
    # Eq. 3: mean |pred − gt|; the NaN region is left out
    assert t["od"].to_dict() == pytest.approx({"person head": 0.5, "animal head": 1.0,
                                               "text": 0.5, "object": 1.5})
    assert t["inner"].to_dict() == pytest.approx(INNER)
    assert t["inner_null"].to_dict() == pytest.approx(NULL)
    assert t["inner_excess"].to_dict() == pytest.approx(EXCESS)

    # Spearman raw (the study's definition) and null-corrected vs scipy
    os_ = [{"person head": 2.0, "animal head": 1.0, "text": 0.5, "object": 0.0}[c]
           for c in CATS]
    raw = sps.spearmanr([INNER[c] for c in CATS], os_)
    exc = sps.spearmanr([EXCESS[c] for c in CATS], os_)
    assert spear["r_s"] == pytest.approx(raw.statistic)
    assert spear["p_value"] == pytest.approx(raw.pvalue)
    assert spear["r_s_excess"] == pytest.approx(exc.statistic) == pytest.approx(1.0)
    assert spear["p_value_excess"] == pytest.approx(exc.pvalue)
    assert spear["n"] == spear["n_excess"] == 4
    assert spear["r_s"] != pytest.approx(spear["r_s_excess"])

    # ANOVA of per-region OD by cluster (head: person/animal head) vs scipy's f_oneway
    od_anova = anova[anova["test"] == "od_by_cluster"].set_index("term")
    ref = sps.f_oneway([0.5, 0.5, 1.0], [1.0, 0.0, 1.0, 2.0])
    assert od_anova.loc["cluster", "F"] == pytest.approx(ref.statistic)
    assert od_anova.loc["cluster", "p_value"] == pytest.approx(ref.pvalue)
    assert od_anova.loc["cluster", "n"] == 7
    # unit ANOVA: the top-2 units' category means of each category
    groups = {c: np.sort(M[:, j])[-2:] for j, c in enumerate(CATS)}
    ua = anova[anova["test"] == "unit_anova"].set_index("term")
    ref = sps.f_oneway(*groups.values())
    assert ua.loc["category", "F"] == pytest.approx(ref.statistic)
    assert ua.loc["category", "p_value"] == pytest.approx(ref.pvalue)
    assert set(anova["model"]) == {"m1"}
    # Tukey HSD vs scipy.stats.tukey_hsd
    ref_t = sps.tukey_hsd(*groups.values())
    assert len(tukey) == 6 and set(tukey["model"]) == {"m1"}
    for _, row in tukey.iterrows():
        i, j = CATS.index(row["group1"]), CATS.index(row["group2"])
        assert row["meandiff"] == pytest.approx(groups[row["group2"]].mean()
                                                - groups[row["group1"]].mean())
        assert row["p_adj"] == pytest.approx(ref_t.pvalue[i, j], abs=2e-3)


def test_a_stale_statistics_table_is_refused():
    stale = _stats()
    stale.loc[(stale["stat"] == "top2_mean") & (stale["layer"] == "L")
              & (stale["model"] == "m1") & (stale["category"] == "text"), "value"] += 0.01
    with pytest.raises(DataError, match="stale"):
        model_tables(_region_rows(), _assoc(), null_of_topk(stale, "m1", "L", 2),
                     model="m1", k=2)
    missing = _stats()
    missing = missing[~((missing["category"] == "object") & (missing["model"] == "m1"))]
    with pytest.raises(DataError, match="no null for categories"):
        model_tables(_region_rows(), _assoc(), null_of_topk(missing, "m1", "L", 2),
                     model="m1", k=2)


def test_inner_output_tables_two_models():
    regions = pd.concat([_region_rows("m1"), _region_rows("m2")], ignore_index=True)
    regions.loc[regions["model"] == "m2", "nss_pred"] *= -1  # reverses OS ranks
    st = pd.concat([_stats("m1"), _stats("m2")], ignore_index=True)
    out = inner_output_tables(regions, {"m1": _assoc(), "m2": _assoc()}, st, layer="L", k=2)
    assert list(out.spearman["model"]) == ["m1", "m2"]
    assert list(out.spearman.columns) == ["model", "r_s", "p_value", "n", "r_s_excess",
                                          "p_value_excess", "n_excess", "r_s_inner_vs_size"]
    s = out.spearman.set_index("model")
    assert s.loc["m2", "r_s_excess"] == pytest.approx(-1.0)
    assert s.loc["m2", "r_s"] == pytest.approx(-s.loc["m1", "r_s"])
    assert list(out.per_category.columns) == ["model", "category", "os", "n", "n_regions", "od",
                                              "inner", "inner_null", "inner_excess"]
    assert len(out.per_category) == 8 and len(out.tukey) == 12
    assert set(out.anova["test"]) == {"od_by_cluster", "unit_anova"}
    with pytest.raises(DataError, match="no region rows for model 'm3'"):
        inner_output_tables(regions, {"m3": _assoc()}, st, layer="L", k=2)


def test_spearman_note_says_which_matches_the_study():
    text = SPEARMAN_NOTE
    assert "`r_s`" in text and "`r_s_excess`" in text and "study" in text
    assert "null" in text and "selection" in text
    assert 3 <= text.count(". ") + 1 <= 8


# --------------------------------------------------------------------------- the thin stage


def _stage_params(tmp_path, monkeypatch):
    """params.yaml with work/results in tmp_path, two tiny readouts (k0, kall), their
    associations and the statistics stage's table; OSIE and the backbone replaced by the
    synthetic dataset and the tiny trunk."""
    import yaml

    from dissect.association import save_associations
    from dissect.config import load_params
    from dissect.models.readout import save_readout
    from dissect.stages import common
    from dissect.statistics import category_statistics

    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset, regions = _dataset(tmp_path)
    p = yaml.safe_load(open(load_params().base / "params.yaml"))
    p["work"], p["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    p["data"].update(split_file=str(tmp_path / "split.csv"), max_images=None)
    p["backbone"]["layers"] = ["c1", "c2"]
    p["train"]["ks"] = [0, "all"]
    p["train"]["seeds"] = [0, 1]
    p["stats"].update(top_k=2, n_null=20, n_boot=20)
    p["gt"] = dict(GT)
    p["progress"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    pd.DataFrame({"image": ["a", "b", "c"], "split": "heldout"}).to_csv(tmp_path / "split.csv",
                                                                        index=False)
    base = tiny_backbone(0)
    monkeypatch.setattr(common, "backbone", lambda params: base)
    monkeypatch.setattr(common, "inputs", lambda params: (dataset, regions))
    rng = np.random.default_rng(3)
    rows = regions.table
    stats, computed = [], {}
    for seed in (0, 1):
        for name, k in (("k0", 0), ("kall", "all")):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(len(name) + 10 * seed)
                save_readout(common.readout_path(params, name, seed),
                             SaliencyReadout(base, k), {})
            if name == "kall" or seed == 0:  # setup I's units: the pretrained ones, stored once
                assoc = xr.DataArray(
                    rng.normal(1.0, 1.0, (6, len(rows))), dims=("unit", "region"),
                    coords={"image": ("region", rows["image"].to_numpy()),
                            "category": ("region", rows["category"].to_numpy())})
                save_associations({"c2": assoc}, common.assoc_store(params, name, seed))
                computed[name] = category_statistics({"c2": assoc}, k=2, n_null=20, n_boot=20,
                                                     seed=0)
            st = computed[name].copy()
            st.insert(0, "model", name)  # as the statistics stage writes it: "kall", not "all"
            st.insert(1, "seed", seed)
            stats.append(st)
    stats = pd.concat(stats, ignore_index=True)
    stats.to_csv(common.results(params, "tables", "statistics", "category_statistics.csv"),
                 index=False)
    return params, stats


def test_stage_writes_the_tables_and_keeps_them_on_failure(tmp_path, monkeypatch):
    from dissect.stages import common
    from dissect.stages.inner_output import run_inner_output

    params, stats = _stage_params(tmp_path, monkeypatch)
    run_inner_output(params)
    out = params.results / "tables" / "inner_output"
    names = sorted(f.name for f in out.iterdir())
    tables = ("inner_output", "inner_output_spearman", "anova", "tukey_hsd",
              "readout_performance")
    assert names == sorted(f"{n}{x}.{ext}" for n in tables for x in ("", "_seeds")
                           for ext in ("csv", "md") if n != "inner_output" or not x)
    per_cat = pd.read_csv(out / "inner_output.csv")
    assert list(dict.fromkeys(per_cat["model"])) == ["k0", "all"]  # one display name
    assert sorted(per_cat["seed"].unique()) == [0, 1]
    top = stats[stats["stat"] == "top2_mean"].assign(
        model=lambda d: d["model"].map(common.model_label))
    merged = per_cat.merge(top, on=["seed", "model", "category"])
    assert len(merged) == len(per_cat) == 16
    np.testing.assert_allclose(merged["inner"], merged["value"], atol=1e-12)
    np.testing.assert_allclose(merged["inner_null"], merged["null_mean"], atol=1e-12)
    np.testing.assert_allclose(merged["inner_excess"], merged["value"] - merged["null_mean"],
                               atol=1e-12)
    sp = pd.read_csv(out / "inner_output_spearman.csv")
    assert list(sp["model"]) == ["k0", "all"] * 2 and list(sp["seed"]) == [0, 0, 1, 1]
    for _, row in sp.iterrows():
        of = (per_cat["model"] == row["model"]) & (per_cat["seed"] == row["seed"])
        t = per_cat[of].dropna(subset=["os"])
        assert row["n"] == len(t) >= 3
        assert row["r_s"] == pytest.approx(sps.spearmanr(t["inner"], t["os"]).statistic)
        assert row["r_s_excess"] == pytest.approx(
            sps.spearmanr(t["inner_excess"], t["os"]).statistic)
        t = per_cat[of]
        size = sps.spearmanr(t["inner"], t["n_regions"]).statistic
        assert row["r_s_inner_vs_size"] == pytest.approx(size, nan_ok=True)
    # over seeds: the mean and the decisions counted from the per-seed rows
    summary = pd.read_csv(out / "inner_output_spearman_seeds.csv").set_index("model")
    for model, g in sp.groupby("model"):
        assert summary.loc[model, "r_s_mean"] == pytest.approx(g["r_s"].mean())
        assert summary.loc[model, "n_significant"] == int((g["p_value"] < 0.05).sum())
    tukey = pd.read_csv(out / "tukey_hsd.csv")
    tk = pd.read_csv(out / "tukey_hsd_seeds.csv", keep_default_na=False)
    for _, row in tk.iterrows():
        of = ((tukey["model"] == row["model"]) & (tukey["group1"] == row["group1"])
              & (tukey["group2"] == row["group2"]))
        assert row["n_reject"] == int(tukey.loc[of, "reject"].sum()) and row["n_seeds"] == 2
    region_rows = pd.read_csv(params.work / "inner_output" / "region_output.csv")
    assert set(region_rows["model"]) == {"k0", "all"} and len(region_rows) == 32
    perf = pd.read_csv(out / "readout_performance.csv")
    assert list(perf["model"]) == ["k0", "all"] * 2
    # the readouts differ between seeds (another initialisation), so do their outputs
    assert not np.allclose(perf["nss"].iloc[:2], perf["nss"].iloc[2:])

    # an interrupted / failing run leaves the committed tables as they were
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    common.readout_path(params, "kall", 1).unlink()
    with pytest.raises(DataError):
        run_inner_output(params)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # a statistics table from other associations is refused, not silently mixed in
    common.readout_path(params, "kall", 1).parent.rmdir()
    params2, _ = _stage_params(tmp_path / "again", monkeypatch)
    stale = pd.read_csv(params2.results / "tables" / "statistics" / "category_statistics.csv")
    stale["value"] += 0.5
    stale.to_csv(params2.results / "tables" / "statistics" / "category_statistics.csv",
                 index=False)
    with pytest.raises(DataError, match="stale"):
        run_inner_output(params2)
    assert not (params2.results / "tables" / "inner_output").exists()
