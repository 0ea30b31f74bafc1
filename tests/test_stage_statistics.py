"""The statistics stage on synthetic association stores: every table it promises, named after
``stats.top_k`` (never a hard-coded top-10), the all-stages readout shown as "all", captions
that name the interval, Table 7 as a pivot beside its tidy CSV, and atomic result folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from dissect.association import save_associations
from dissect.config import load_params
from dissect.stages import common
from dissect.stages.statistics import run_statistics

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


def stage_params(tmp_path, top_k, ks, scene=True):
    p = yaml.safe_load(open(load_params().base / "params.yaml"))
    p["work"], p["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    p["backbone"]["layers"] = ["block14", "head"]
    p["train"]["ks"] = ks
    p["stats"].update(top_k=top_k, n_null=15, n_boot=40, n_null_boot=3)
    p["dask"]["scheduler"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    params = load_params(path)
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    save_associations({"block14": assoc(rng, 12, "block14"), "head": assoc(rng, 16, "head")},
                      common.assoc_store(params, "pt"))  # fmt: skip
    for k in ks:
        if k != 0:
            save_associations({"head": assoc(rng, 16, "head")},
                              common.assoc_store(params, f"k{k}"))  # fmt: skip
    (work / "train").mkdir(parents=True, exist_ok=True)
    (work / "train" / "summary.json").write_text(json.dumps({"n_stages": 7}))
    if scene:
        sr = common.work(params, "scene", "assoc_sr.zarr")
        save_associations({"head": assoc(rng, 16, "head")}, sr)
    return params


@pytest.mark.parametrize("top_k", [10, 3])
def test_stage_tables_follow_top_k(tmp_path, top_k):
    params = stage_params(tmp_path, top_k, [0, 1, "all"])
    stats = run_statistics(params)
    top = f"top{top_k}_mean"
    assert set(stats.stat) == {top, "count_above_T"}
    assert set(stats.model) == {"pt", "k0", "k1", "kall"}  # tidy table keeps the model ids
    assert stats.loc[stats.model == "kall", "k"].eq(7).all()
    out = tmp_path / "results" / "tables" / "statistics"
    expected = {"category_statistics", "fig4_improvement"} | {
        f"{t}_{s}{x}" for t in ("table2", "table3") for s in (top, "count_above_T")
        for x in ("", "_excess")}  # fmt: skip
    assert {p.stem for p in out.glob("*.md")} == expected
    assert {p.stem for p in out.glob("*.csv")} == expected
    t3 = (out / f"table3_{top}.md").read_text()
    assert [line.split("|")[1].strip() for line in t3.splitlines()[2:5]] == ["k0", "k1", "all"]
    assert "Cells:" in t3 and "null mean in parentheses" in t3
    t3x = (out / f"table3_{top}_excess.md").read_text()
    assert "95% basic interval from 40 image-bootstrap resamples" in t3x
    t2 = pd.read_csv(out / f"table2_{top}.csv")
    assert list(t2.layer) == ["block14", "head"]
    imp = pd.read_csv(out / "fig4_improvement.csv")
    assert list(pd.unique(imp.model)) == ["k1", "all"]
    # Table 7: the tidy CSV, its pivot as the Markdown, the paired tests
    task = tmp_path / "results" / "tables" / "task"
    t7 = pd.read_csv(task / "table7_task_statistics.csv")
    assert set(t7.model) == {"pt", "sp", "sr"} and len(t7) == 3 * 2 * len(set(t7.category))
    md = (task / "table7_task_statistics.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[0] == "category" and header[1:4] == [f"{top} pt", f"{top} sp", f"{top} sr"]
    assert "saliency readout k1" in md[-1]
    tests = pd.read_csv(task / "task_permutation_test.csv")
    assert list(tests.stat) == [top, "count_above_T"]
    # no output folder is left half-written or beside a temporary copy
    assert not [p for p in (tmp_path / "results" / "tables").iterdir() if p.name.startswith(".")]
    prov = json.loads((tmp_path / "work" / "provenance" / "statistics.json").read_text())
    assert prov["params"]["sp_model"] == "k1"


def test_stage_failure_keeps_the_committed_folder(tmp_path, monkeypatch):
    params = stage_params(tmp_path, 5, [0, 1], scene=False)
    run_statistics(params)
    out = tmp_path / "results" / "tables" / "statistics"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import dissect.tables as tables

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tables, "pivot_k", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_statistics(params)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_without_sr_associations_no_stale_table7_remains(tmp_path):
    params = stage_params(tmp_path, 5, [0, 1])
    run_statistics(params)
    task = tmp_path / "results" / "tables" / "task"
    assert (task / "table7_task_statistics.csv").is_file()
    shutil.rmtree(common.work(params, "scene", "assoc_sr.zarr"))
    run_statistics(params)
    assert not task.exists()
    assert (tmp_path / "results" / "tables" / "statistics" / "category_statistics.csv").is_file()
