"""The whole chain, stage by stage, on a dozen OSIE images (issue: < 2 minutes).

Runs every stage function with small settings into a temporary work/results folder and checks
the tables and figures they produce. The same stages run on all of OSIE with `make repro`.

The one run also records, per stage (``tests/stage_deps.py``), every ``params.yaml`` key the stage
reads, which must be in its ``params`` in ``pipelines/dvc.yaml``, and every ``dissect`` import it
performs, which must be in the static import closure behind its ``deps``."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from stage_deps import (
    Pipeline,
    SourceTree,
    StageReads,
    direct_imports,
    stage_closure,
    uncovered_params,
)

from dissect.config import load_params

pytestmark = pytest.mark.osie


def small_params(tmp_path, osie_root, osie_regions_root, **over):
    """pipelines/params.yaml with the quick profile (`make repro PROFILE=quick`) applied, the
    data found by the fixtures and outputs in ``tmp_path``: the chain runs what the profile runs."""
    from dissect.pipeline import load_profile

    pipelines = load_params().base
    overrides = load_profile("quick", pipelines / "profiles")
    overrides.update({
        "work": str(tmp_path / "work"), "results": str(tmp_path / "results"),
        "data.osie": str(osie_root), "data.regions": str(osie_regions_root),
        "data.scenes": str(osie_regions_root / "scenes.csv"),
        "data.split_file": str(tmp_path / "split.csv"), "progress": False, **over})
    return load_params(pipelines / "params.yaml", overrides)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, osie_root, osie_regions_root):
    """Every stage run once on tracked params (tests/stage_deps.py): the keys each stage reads
    and the dissect imports it performs are recorded per stage."""
    import importlib

    from dissect.cli import STAGES
    from dissect.pipeline import stage_order

    params = small_params(tmp_path_factory.mktemp("chain"), osie_root, osie_regions_root)
    rec = StageReads()
    out = {}
    t0 = time.perf_counter()
    # every stage of dvc.yaml, in its dependency order (what `make repro PROFILE=quick` runs)
    for name in stage_order(params.base / "dvc.yaml"):
        module = importlib.import_module(f"dissect.stages.{STAGES[name][0]}")
        out[name] = rec.run(getattr(module, "run_" + name.replace("-", "_")), params)
    manifest, stats = out["prepare"], out["statistics"]
    elapsed = time.perf_counter() - t0
    return SimpleNamespace(params=params, manifest=manifest, stats=stats, elapsed=elapsed,
                           recorded=rec)


def test_whole_chain_on_a_dozen_osie_images(chain):
    params, manifest, stats, elapsed = chain.params, chain.manifest, chain.stats, chain.elapsed
    assert manifest["n_images"] == 700 and manifest["n_heldout"] == 200
    res = params.results
    # Table 2: every analysed layer of the pretrained trunk × categories, both statistics
    pt = stats[stats["model"] == "pt"]
    assert set(pt["layer"]) == {"block14", "block15", "head"}
    assert set(pt["stat"]) == {"top10_mean", "count_above_T"}
    assert pt["p_value"].between(0, 1).all()
    # setup I shares the pretrained trunk: identical unit statistics for the last layer
    ptl = pt[pt["layer"] == "head"].set_index(["category", "stat"])["value"]
    k0 = stats[(stats["model"] == "k0")]
    assert sorted(k0["seed"].unique()) == [0, 1]  # the quick profile's two training seeds
    for _, g in k0.groupby("seed"):  # the same units in every seed
        pd.testing.assert_series_equal(g.set_index(["category", "stat"])["value"].sort_index(),
                                       ptl.sort_index(), check_names=False)
    # the fine-tuned readouts differ between the seeds
    k1 = stats[(stats["model"] == "k1") & (stats["stat"] == "top10_mean")]
    assert not np.allclose(k1[k1.seed == 0]["value"], k1[k1.seed == 1]["value"])
    for name in ("statistics/table2_top10_mean.md", "statistics/table3_top10_mean.md",
                 "statistics/fig4_improvement.csv", "inner_output/inner_output.csv",
                 "inner_output/anova.csv", "inner_output/tukey_hsd.csv",
                 "popout/table4_popout_models.csv", "popout/table5_popout_layers.csv",
                 "popout_readouts/table4_popout_models.csv",
                 "popout_readouts/table6_popout_k.csv", "task/table7_task_statistics.csv",
                 "scene/table8_mean_map_nss.csv", "task/task_permutation_test.csv",
                 "statistics/finetuning_conclusions.csv", "statistics/table3_seed_anova.csv",
                 "inner_output/tukey_hsd_seeds.csv", "training_curves.csv"):
        assert (res / "tables" / name).is_file(), name
    io = pd.read_csv(res / "tables" / "inner_output" / "inner_output.csv")
    assert set(io["model"]) == {"k0", "k1", "k2"}
    t4 = pd.read_csv(res / "tables" / "popout_readouts" / "table4_popout_models.csv")
    assert {"itti", "spectral_residual", "readout_k0"} <= set(t4["model"])
    assert {"deepgaze_uniform", "deepgaze_centre"} <= set(t4["model"])  # Table 4's deep rows
    # the model family: baselines, DeepGaze I's layer comparison, the scorecard
    base = pd.read_csv(res / "tables" / "baselines.csv").set_index(["model", "parameter"])
    assert base.loc[("gold_standard", "bandwidth"), "value"] > 0
    lc = pd.read_csv(res / "tables" / "deepgaze" / "layer_comparison.csv")
    assert set(lc["layers"]) == {"block14", "block15", "head", "block14+", "block15+"}
    assert lc["chosen"].sum() == 1  # chosen on validation, never on held-out
    assert lc.loc[lc["chosen"], "val_log_likelihood"].item() == lc["val_log_likelihood"].max()
    assert (res / "tables" / "deepgaze" / "picked_selectivity.csv").is_file()
    summary = pd.read_csv(res / "tables" / "evaluate" / "summary.csv")
    models = set(summary["model"])
    assert {"uniform", "centre_bias", "gold_standard", "itti", "deepgaze",
            "readout_k0_s0", "readout_k2_s1"} <= models
    ige = summary[summary["metric"] == "ig_explained"].set_index("model")["value"]
    assert ige["gold_standard"] == pytest.approx(1.0) and ige["centre_bias"] == 0.0
    assert (res / "figures" / "evaluate" / "leaderboard.png").is_file()
    assert (res / "figures" / "deepgaze" / "layer_comparison.png").is_file()
    # ML-Net: trained, scored, in Table 4, its encoding units dissected beside the trunk's
    assert "mlnet" in models and "mlnet" in set(t4["model"])
    curve = pd.read_csv(res / "tables" / "mlnet_training" / "training_curve.csv")
    assert len(curve) >= 1 and curve["best"].any()
    enc = pd.read_csv(res / "tables" / "mlnet" / "encoding_statistics.csv")
    assert set(enc["layer"]) == {"encoding"} and (enc["n_units"] == 64).all()
    vs = pd.read_csv(res / "tables" / "mlnet" / "encoding_vs_trunk_top10_mean.csv")
    assert list(vs["layer"]) == ["block14", "block15", "head", "mlnet encoding"]
    t5 = pd.read_csv(res / "tables" / "mlnet" / "table5_popout_encoding.csv")
    assert t5["layer"].iloc[-1] == "mlnet encoding"
    prior = pd.read_csv(res / "tables" / "mlnet" / "learned_prior.csv")
    assert prior["image_size"].item() == "600x800"
    assert (res / "figures" / "mlnet" / "learned_prior.png").is_file()
    # implicit saliency: per-layer table and gain, gradient units, blur robustness, scorecard
    t1 = pd.read_csv(res / "tables" / "implicit" / "table1_layers.csv")
    assert set(t1["method"]) == {"implicit S_C", "feedforward S_F", "grad_cam",
                                 "guided_backprop"}
    assert set(t1["layer"]) == {"block14", "block15", "input"}
    # every image is in every cell, scored or counted undefined (a Grad-CAM map that the ReLU
    # zeroes everywhere is constant: NSS and CC undefined); S_C and S_F are defined everywhere
    assert ((t1["n_images"] + t1["n_undefined"]) == 12).all()
    assert (t1.loc[t1["method"].str.contains("S_"), "n_images"] == 12).all()
    gain = pd.read_csv(res / "tables" / "implicit" / "fig4_gain.csv")
    assert list(gain["layer"].unique()) == ["block14", "block15"]
    gv = pd.read_csv(res / "tables" / "implicit" / "gradient_vs_activation_top10_mean.csv")
    assert set(gv["layer"]) == {"block14", "block15"} and gv["gradient"].notna().any()
    assert {"implicit_saliency", "gradcam"} <= models
    assert {"implicit_saliency", "gradcam"} <= set(t4["model"])
    blur = pd.read_csv(res / "tables" / "robustness" / "table2_blur.csv").set_index("model")
    assert not {"uniform", "gold_standard"} & set(blur.index)
    assert {"implicit_saliency", "gradcam", "deepgaze", "mlnet", "itti"} <= set(blur.index)
    # the centre bias ignores the image: blurred and clean scores are the same computation
    assert blur.loc["centre_bias", "nss_drop"] == 0.0 and blur.loc["centre_bias", "cc_drop"] == 0.0
    assert (res / "figures" / "implicit" / "fig4_gain.png").is_file()
    figs = {p.name for p in (res / "figures" / "paper").glob("*.png")}
    assert {"table2_top10.png", "fig4_improvement.png", "fig3_units_pretrained.png",
            "fig8_popout_examples.png", "fig11_task_maps.png"} <= figs
    text = (res / "report.md").read_text()
    assert "Table 2 analogue" in text and "![table2_top10]" in text
    assert elapsed < 400, f"chain took {elapsed:.0f} s"


def test_every_params_key_a_stage_reads_is_in_its_dvc_params(chain):
    """Each key read (``.get``, ``[]``, a whole sub-dict dumped or iterated: see
    ``stage_deps.TrackedDict``) must be covered by the stage's ``params`` in dvc.yaml, or a
    changed value would not rerun the stage. Exempt: ``work``, ``results`` (where outputs go),
    ``progress`` and ``dask.scheduler`` (where tasks run), which change no result."""
    pipeline = Pipeline()
    assert set(chain.recorded.by_stage) == set(pipeline.stages)
    missing = [f"{stage}: {key}  (read at {', '.join(where)})"
               for stage, reads in chain.recorded.by_stage.items()
               for key, where in uncovered_params(reads, pipeline.declared_params(stage)).items()]
    assert not missing, (f"{len(missing)} params keys read but not in the stage's dvc.yaml "
                         "params:\n" + "\n".join(missing))


def test_every_params_key_is_read_by_some_stage(chain):
    """No dead knob (issue 11, "every key is actually used or removed"): every leaf key of
    pipelines/params.yaml, as a full dotted key, is read by at least one stage of the chain."""
    import yaml

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1]

    raw = yaml.safe_load((load_params().base / "params.yaml").read_text())
    read = set().union(*(set(r.keys) for r in chain.recorded.by_stage.values()))
    unread = sorted(k for k in leaves(raw)
                    if not any(k == r or k.startswith(r + ".") for r in read))
    assert not unread, f"params keys no stage reads: {unread}"


def test_every_import_a_stage_performs_is_in_its_closure(chain):
    """Independent check of the static closure (tests/stage_deps.py): every dissect import the
    stage really performed, function-level ones included, is one the scan found."""
    tree = SourceTree()
    wrong = []
    for stage, edges in chain.recorded.imports.items():
        inside = stage_closure(stage, tree)
        wrong += [f"{stage}: {a} -> {b}" for a, b in sorted(edges)
                  if b != a and (b not in direct_imports(a, tree)
                                 or (b not in inside and b != "dissect.cli"))]
    assert not wrong, "\n".join(wrong)
