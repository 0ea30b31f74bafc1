"""The report stage on synthetic results trees (the statistics tables written by the statistics
stage's own writers from a synthetic per-seed table): complete for any ``stats.top_k`` /
``train.ks``, one name for the all-stages readout, Tables 3 and 7 over seeds, the fine-tuning
conclusions seed by seed, parameters only as recorded, provenance from ``dvc.yaml``'s stages,
and an atomic write."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from graphlib import TopologicalSorter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dissect.categories import NAMES
from dissect.config import load_params
from dissect.stages import common, report
from dissect.stages.statistics import write_statistics_tables, write_task_tables
from dissect.tables import write_table

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
LAYERS = ["block14", "block15", "head"]
VERSIONS = {"python": "3.11.7", "dissect": "0.1.0", "torch": "2.13.0+cpu"}
SEEDS = [0, 1, 2]
KW = dict(k=10, threshold=1.5, n_null=200, n_boot=1000, null="labels")


def _stats_table(models: list[str], top: str, seeds=SEEDS, n_stages: int = 18) -> pd.DataFrame:
    """A per-seed statistics table as the statistics stage writes it: pt once (no seed), every
    readout once per seed (k0 the same numbers in every seed: its units are pt's)."""
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        for seed in [None] if model == "pt" else seeds:
            for layer in LAYERS if model == "pt" else LAYERS[-1:]:
                for cat in NAMES:
                    for stat in (top, "count_above_T"):
                        value = (3.0 if model == "k0" else rng.uniform(0.5, 3)) + NAMES.index(
                            cat) / 10
                        k = -1 if model == "pt" else (n_stages if model == "kall"
                                                       else int(model[1:]))
                        rows.append(dict(model=model, seed=seed, k=k, layer=layer, category=cat,
                                         stat=stat, value=value, null_mean=0.8,
                                         p_value=rng.uniform(0, 0.2), excess=value - 0.8,
                                         excess_ci_low=value - 1.0, excess_ci_high=value - 0.6))
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), "white").save(path)


def _records(work: Path, stages: list[str], params: dict, *, run: str = "run-1",
             start: datetime | None = None, extract_size: list[int] | None = None) -> None:
    """One provenance record per stage, back to back, recording what each stage records."""
    recorded = {
        "prepare": {"data": params["data"]},
        "extract": {"backbone": params["backbone"] | {"input_size": None},
                    "extract": params["extract"]},
        "train": {"train": params["train"]},
        "statistics": {"stats": params["stats"]},
        "inner-output": {"gt": params["gt"], "top_k": params["stats"]["top_k"]},
        "scene": {"scene": params["scene"], "sp_model": "k" + str(params["scene"]["tuned_stages"])},
        "figures": {"stats": {"top_k": params["stats"]["top_k"]}, "figures": params["figures"]},
    }
    recorded["extract"]["backbone"].pop("input_size")
    t = start or datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    (work / "provenance").mkdir(parents=True, exist_ok=True)
    for stage in stages:
        rec = {"stage": stage, "started": t.isoformat(timespec="seconds"),
               "params": recorded.get(stage, {}), "versions": VERSIONS, "run": run,
               "seconds": 60.0}
        if stage == "prepare":
            rec.update(n_images=700, n_fixations=98321, fixations_sha="aaaa", n_regions=3570,
                       regions_sha="bbbb", n_train=500, n_heldout=200)
        if stage == "extract":
            rec["weights_id"] = "579344248a93e230"
            if extract_size is not None:
                rec["preprocess"] = {"size": extract_size}
        (work / "provenance" / f"{stage}.json").write_text(json.dumps(rec))
        t += timedelta(seconds=61)


def run_order(pipelines: Path) -> list[str]:
    """An order in which ``dvc repro`` may run the stages: a stage after every stage one of
    whose outs it depends on (graphlib's topological order)."""
    spec = yaml.safe_load((pipelines / "dvc.yaml").read_text())["stages"]

    def paths(items):
        return [str(next(iter(i)) if isinstance(i, dict) else i) for i in items or []]

    outs = {s: paths(v.get("outs")) for s, v in spec.items()}
    graph = {s: {o for o, out in outs.items() for d in paths(v.get("deps")) for p in out
                 if o != s and (d == p or d.startswith(p + "/"))} for s, v in spec.items()}
    return list(TopologicalSorter(graph).static_order())


