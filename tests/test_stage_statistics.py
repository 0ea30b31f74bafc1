"""The statistics stage on synthetic association stores: every table it promises, named after
``stats.top_k`` (never a hard-coded top-10), the all-stages readout shown as "all", captions
that name the interval, Table 3 / Fig. 4 / Table 7 over training seeds checked against the
per-seed rows, and atomic result folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from dissect.association import load_associations, save_associations
from dissect.config import load_params
from dissect.stages import common
from dissect.stages.statistics import run_statistics, statistics_kwargs
from dissect.statistics import category_statistics

CATS = ["person head", "text", "food", "vehicle"]
pytestmark = pytest.mark.filterwarnings("ignore:The data type")


def assoc(rng, n_units, layer, n_images=20):
    images, labels = [], []
    for i in range(n_images):
        for _ in range(rng.integers(1, 4)):
            images.append(f"img{i:02d}")
            labels.append(CATS[rng.integers(len(CATS))])
    vals = rng.normal(size=(n_units, len(labels)))
    return xr.DataArray(vals, dims=("unit", "region"),
                        coords={"unit": np.arange(n_units), "image": ("region", images),
                                "category": ("region", labels)},
                        attrs={"layer": layer}, name="nss")  # fmt: skip


def stage_params(tmp_path, top_k, ks, scene=True, seeds=(0, 1)):
    p = yaml.safe_load(open(load_params().base / "params.yaml"))
    p["work"], p["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    p["backbone"]["layers"] = ["block14", "head"]
    p["train"]["ks"] = ks
    p["train"]["seeds"] = list(seeds)
    p["scene"]["seeds"] = [10 + s for s in seeds]
    p["stats"].update(top_k=top_k, n_null=15, n_boot=40, n_null_boot=3)
    p["dask"]["scheduler"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    params = load_params(path)
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    save_associations({"block14": assoc(rng, 12, "block14"), "head": assoc(rng, 16, "head")},
                      common.assoc_store(params, "pt"))  # fmt: skip
    for seed in seeds:
        for k in ks:
            if k != 0:
                save_associations({"head": assoc(rng, 16, "head")},
                                  common.assoc_store(params, f"k{k}", seed))  # fmt: skip
        if scene:
            sr = common.scene_dir(params, 10 + seed) / "assoc_sr.zarr"
            save_associations({"head": assoc(rng, 16, "head")}, sr)
    (work / "train").mkdir(parents=True, exist_ok=True)
    (work / "train" / "summary.json").write_text(json.dumps({"n_stages": 7}))
    return params


def seed_cell(values, n_sig, digits=2):
    """The expected Table 3 cell, computed here with numpy: mean ± sd [min, max] n_sig/n."""
    v = np.asarray(values, float)
    f = f"{{:.{digits}f}}"
    return (f"{f.format(v.mean())} ± {f.format(v.std(ddof=1))} [{f.format(v.min())}, "
            f"{f.format(v.max())}] {n_sig}/{len(v)}")


@pytest.mark.parametrize("top_k", [10, 3])
def test_stage_tables_follow_top_k(tmp_path, top_k):
    params = stage_params(tmp_path, top_k, [0, 1, "all"])
    stats = run_statistics(params)
    top = f"top{top_k}_mean"
    assert set(stats.stat) == {top, "count_above_T"}
    assert set(stats.model) == {"pt", "k0", "k1", "kall"}  # tidy table keeps the model ids
    assert stats.loc[stats.model == "kall", "k"].eq(7).all()
    assert stats.loc[stats.model == "pt", "seed"].isna().all()
    assert sorted(stats.loc[stats.model == "k1", "seed"].unique()) == [0, 1]
    out = tmp_path / "results" / "tables" / "statistics"
    expected = {"category_statistics", "fig4_improvement", "fig4_improvement_summary",
                "table3_seed_summary", "table3_seed_anova", "finetuning_conclusions",
                "finetuning_conclusions_per_seed"} | {
        f"{t}_{s}{x}" for t in ("table2", "table3") for s in (top, "count_above_T")
        for x in ("", "_excess")}  # fmt: skip
    assert {p.stem for p in out.glob("*.md")} == expected
    assert {p.stem for p in out.glob("*.csv")} == expected
    t3 = (out / f"table3_{top}.md").read_text()
    assert [line.split("|")[1].strip() for line in t3.splitlines()[2:5]] == ["k0", "k1", "all"]
    assert "mean over the 2 training seed(s)" in t3
    t2 = pd.read_csv(out / f"table2_{top}.csv")
    assert list(t2.layer) == ["block14", "head"]
    assert "95% basic interval from 40 image-bootstrap resamples" in (
        out / f"table2_{top}_excess.md").read_text()


def test_table3_and_fig4_over_seeds_match_the_per_seed_rows(tmp_path):
    params = stage_params(tmp_path, 3, [0, 1, "all"])
    run_statistics(params)
    out = tmp_path / "results" / "tables" / "statistics"
    tidy = pd.read_csv(out / "category_statistics.csv")
    top = "top3_mean"
    head = tidy[(tidy.layer == "head") & (tidy.stat == top)]
    # setup I keeps the pretrained units: the same numbers in every seed, equal to pt's head
    k0 = head[head.model == "k0"].sort_values(["seed", "category"])
    pt = head[head.model == "pt"].set_index("category")["value"]
    for _, g in k0.groupby("seed"):
        np.testing.assert_array_equal(g.set_index("category")["value"], pt[g.category])
    # a Table 3 cell, recomputed from the tidy per-seed rows with numpy
    t3 = pd.read_csv(out / f"table3_{top}.csv").set_index("model")
    for model, label in (("k1", "k1"), ("kall", "all")):
        rows = head[(head.model == model) & (head.category == "text")].sort_values("seed")
        n_sig = int((rows.p_value < 0.05).sum())
        assert t3.loc[label, "text"] == seed_cell(rows.value, n_sig)
    # Fig. 4 over seeds: % improvement over k0 computed here, then averaged over seeds
    summary = pd.read_csv(out / "fig4_improvement_summary.csv")
    for cat in CATS:
        imps = []
        for seed in (0, 1):
            v = head[(head.model == "k1") & (head.seed == seed) & (head.category == cat)]
            v0 = head[(head.model == "k0") & (head.seed == seed) & (head.category == cat)]
            imps.append(100 * (v.value.iloc[0] - v0.value.iloc[0]) / abs(v0.value.iloc[0]))
        row = summary[(summary.model == "k1") & (summary.category == cat)].iloc[0]
        assert row.improvement_pct_mean == pytest.approx(np.mean(imps), rel=1e-12)
        assert row.improvement_pct_min == pytest.approx(min(imps), rel=1e-12)
        assert row.n_improved == sum(i > 0 for i in imps)
    # the conclusions: "person heads over text" counted by hand from the per-seed improvements
    imp = pd.read_csv(out / "fig4_improvement.csv")
    conc = pd.read_csv(out / "finetuning_conclusions.csv", keep_default_na=False)
    for model in ("k1", "all"):
        n = 0
        for seed in (0, 1):
            g = imp[(imp.model == model) & (imp.seed == seed)].set_index("category")
            n += bool(g.improvement_pct["person head"] > g.improvement_pct["text"])
        row = conc[(conc.claim == "head_over_text") & (conc.model == model)].iloc[0]
        assert row.n_holds == n and row.n_seeds == 2
        assert row.agreement == {0: "none", 1: "mixed", 2: "all"}[n]
    # the seed ANOVA covers the fine-tuned trunks only (k0 has no seed variation)
    anova = pd.read_csv(out / "table3_seed_anova.csv")
    assert set(anova.model) == {"k1", "all"} and (anova.n_seeds == 2).all()


def test_table7_per_seed_pairs_each_training_seed_with_its_scene_seed(tmp_path):
    params = stage_params(tmp_path, 3, [0, 1, 2], seeds=(0, 1, 2))
    run_statistics(params)
    tidy = pd.read_csv(tmp_path / "results" / "tables" / "statistics" /
                       "category_statistics.csv")
    task = tmp_path / "results" / "tables" / "task"
    t7 = pd.read_csv(task / "table7_task_statistics.csv")
    assert sorted(t7.seed.unique()) == [0, 1, 2]
    for seed in (0, 1, 2):
        sp = t7[(t7.seed == seed) & (t7.model == "sp")].set_index(["category", "stat"]).value
        k1 = tidy[(tidy.model == "k1") & (tidy.seed == seed) & (tidy.layer == "head")]
        k1 = k1.set_index(["category", "stat"]).value
        pd.testing.assert_series_equal(sp.sort_index(), k1.sort_index(), check_names=False)
    # pt is the same in every seed; sr is the scene model paired with the seed (scene seed
    # 10 + seed here), its statistics computed with the same settings
    pt = t7[t7.model == "pt"].pivot_table(index=["category", "stat"], columns="seed",
                                          values="value")
    assert (pt.nunique(axis=1) == 1).all()
    kw = statistics_kwargs(params)
    for seed in (0, 1, 2):
        assert set(t7.loc[t7.seed == seed, "scene_seed"]) == {10 + seed}
        own = category_statistics(load_associations(
            common.scene_dir(params, 10 + seed) / "assoc_sr.zarr", ["head"]), **kw)
        sr = t7[(t7.seed == seed) & (t7.model == "sr")].set_index(["category", "stat"]).value
        pd.testing.assert_series_equal(sr.sort_index(),
                                       own.set_index(["category", "stat"]).value.sort_index(),
                                       check_names=False)
    tests = pd.read_csv(task / "task_permutation_test.csv")
    assert len(tests) == 3 * 2 and set(tests.seed) == {0, 1, 2}
    agree = pd.read_csv(task / "task_permutation_agreement.csv", keep_default_na=False)
    for _, row in agree.iterrows():
        assert row.n_significant == int((tests[tests.stat == row.stat].p_value < 0.05).sum())
    md = (task / "table7_task_statistics.md").read_text()
    assert "saliency readout k1 of training seed i" in md
    assert [line.split("|")[2].strip() for line in md.splitlines()[2:5]] == ["pt", "sp", "sr"]
    prov = json.loads((tmp_path / "work" / "provenance" / "statistics.json").read_text())
    assert prov["params"]["sp_model"] == "k1"
    assert not [p for p in (tmp_path / "results" / "tables").iterdir() if p.name.startswith(".")]


def test_one_seed_gives_no_spread_and_no_seed_anova(tmp_path):
    params = stage_params(tmp_path, 3, [0, 1], seeds=(4,))
    run_statistics(params)
    out = tmp_path / "results" / "tables" / "statistics"
    assert not (out / "table3_seed_anova.csv").exists()
    t3 = pd.read_csv(out / "table3_top3_mean.csv").set_index("model")
    assert "±" not in t3.loc["k1", "text"] and t3.loc["k1", "text"].endswith("/1")


def test_stage_failure_keeps_the_committed_folder(tmp_path, monkeypatch):
    params = stage_params(tmp_path, 5, [0, 1], scene=False)
    run_statistics(params)
    out = tmp_path / "results" / "tables" / "statistics"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import dissect.tables as tables

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tables, "pivot_seeds", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_statistics(params)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_without_sr_associations_no_stale_table7_remains(tmp_path):
    params = stage_params(tmp_path, 5, [0, 1])
    run_statistics(params)
    task = tmp_path / "results" / "tables" / "task"
    assert (task / "table7_task_statistics.csv").is_file()
    # one seed's scene model missing: no Table 7 at all (never one of fewer seeds)
    shutil.rmtree(common.scene_dir(params, 11) / "assoc_sr.zarr")
    run_statistics(params)
    assert not task.exists()
    assert (tmp_path / "results" / "tables" / "statistics" / "category_statistics.csv").is_file()
