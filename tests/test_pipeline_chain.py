"""The whole chain, stage by stage, on a dozen OSIE images (issue: < 2 minutes).

Runs every stage function with small settings into a temporary work/results folder and checks
the tables and figures they produce. The same stages run on all of OSIE with `make repro`."""

from __future__ import annotations

import time

import pandas as pd
import pytest
import yaml

from dissect.config import load_params

pytestmark = pytest.mark.osie


def small_params(tmp_path, osie_root, osie_regions_root, **over):
    p = yaml.safe_load(open(load_params().base / "params.yaml"))
    p["work"], p["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    p["data"].update(osie=str(osie_root), regions=str(osie_regions_root),
                     scenes=str(osie_regions_root / "scenes.csv"),
                     split_file=str(tmp_path / "split.csv"), max_images=12)
    p["backbone"]["layers"] = ["block14", "block15", "head"]
    p["extract"]["batch_size"] = 6
    p["train"].update(ks=[0, 1, 2], epochs=2, patience=2, batch_size=6)
    p["stats"].update(n_null=20, n_boot=20)
    p["popout"].update(n_per_dimension=1, models=["itti", "spectral_residual"])
    p["scene"].update(epochs=2, min_images=20)
    p["progress"] = False
    for key, value in over.items():
        p[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return load_params(path)


def test_whole_chain_on_a_dozen_osie_images(tmp_path, osie_root, osie_regions_root):
    from dissect.stages import (
        associate,
        extract,
        figures,
        inner_output,
        popout,
        prepare,
        report,
        scene,
        statistics,
        train,
    )

    params = small_params(tmp_path, osie_root, osie_regions_root)
    t0 = time.perf_counter()
    manifest = prepare.run_prepare(params)
    assert manifest["n_images"] == 700 and manifest["n_heldout"] == 200
    extract.run_extract(params)
    train.run_train(params)
    extract.run_extract_finetuned(params)
    associate.run_associate(params)
    scene.run_scene(params)
    stats = statistics.run_statistics(params)
    inner_output.run_inner_output(params)
    popout.run_popout_arrays(params)
    popout.run_popout(params)
    popout.run_popout_readouts(params)
    figures.run_figures(params)
    report.run_report(params)
    elapsed = time.perf_counter() - t0

    res = params.results
    # Table 2: every analysed layer of the pretrained trunk × categories, both statistics
    pt = stats[stats["model"] == "pt"]
    assert set(pt["layer"]) == {"block14", "block15", "head"}
    assert set(pt["stat"]) == {"top10_mean", "count_above_T"}
    assert pt["p_value"].between(0, 1).all()
    # setup I shares the pretrained trunk: identical unit statistics for the last layer
    k0 = stats[(stats["model"] == "k0")].set_index(["category", "stat"])["value"]
    ptl = pt[pt["layer"] == "head"].set_index(["category", "stat"])["value"]
    pd.testing.assert_series_equal(k0.sort_index(), ptl.sort_index(), check_names=False)
    for name in ("statistics/table2_top10_mean.md", "statistics/table3_top10_mean.md",
                 "statistics/fig4_improvement.csv", "inner_output/inner_output.csv",
                 "inner_output/anova.csv", "inner_output/tukey_hsd.csv",
                 "popout/table4_popout_models.csv", "popout/table5_popout_layers.csv",
                 "popout_readouts/table4_popout_models.csv",
                 "popout_readouts/table6_popout_k.csv", "task/table7_task_statistics.csv",
                 "scene/table8_mean_map_nss.csv", "task/task_permutation_test.csv",
                 "training_curves.csv"):
        assert (res / "tables" / name).is_file(), name
    io = pd.read_csv(res / "tables" / "inner_output" / "inner_output.csv")
    assert set(io["model"]) == {"k0", "k1", "k2"}
    t4 = pd.read_csv(res / "tables" / "popout_readouts" / "table4_popout_models.csv")
    assert {"itti", "spectral_residual", "readout_k0"} <= set(t4["model"])
    figs = {p.name for p in (res / "figures" / "paper").glob("*.png")}
    assert {"table2_top10.png", "fig4_improvement.png", "fig3_units_pretrained.png",
            "fig8_popout_examples.png", "fig11_task_maps.png"} <= figs
    text = (res / "report.md").read_text()
    assert "Table 2 analogue" in text and "![table2_top10]" in text
    assert elapsed < 240, f"chain took {elapsed:.0f} s"