def make_tree(root: Path, top_k: int, ks: list, *, extract_size=None):
    """A results tree as the stages write it for ``stats.top_k = top_k``, ``train.ks = ks``;
    returns (params, expected table stems, expected figure names)."""
    pipelines = root / "pipelines"
    pipelines.mkdir(parents=True)
    shutil.copy(PIPELINES / "dvc.yaml", pipelines / "dvc.yaml")
    raw = yaml.safe_load((PIPELINES / "params.yaml").read_text())
    raw.update(work="../work", results="../results")
    raw["stats"]["top_k"] = top_k
    raw["train"]["ks"] = ks
    # sp (the readout k<scene.tuned_stages>) must be one that train.ks trains
    raw["scene"]["tuned_stages"] = next(k for k in ks if k not in (0, "all"))
    raw["backbone"]["layers"] = LAYERS
    raw["train"]["seeds"] = SEEDS
    (pipelines / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(pipelines / "params.yaml")
    results, tables = params.results, params.results / "tables"
    top = f"top{top_k}_mean"
    readouts = [f"k{k}" for k in ks]
    labels = ["all" if m == "kall" else m for m in readouts]

    stats = _stats_table(["pt", *readouts], top)
    kw = KW | {"k": top_k}
    write_statistics_tables(stats, tables / "statistics", top=top, last=LAYERS[-1], kw=kw)
    pd.DataFrame([dict(model=m, seed=s, epoch=1, train_loss=-1.0, val_nss=1.0)
                  for m in labels for s in SEEDS]).to_csv(tables / "training_curves.csv",
                                                          index=False)
    io = tables / "inner_output"
    write_table(pd.DataFrame(dict(model=labels, nss_mean=1.5, cc_mean=0.5, auc_judd_mean=0.8)),
                io / "readout_performance_seeds")
    write_table(pd.DataFrame(dict(model=labels, r_s_mean=0.1, n_significant=0,
                                  r_s_excess_mean=0.9, n_excess_significant=3)),
                io / "inner_output_spearman_seeds")
    write_table(pd.DataFrame(dict(model=labels, test="od_by_cluster", term="cluster",
                                  n_significant=3, agreement="all")), io / "anova_seeds")
    write_table(pd.DataFrame(dict(model="pt", dimension=["colour"], nmm=[1.0])),
                tables / "popout" / "table4_popout_models")
    write_table(pd.DataFrame(dict(layer=LAYERS, feature=1.0, conjunction=0.5)),
                tables / "popout" / "table5_popout_layers")
    write_table(pd.DataFrame(dict(model=[f"readout_{m}" for m in labels], colour=1.0)),
                tables / "popout_readouts" / "table4_popout_models")
    write_table(pd.DataFrame(dict(model=[f"readout_{m}" for m in labels], colour=1.0)),
                tables / "popout_readouts" / "table4_popout_excess_by_dimension")
    write_table(pd.DataFrame(dict(model=["pt", *labels[1:]], layer="head", feature=1.0)),
                tables / "popout_readouts" / "table6_popout_k")
    write_table(pd.DataFrame([dict(accuracy=0.7, n_heldout=200)]), tables / "scene" /
                "scene_accuracy")
    write_table(pd.DataFrame(dict(scene=["a", "b"], recall=[0.5, 0.7])), tables / "scene" /
                "scene_recall")
    write_table(pd.DataFrame(dict(model=["pt", "sp", "sr"], correct=1.0)), tables / "scene" /
                "table8_mean_map_nss")
    t7 = _stats_table(["pt", "k1", "k2"], top)
    t7 = t7[t7["layer"] == LAYERS[-1]]
    t7 = pd.concat([t7[t7.model == "pt"].drop(columns="seed").assign(seed=s) for s in SEEDS]
                   + [t7[t7.model != "pt"]]).replace({"model": {"k1": "sp", "k2": "sr"}})
    assert len(t7) == 3 * 72
    tests = pd.DataFrame([dict(seed=s, stat=st, p_value=0.01 if s else 0.5)
                          for s in SEEDS for st in (top, "count_above_T")])
    write_task_tables(t7.drop(columns="k"), tests, tables / "task", kw=kw, sp="k1")

    # the scorecard and DeepGaze I (issue 12)
    summary = pd.DataFrame([dict(model=m, metric=metric, value=v, ci_low=v - 0.1,
                                 ci_high=v + 0.1, n_images=200, ci_method="basic")
                            for m, v in (("gold_standard", 1.0), ("deepgaze", 0.7),
                                         ("readout_k1_s0", 0.3), ("bms", 0.35),
                                         ("centre_bias", 0.0))
                            for metric in ("ig_explained", "nss")])
    (tables / "evaluate").mkdir(parents=True)
    summary.to_csv(tables / "evaluate" / "summary.csv", index=False)
    write_table(summary.pivot(index="model", columns="metric", values="value").reset_index(),
                tables / "evaluate" / "leaderboard")
    for stem in ("layer_comparison", "picked_selectivity", "picked_units"):
        write_table(pd.DataFrame(dict(layers=["block10"], value=[1.0])),
                    tables / "deepgaze" / stem)
    # ML-Net (issue 13)
    for stem in (f"encoding_vs_best_layer_{top}", f"encoding_vs_trunk_{top}",
                 "encoding_vs_trunk_count_above_T", "learned_prior", "table5_popout_encoding"):
        write_table(pd.DataFrame(dict(layer=["mlnet encoding"], value=[1.0])),
                    tables / "mlnet" / stem)
    write_table(pd.DataFrame(dict(epoch=[1], val_loss=[0.1])),
                tables / "mlnet_training" / "training_curve")
    # implicit saliency and the blur robustness (issue 14)
    for stem in ("implicit/table1_layers", "implicit/fig4_gain", "robustness/table2_blur",
                 f"implicit/gradient_vs_activation_{top}",
                 "implicit/gradient_vs_activation_count_above_T"):
        write_table(pd.DataFrame(dict(layer=["block10"], value=[1.0])), tables / stem)
    for name in ("evaluate/leaderboard.png", "deepgaze/layer_comparison.png",
                 "deepgaze/picked_selectivity.png", "mlnet/learned_prior.png",
                 "implicit/fig4_gain.png"):
        _png(results / "figures" / name)
    figures = [f"table2_top{top_k}.png", f"table2_top{top_k}_excess.png", "table2_count.png",
               "fig3_units_pretrained.png", f"table3_top{top_k}.png",
               f"table3_top{top_k}_excess.png", "fig4_improvement.png",
               "fig4_improvement_excess.png", "fig5_units_finetuned.png", "training_curves.png",
               *[f"inner_vs_output_{m}.png" for m in labels],
               *[f"inner_vs_output_excess_{m}.png" for m in labels], "table4_popout_models.png",
               "fig8_popout_examples.png", "fig9_popout_best_units.png", "fig11_task_maps.png"]
    for name in figures:
        _png(results / "figures" / "paper" / name)
    _png(results / "figures" / "scene_confusion.png")
    _records(params.work, [s for s in run_order(pipelines) if s != "report"], raw,
             extract_size=extract_size)
    expected_tables = [f"table2_{top}", "table2_count_above_T", f"table3_{top}",
                       "table3_count_above_T", "fig4_improvement_summary",
                       "finetuning_conclusions", "readout_performance_seeds",
                       "inner_output_spearman_seeds", "anova_seeds", "table4_popout_models",
                       "table4_popout_excess_by_dimension", "table5_popout_layers",
                       "table6_popout_k", "scene_accuracy", "scene_recall",
                       "table7_task_statistics", "task_permutation_test",
                       "task_permutation_agreement", "table8_mean_map_nss", "leaderboard",
                       "layer_comparison", "picked_selectivity", "picked_units",
                       f"encoding_vs_best_layer_{top}", "learned_prior",
                       "table5_popout_encoding", "training_curve", "table1_layers",
                       "fig4_gain", "table2_blur", f"gradient_vs_activation_{top}"]
    return params, expected_tables, [*figures, "scene_confusion.png", "evaluate/leaderboard.png",
                                     "deepgaze/layer_comparison.png",
                                     "deepgaze/picked_selectivity.png",
                                     "mlnet/learned_prior.png", "implicit/fig4_gain.png"]


@pytest.mark.parametrize("top_k, ks, size", [(10, [0, 1, "all"], [224, 224]), (5, [0, 2], None)])
def test_report_is_complete_for_any_top_k_and_ks(tmp_path, top_k, ks, size):
    params, tables, figures = make_tree(tmp_path, top_k, ks, extract_size=size)
    text = report.build_report(params)
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    for needle in ("Table 2", "Table 3, Fig. 4", "Eqs. 2–3", "Tables 4–6", "Tables 7–8"):
        assert any(needle in h for h in headings), needle
    for stem in tables:
        assert f"**{stem}** (`tables/" in text, stem
    for name in figures:
        assert re.search(rf"\]\(figures/(paper/)?{re.escape(name)}\)", text), name
    assert "Not produced" not in text
    # Table 3 / Fig. 4 files follow top_k; the other top-k's names appear nowhere
    other = 5 if top_k == 10 else 10
    assert f"top{other}" not in text
    # a long table is linked, not inlined: Fig. 4 per seed (3 seeds × 12 categories per k)
    n_fig4 = 3 * 12 * (len(ks) - 1)
    assert ("**fig4_improvement**: " in text) == (n_fig4 > report.MAX_INLINE_ROWS)
    assert "**fig4_improvement**" in text
    assert "[`tables/task/table7_task_statistics.csv`](tables/task/table7_task_statistics.csv)" \
        in text
    assert "| model | layer | category | stat" not in text
    t7 = text[text.index("**table7_task_statistics**"):text.index("**task_permutation_test**")]
    rows = re.findall(rf"^\| (top{top_k}_mean|count_above_T)\s+\| (pt|sp|sr) ", t7, flags=re.M)
    assert len(rows) == 6  # 3 models × 2 statistics, cells over the 3 seeds
    assert " ± " in t7 and "/3 " in t7
    # Table 3 over seeds: k0 has no spread (its units are the pretrained ones)
    t3 = text[text.index(f"**table3_top{top_k}_mean**"):]
    assert re.search(r"^\| k0\s+\| 3\.00 ± 0\.00 \[3\.00, 3\.00\]", t3, flags=re.M)
    # inner vs output: both correlations and what they mean
    assert "r_s_excess" in text and "study's definition" in text


@pytest.mark.parametrize("top_k, ks", [(10, [0, 1, "all"]), (5, [0, 2])])
def test_report_names_the_all_stages_model_all(tmp_path, top_k, ks):
    params, _, _ = make_tree(tmp_path, top_k, ks)
    text = report.build_report(params)
    assert "k = 18" not in text and "kall" not in text
    assert not re.search(r"^\|\s+18 \|", text, flags=re.M)  # no Table 3 row named by its depth
    names = ", ".join("all" if k == "all" else f"k{k}" for k in ks)
    assert f"Saliency readouts (−NSS loss): {names} " in text
    sp = next(k for k in ks if k not in (0, "all"))
    assert f"sp: the saliency readout k{sp}" in text
    assert ("`all` every stage" in text) == ("all" in ks)


@pytest.mark.parametrize("size", [[224, 224], None])
def test_report_prints_only_recorded_parameters(tmp_path, size):
    params, _, _ = make_tree(tmp_path, 10, [0, 1, "all"], extract_size=size)
    text = report.build_report(params)
    assert "```yaml" not in text  # no dump of params.yaml
    # the input size is the preprocessing size extraction recorded, or nothing
    if size is None:
        assert "input " not in text.split("## Unit dissection")[0]
    else:
        assert "input 224×224" in text
    # what the stages did record is there, per stage
    assert "- `statistics`: `stats.top_k` = 10" in text
    assert "`scene.tuned_stages` = 1" in text and "`figures.overlay_categories` = [" in text


def test_provenance_lists_dvc_stages_and_one_run(tmp_path):
    params, _, _ = make_tree(tmp_path, 10, [0, 1, "all"])
    stale = {"stage": "old-stage", "started": "2020-01-01T00:00:00+00:00", "params": {},
             "versions": VERSIONS, "run": "ancient", "seconds": 5}
    (params.work / "provenance" / "old-stage.json").write_text(json.dumps(stale))
    text = report.build_report(params)
    prov = text[text.index("## Provenance"):]
    assert "old-stage" not in prov and "ancient" not in prov
    stages = [s for s in run_order(params.base) if s != "report"]
    rows = re.findall(r"^\| ([a-z-]+)\s+\| 2026", prov, flags=re.M)
    assert rows == stages  # the order they ran
    assert f"Total time: {len(stages) * 60 / 60:.1f} min over {len(stages)} stage(s)." in prov
    assert "All records come from one run (`run-1`)" in prov and "Not one run" not in prov


def test_provenance_says_when_records_come_from_different_runs(tmp_path):
    params, _, _ = make_tree(tmp_path, 10, [0, 1, "all"])
    prov_dir = params.work / "provenance"
    # statistics was rerun later (another run id); figures kept an older record than statistics
    rec = json.loads((prov_dir / "statistics.json").read_text())
    rec.update(run="run-2", started="2026-12-01T09:00:00+00:00",
               versions=VERSIONS | {"torch": "2.14.0+cpu"})
    (prov_dir / "statistics.json").write_text(json.dumps(rec))
    text = report.build_report(params)
    prov = text[text.index("## Provenance"):]
    assert "**Not one run.**" in prov
    assert "run `run-2`: statistics" in prov and "run `run-1`:" in prov
    assert "different package versions (torch)" in prov
    assert "`figures` started before `statistics`" in prov
    assert "| run " in prov  # the table shows each record's run when they differ


def test_missing_expected_items_are_listed(tmp_path):
    params, _, _ = make_tree(tmp_path, 10, [0, 1, "all"])
    (params.results / "tables" / "statistics" / "table3_top10_mean.md").unlink()
    (params.results / "figures" / "paper" / "fig4_improvement.png").unlink()
    shutil.rmtree(params.results / "tables" / "task")
    shutil.rmtree(params.results / "tables" / "scene")
    (params.results / "figures" / "scene_confusion.png").unlink()
    (params.results / "figures" / "paper" / "fig11_task_maps.png").unlink()
    text = report.build_report(params)
    assert "`tables/statistics/table3_top10_mean.md`" in text
    assert "`figures/paper/fig4_improvement.png`" in text
    task = text[text.index("Tables 7–8"):text.index("## Provenance")]
    assert "Not produced by this run (no tables or figures of this section)." in task


def test_failed_write_leaves_the_report_unchanged(tmp_path, monkeypatch):
    params, _, _ = make_tree(tmp_path, 5, [0, 2])
    out = params.results / "report.md"
    out.write_text("the committed report\n")
    real = Path.write_text

    def half_then_fail(self, data, *args, **kwargs):  # a write interrupted halfway
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        report.run_report(params)
    monkeypatch.undo()
    assert out.read_text() == "the committed report\n"
    assert sorted(p.name for p in params.results.iterdir()) == ["figures", "report.md", "tables"]

    def broken(_params):
        raise RuntimeError("a table could not be read")

    monkeypatch.setattr(report, "build_report", broken)
    with pytest.raises(RuntimeError):
        report.run_report(params)
    assert out.read_text() == "the committed report\n"
    monkeypatch.undo()
    report.run_report(params)  # and a successful run replaces it
    assert out.read_text().startswith("# dissect — results report")


def test_report_says_which_finetuning_conclusions_hold_in_every_seed(tmp_path):
    params, _, _ = make_tree(tmp_path, 10, [0, 1, 2, "all"])
    conc = pd.read_csv(params.results / "tables" / "statistics" / "finetuning_conclusions.csv",
                       keep_default_na=False)
    text = report.build_report(params)
    assert "**Which fine-tuning conclusions survive the training seed** (3 seed(s)" in text
    assert "each trained with seeds 0, 1, 2" in text
    for statement, g in conc.groupby("statement"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"- {statement}: holds"))
        for verdict, label in (("all", "in every seed"), ("mixed", "in some seeds only"),
                               ("none", "in no seed")):
            ks = [common.model_label(m) for m in g.loc[g.agreement == verdict, "model"]]
            assert (f"{label} for {', '.join(ks)}" in line) == bool(ks), (statement, verdict)
