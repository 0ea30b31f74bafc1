"""Stage ``report``: ``results/report.md`` — every table and figure with its provenance.

Nothing here is typed by hand: the numbers are the tables under ``results/tables`` (inlined, or
linked when long), the figures those under ``results/figures``, and the setup and parameters
those the stages *recorded* in their provenance records (``work/provenance/<stage>.json``,
:func:`dissect.provenance.stage_record`) — never the whole ``params.yaml``, which would put
parameters the run did not use in the report and make it depend on every key.

- File names follow the run: the Table 2/3 and Fig. 4 names carry ``top<k>`` with the ``k`` the
  statistics stage recorded (``stats.top_k``), and every other table a section's folder holds
  is shown too, so changing ``stats.top_k`` or ``train.ks`` never drops a table silently;
  expected items that are missing are listed as such.
- Long tables (more than :data:`MAX_INLINE_ROWS` rows) are linked rather than inlined; Table 3,
  Fig. 4 and Table 7 are the statistics stage's pivots over the training seeds, and the
  fine-tuning section says which of the study's readings hold in every seed
  (:func:`conclusion_lines`).
- The provenance table lists the stages of ``pipelines/dvc.yaml`` in the order they ran, the run's
  total time, and says when the records come from different runs (their recorded run ids,
  package versions, or a stage that started before one of its inputs' stages finished).
- The report is written through :func:`dissect.stages.common.replacing`: an error leaves the
  previous ``report.md`` as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from dissect.config import Params
from dissect.provenance import flatten
from dissect.stages import common

log = logging.getLogger("dissect.report")

MAX_INLINE_ROWS = 40
"""Tables with more data rows are linked (CSV), not inlined."""


@dataclass(frozen=True)
class Section:
    """One report section: tables (paths under ``results/tables``; a tuple of alternatives takes
    the first that exists), figures (names or glob patterns under ``results/figures/paper`` and
    ``results/figures``), further tables of the section's folders shown after the listed ones
    (glob patterns), ``(label, path)`` of tidy CSVs linked, and a text key
    (:func:`_section_text`)."""

    title: str
    tables: list[str | tuple[str, ...]]
    figures: list[str]
    more_tables: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None


def sections(top_k: int) -> list[Section]:
    """The report's sections for the statistics stage's ``top_k`` (file names ``top<k>``)."""
    tk = f"top{int(top_k)}"
    return [
        Section(
            "Unit dissection: pretrained trunk (Table 2 analogue)",
            [f"statistics/table2_{tk}_mean.md", "statistics/table2_count_above_T.md"],
            [f"table2_{tk}.png", f"table2_{tk}_excess.png", "table2_count.png",
             "fig3_units_pretrained.png"],
            more_tables=["statistics/table2_*.md"],
            links=[("Tidy statistics (every model and layer, with null, p and CIs)",
                    "statistics/category_statistics.csv")],
            text="statistics",
        ),
        Section(
            "Fine-tuning: last trunk layer vs k over training seeds (Table 3, Fig. 4 analogues)",
            [f"statistics/table3_{tk}_mean.md", "statistics/table3_count_above_T.md",
             "statistics/fig4_improvement_summary.md", "statistics/finetuning_conclusions.md"],
            [f"table3_{tk}.png", f"table3_{tk}_excess.png", "fig4_improvement.png",
             "fig4_improvement_excess.png", "fig5_units_finetuned.png", "training_curves.png"],
            more_tables=["statistics/table3_*.md", "statistics/fig4_*.md"],
            links=[("Readout training history (loss = −NSS)", "training_curves.csv")],
            text="finetuning",
        ),
        Section(
            "Inner vs output saliency (§6, Eqs. 2–3)",
            ["inner_output/readout_performance_seeds.md",
             "inner_output/inner_output_spearman_seeds.md", "inner_output/anova_seeds.md"],
            ["inner_vs_output_*.png"],
            more_tables=["inner_output/*.md"],
            text="inner_output",
        ),
        Section(
            "Pop-out search arrays (Tables 4–6 analogues, Eq. 4)",
            [("popout_readouts/table4_popout_models.md", "popout/table4_popout_models.md"),
             ("popout_readouts/table4_popout_excess_by_dimension.md",
              "popout/table4_popout_excess_by_dimension.md"),
             "popout/table5_popout_layers.md", "popout_readouts/table6_popout_k.md"],
            ["table4_popout_*.png", "fig8_popout_examples.png", "fig9_popout_best_units.png"],
            more_tables=["popout_readouts/table*.md"],
        ),
        Section(
            "Model scorecard: baselines, classical models, readouts, DeepGaze I, ML-Net, "
            "implicit saliency, Grad-CAM",
            ["evaluate/leaderboard.md"],
            ["evaluate/leaderboard.png"],
            links=[("Tidy scorecard (every model × metric, value and image-bootstrap interval)",
                    "evaluate/summary.csv"),
                   ("Density conversion of the map-only models (fitted on training images)",
                    "evaluate/density_conversion.csv"),
                   ("Fitted baselines (centre bias, gold standard)", "baselines.csv")],
            text="evaluate",
        ),
        Section(
            "DeepGaze I: layer comparison and what its readout picked",
            ["deepgaze/layer_comparison.md", "deepgaze/picked_selectivity.md",
             "deepgaze/picked_units.md"],
            ["deepgaze/layer_comparison.png", "deepgaze/picked_selectivity.png"],
        ),
        Section(
            "ML-Net: its encoding units, its learned prior, pop-out",
            [f"mlnet/encoding_vs_best_layer_{tk}_mean.md",
             f"mlnet/encoding_vs_trunk_{tk}_mean.md", "mlnet/encoding_vs_trunk_count_above_T.md",
             "mlnet/learned_prior.md", "mlnet/table5_popout_encoding.md",
             "mlnet_training/training_curve.md"],
            ["mlnet/learned_prior.png"],
            more_tables=["mlnet/encoding_vs_trunk_*.md"],
            links=[("Tidy statistics of the 64 encoding units", "mlnet/encoding_statistics.csv")],
            text="mlnet",
        ),
        Section(
            "Implicit saliency, Grad-CAM, Guided Backprop (Sun et al. 2020, Tables 1–2, Fig. 4)",
            ["implicit/table1_layers.md", "implicit/fig4_gain.md",
             "robustness/table2_blur.md", f"implicit/gradient_vs_activation_{tk}_mean.md",
             "implicit/gradient_vs_activation_count_above_T.md"],
            ["implicit/fig4_gain.png"],
            links=[("Tidy statistics of the gradient units (µ maps)",
                    "implicit/gradient_statistics.csv"),
                   ("Table 1 with its image-bootstrap intervals", "implicit/table1_layers.csv")],
            text="implicit",
        ),
        Section(
            "Task vs data: pt / sp / sr (Tables 7–8 analogues)",
            ["scene/scene_accuracy.md", "scene/scene_recall.md",
             "task/table7_task_statistics.md", "task/task_permutation_test.md",
             "task/task_permutation_agreement.md", "scene/table8_mean_map_nss.md"],
            ["scene_confusion.png", "fig11_task_maps.png"],
            more_tables=["task/*.md", "scene/table*.md"],
            links=[("Table 7 per seed, every column", "task/table7_task_statistics.csv")],
            text="task",
        ),
    ]


# --------------------------------------------------------------------------------------------
# provenance records


def read_records(work: Path) -> dict[str, dict]:
    """The stages' provenance records ``{stage: record}`` (``work/provenance/*.json``)."""
    out = {}
    for p in sorted((Path(work) / "provenance").glob("*.json")):
        rec = json.loads(p.read_text())
        out[str(rec.get("stage", p.stem))] = rec
    return out


def _dvc_file(params: Params) -> Path:
    # read for the stage list and order only; DVC refuses dvc.yaml as a dep, and every stage
    # that runs rewrites its provenance record (a dep), which reruns the report
    return Path(params.base) / "dvc.yaml"


def pipeline_stages(params: Params) -> tuple[list[str] | None, dict[str, set[str]]]:
    """The stages of ``dvc.yaml`` (beside the params file) in file order, and for each the
    stages whose outputs it depends on (:func:`dissect.pipeline.upstream_stages`). Without a
    ``dvc.yaml``: ``None`` (every record is listed) and no dependencies."""
    from dissect.pipeline import upstream_stages

    path = _dvc_file(params)
    if not path.is_file():
        return None, {}
    upstream = upstream_stages(path)
    return list(upstream), upstream


def _listed(records: Mapping[str, dict], order: list[str] | None) -> list[str]:
    """The pipeline's stages that have a record (every record without a pipeline), in the order
    they ran (start time)."""
    present = [s for s in (records if order is None else order) if s in records]
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(present, key=lambda s: (t[0] if (t := _time(records[s])) else never))


def _time(rec: Mapping) -> tuple[datetime, datetime] | None:
    try:
        start = datetime.fromisoformat(str(rec["started"]))
    except (KeyError, ValueError):
        return None
    return start, start + timedelta(seconds=float(rec.get("seconds") or 0.0))


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def consistency(records: Mapping[str, dict], order: list[str] | None,
                upstream: Mapping[str, set[str]]) -> list[str]:
    """Sentences saying where the records do not come from one run: several run ids (the
    ``run`` each record holds), several package-version sets, and stages that started before a
    stage they depend on finished (their outputs predate their inputs). Empty when consistent."""
    notes = []
    listed = _listed(records, order)
    runs: dict[str, list[str]] = {}
    for s in listed:
        runs.setdefault(str(records[s].get("run")), []).append(s)
    if len(runs) > 1:
        notes.append("The records come from " + str(len(runs)) + " different runs: " + "; ".join(
            f"run `{r}`: {', '.join(st)}" for r, st in runs.items()) + ".")
    versions: dict[str, list[str]] = {}
    for s in listed:
        versions.setdefault(json.dumps(records[s].get("versions", {}), sort_keys=True),
                            []).append(s)
    if len(versions) > 1:
        sets = [json.loads(v) for v in versions]
        differ = sorted({k for v in sets for k in v if len({str(x.get(k)) for x in sets}) > 1})
        notes.append("The records were made with different package versions ("
                     + ", ".join(differ) + "): " + "; ".join(
                         ", ".join(st) for st in versions.values()) + ".")
    for s in listed:
        t = _time(records[s])
        for u in sorted(upstream.get(s, ())):
            tu = _time(records[u]) if u in records else None
            if t is not None and tu is not None and t[0] < tu[1]:
                notes.append(f"`{s}` started before `{u}`, whose outputs it reads, finished: "
                             f"its record is from an earlier run.")
    return notes


def provenance_lines(records: Mapping[str, dict], order: list[str] | None,
                     upstream: Mapping[str, set[str]]) -> list[str]:
    """The provenance section: stage table (the pipeline's stages in the order they ran), total
    time, consistency, versions, and the parameters each stage recorded."""
    from dissect.tables import markdown_table

    lines = ["## Provenance", ""]
    listed = _listed(records, order)
    if not listed:
        return lines + ["No provenance records (`work/provenance/`) for the stages of the "
                        "pipeline.", ""]
    rows = pd.DataFrame([{"stage": s, "started (UTC)": records[s].get("started", ""),
                          "seconds": records[s].get("seconds"),
                          "run": records[s].get("run") or ""} for s in listed])
    if rows["run"].nunique() <= 1:  # one run id (or none): said once below
        rows = rows.drop(columns="run")
    missing = [s for s in order or [] if s not in records and s != "report"]
    lines += [markdown_table(rows, floatfmt=".1f").strip(), ""]
    total = sum(float(records[s].get("seconds") or 0.0) for s in listed)
    times = [t for t in (_time(records[s]) for s in listed) if t is not None]
    span = ""
    if times:
        first, last = min(t[0] for t in times), max(t[1] for t in times)
        span = (f" The records span {first.isoformat(timespec='minutes')} to "
                f"{last.isoformat(timespec='minutes')} ({_minutes((last - first).total_seconds())}"
                " wall clock).")
    lines += [f"Total time: {_minutes(total)} over {len(listed)} stage(s).{span}", ""]
    if missing:
        lines += ["No record for: " + ", ".join(missing) + " (not run).", ""]
    notes = consistency(records, order, upstream)
    if notes:
        lines += ["**Not one run.** " + " ".join(notes), ""]
    else:
        run = records[listed[0]].get("run")
        lines += [("All records come from one run" + (f" (`{run}`)" if run else "")
                   + ", with the same package versions."), ""]
    versions = records[listed[-1]].get("versions", {})
    if versions:
        lines += ["Package versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += ["Parameters each stage recorded (its provenance record's `params`):", ""]
    for s in listed:
        flat = flatten(records[s].get("params") or {})
        lines.append(f"- `{s}`: " + (", ".join(f"`{k}` = {_value(v)}" for k, v in flat.items())
                                     if flat else "none"))
    return lines + [""]


def _value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _param(records: Mapping[str, dict], stage: str, dotted: str) -> Any:
    """A parameter a stage recorded (dotted key into its record's ``params``), else None."""
    node: Any = (records.get(stage) or {}).get("params") or {}
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------------------------
# the report


def top_k_of(params: Params, records: Mapping[str, dict]) -> int:
    """The ``stats.top_k`` the tables were made with: as the statistics (else figures) stage
    recorded it, else the parameter file's."""
    for stage in ("statistics", "figures"):
        k = _param(records, stage, "stats.top_k")
        if k is not None:
            return int(k)
    return int(params["stats"]["top_k"])


def setup_lines(records: Mapping[str, dict]) -> list[str]:
    """The setup, from what the stages recorded (nothing the run did not record is printed)."""
    lines = ["## Setup", ""]
    ex = records.get("extract")
    if ex:
        b = (ex.get("params") or {}).get("backbone") or {}
        text = f"- Backbone: `{b.get('name', 'n/a')}`"
        if b.get("weights") or ex.get("weights_id"):
            text += f" ({b.get('weights', 'n/a')} weights, id `{ex.get('weights_id', 'n/a')}`)"
        pre = ex.get("preprocess") or ex.get("preprocessing") or {}
        size = pre.get("size") if isinstance(pre, Mapping) else None
        if size:
            text += f", input {size[0]}×{size[1]}"
        if b.get("layers"):
            text += f", layers {', '.join(map(str, b['layers']))}"
        lines.append(text + ".")
    prep = records.get("prepare")
    if prep:
        osie = _param(records, "prepare", "data.osie")
        text = "- Data: OSIE" + (f" at `{osie}`" if osie else "")
        if "n_images" in prep:
            text += (f": {prep['n_images']} images, {prep.get('n_fixations', 'n/a')} fixations "
                     f"(sha `{prep.get('fixations_sha', 'n/a')}`), {prep.get('n_regions', 'n/a')}"
                     f" regions (sha `{prep.get('regions_sha', 'n/a')}`)")
        if "n_train" in prep:
            text += (f"; split {prep['n_train']} train / {prep.get('n_heldout', 'n/a')} held out "
                     "(analyses use held-out images only)")
        lines.append(text + ".")
    ks = _param(records, "train", "train.ks")
    if ks is not None:
        names = [common.model_label(f"k{k}") for k in ks]
        lines.append("- Saliency readouts (−NSS loss): " + ", ".join(names) + " — k0 keeps the "
                     "pretrained trunk (setup I), kN fine-tunes its top N stages (setup II)"
                     + (", `all` every stage" if "all" in names else ""))
        seeds = _param(records, "train", "train.seeds")
        if seeds is not None:
            threads = (records.get("train") or {}).get("torch_threads")
            lines[-1] += (f"; each trained with seeds {', '.join(map(str, seeds))}"
                          + (f" ({threads} torch threads)" if threads else ""))
        lines[-1] += "."
    st = _param(records, "statistics", "stats")
    if isinstance(st, Mapping):
        parts = []
        if "top_k" in st:
            parts.append(f"top-{st['top_k']} mean")
        if "threshold" in st:
            parts.append(f"count of units with NSS > T = {st['threshold']}")
        text = ("- Statistics: " + " and ".join(parts)) if parts else "- Statistics"
        if "n_null" in st:
            text += (f"; null = {st['n_null']} permutations of category labels across regions; "
                     "cells read `value* (null mean)`, `*` = permutation p < 0.05")
        if "n_boot" in st:
            text += f"; CIs from {st['n_boot']} image bootstraps in the CSV"
        lines.append(text + ".")
    sc = records.get("scene")
    if sc:
        tuned = _param(records, "scene", "scene.tuned_stages")
        sp = _param(records, "scene", "sp_model")
        text = "- Task comparison: sr = the trunk fine-tuned for scene recognition"
        if tuned is not None:
            text += f" (top {tuned} stage(s) tuned"
            hidden, drop = _param(records, "scene", "scene.hidden"), _param(records, "scene",
                                                                             "scene.dropout")
            if hidden is not None:
                text += f", head {_value(hidden)}"
            if drop is not None:
                text += f", dropout {drop}"
            text += ")"
        if sp is not None:
            text += f"; sp = the saliency readout {common.model_label(str(sp))}"
        lines.append(text + ".")
    if len(lines) == 2:
        lines.append("No provenance records: run the pipeline first.")
    return lines + [""]


def _section_text(key: str | None, records: Mapping[str, dict],
                  results: Path | None = None) -> list[str]:
    """The explanatory paragraph of a section (its ``text`` key), from what the run recorded
    (and, for fine-tuning, the conclusions table the statistics stage wrote)."""
    if key == "finetuning":
        seeds = _param(records, "train", "train.seeds")
        text = ("Rows are k, the number of top trunk stages fine-tuned: 0 = setup I (frozen "
                "trunk), `all` = every stage.")
        if seeds is not None:
            text += (f" Every readout was trained with {len(seeds)} seed(s) "
                     f"({', '.join(map(str, seeds))}); cells give the mean over seeds ± sd "
                     "[min, max] and in how many seeds the value is significant.")
        lines = [text, ""]
        if results is not None:
            lines += conclusion_lines(results / "tables" / "statistics" /
                                      "finetuning_conclusions.csv")
        return lines
    if key == "evaluate" and results is not None:
        return scorecard_lines(results / "tables" / "evaluate" / "summary.csv")
    if key == "mlnet":
        size = _param(records, "mlnet", "mlnet.input_size")
        opt = _param(records, "mlnet", "mlnet.optimizer")
        trunk = _param(records, "mlnet", "mlnet.trunk")
        rec = records.get("mlnet", {})
        if size is None:
            return []
        return [f"ML-Net (Cornia et al. 2016) on the {rec.get('backbone', 'pipeline')} trunk "
                f"({trunk}), letterboxed {size[0]}×{size[1]} input, trained with {opt} on "
                f"{rec.get('n_train', '?')} training images (validation "
                f"{rec.get('n_val', '?')}; kept epoch {rec.get('best_epoch', '?')}). Its 64 "
                "encoding units (the 3×3 convolution's ReLU) are dissected on the held-out "
                "images like the trunk's layers (Eq. 1, the same statistics and null); its "
                "output is scored in the scorecard above and in Table 4.", ""]
    if key == "implicit":
        layers = _param(records, "implicit", "implicit.layers")
        if layers is None:
            return []
        classes = _param(records, "implicit", "implicit.classes")
        norm = _param(records, "implicit", "implicit.variance_norm")
        n = "every output class" if classes is None else f"the first {classes} classes"
        return [f"Implicit saliency S_C (the class-conflict gradients of the pretrained "
                f"classifier, {n}, V normalised {norm}) against its feed-forward counterpart "
                f"S_F, Grad-CAM and Guided Backprop at the layers {', '.join(layers)}; no "
                "eye-tracking data is used by any of them. The first layer's S_C and Grad-CAM "
                "(at the last convolutional layer) are in the scorecard and Table 4. Table 2: "
                "every image-based scorecard model on Gaussian-blurred held-out images. The "
                "gradient units (µ, the mean |gradient| over classes, per unit) are dissected "
                "with Eq. 1 like the activation units of the same layers.", ""]
    if key == "inner_output":
        from dissect.inner_output import SPEARMAN_NOTE

        return [SPEARMAN_NOTE, ""]
    if key == "task":
        sp = _param(records, "scene", "sp_model")
        if sp is None:
            return []
        return [f"pt: pretrained trunk; sp: the saliency readout {common.model_label(str(sp))} "
                "(same stages tuned as sr); sr: the scene-recognition trunk.", ""]
    return []


def scorecard_lines(path: Path) -> list[str]:
    """The scorecard's headline, read from the evaluate stage's tidy summary: IG explained of
    DeepGaze I, of the best readout and of the best classical model (with their intervals), and
    the NSS of the centre bias and of the gold standard."""
    if not path.is_file():
        return []
    df = pd.read_csv(path)

    def cell(model: str, metric: str) -> str:
        r = df[(df["model"] == model) & (df["metric"] == metric)]
        if r.empty:
            return "n/a"
        v, lo, hi = (float(r[c].iloc[0]) for c in ("value", "ci_low", "ci_high"))
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

    def best(models: list[str]) -> str | None:
        r = df[(df["metric"] == "ig_explained") & df["model"].isin(models)]
        return None if r.empty else str(r.loc[r["value"].idxmax(), "model"])

    names = list(pd.unique(df["model"]))
    readout = best([m for m in names if m.startswith("readout")])
    classical = best([m for m in names if m in ("itti", "gbvs", "bms", "spectral_residual",
                                                "fine_grained")])
    parts = [f"DeepGaze I {cell('deepgaze', 'ig_explained')}"]
    if "mlnet" in names:
        parts.append(f"ML-Net {cell('mlnet', 'ig_explained')}")
    for model, label in (("implicit_saliency", "implicit saliency"), ("gradcam", "Grad-CAM")):
        if model in names:
            parts.append(f"{label} {cell(model, 'ig_explained')}")
    if readout:
        parts.append(f"the best readout ({readout}) {cell(readout, 'ig_explained')}")
    if classical:
        parts.append(f"the best classical model ({classical}) "
                     f"{cell(classical, 'ig_explained')}")
    return [
        "Information gain explained (IG over the centre bias as a fraction of the gold "
        "standard's, with its image-bootstrap interval): " + "; ".join(parts) + ". NSS of the "
        f"centre bias {cell('centre_bias', 'nss')}, of the gold standard "
        f"{cell('gold_standard', 'nss')}. Readout labels: `readout_k<k>_s<seed>`; map-only "
        "models are scored by LL/IG through a density fitted on training images "
        "(`density_conversion.csv`).", ""]


def conclusion_lines(path: Path) -> list[str]:
    """Which of the study's fine-tuning readings hold in every training seed, from the
    statistics stage's ``finetuning_conclusions.csv`` (:func:`dissect.seeds.
    finetuning_conclusions`): one line per reading, naming the k where it holds in every seed,
    in some seeds only, and in none."""
    if not path.is_file():
        return []
    df = pd.read_csv(path, keep_default_na=False)
    n = int(df["n_seeds"].max()) if len(df) else 0
    lines = [f"**Which fine-tuning conclusions survive the training seed** ({n} seed(s); "
             "from `statistics/finetuning_conclusions.csv`):", ""]
    for statement, g in df.groupby("statement", sort=False):
        parts = []
        for verdict, label in (("all", "in every seed"), ("mixed", "in some seeds only"),
                               ("none", "in no seed")):
            ks = [common.model_label(str(m)) for m in g.loc[g["agreement"] == verdict, "model"]]
            if ks:
                parts.append(f"{label} for {', '.join(ks)}")
        lines.append(f"- {statement}: holds " + "; ".join(parts) + ".")
    return lines + [""]


def _n_rows(md: str) -> int:
    return max(0, sum(1 for line in md.splitlines() if line.startswith("|")) - 2)


def _table_block(results: Path, md_path: Path) -> list[str]:
    """A table inlined, or linked when longer than :data:`MAX_INLINE_ROWS` rows."""
    rel = md_path.relative_to(results).as_posix()
    text = md_path.read_text(encoding="utf-8").strip()
    csv = md_path.with_suffix(".csv")
    n = _n_rows(text)
    if n > MAX_INLINE_ROWS:
        target = csv if csv.is_file() else md_path
        t_rel = target.relative_to(results).as_posix()
        return [f"**{md_path.stem}**: {n} rows, not inlined — [`{t_rel}`]({t_rel})", ""]
    return [f"**{md_path.stem}** (`{rel}`)", "", text, ""]


def _figures(results: Path, pattern: str) -> list[Path]:
    figs = results / "figures"
    return sorted((figs / "paper").glob(pattern)) + sorted(figs.glob(pattern))


def section_lines(results: Path, section: Section, records: Mapping[str, dict]) -> list[str]:
    """One section: its tables (inlined, linked when long; missing expected ones listed), the
    further tables of its folders, linked tidy CSVs, and its figures."""
    tables = results / "tables"
    body: list[str] = []
    shown: set[Path] = set()
    missing: list[str] = []
    for entry in section.tables:
        options = entry if isinstance(entry, tuple) else (entry,)
        path = next((tables / o for o in options if (tables / o).is_file()), None)
        if path is None:
            missing.append(f"`tables/{options[0]}`")
            continue
        shown.add(path)
        body += _table_block(results, path)
    for pattern in section.more_tables:
        for path in sorted(tables.glob(pattern)):
            if path not in shown and path.is_file():
                shown.add(path)
                body += _table_block(results, path)
    for label, name in section.links:
        path = tables / name
        if path.is_file():
            rel = path.relative_to(results).as_posix()
            body += [f"{label}: [`{rel}`]({rel}).", ""]
    for pattern in section.figures:
        found = _figures(results, pattern)
        if not found and not any(ch in pattern for ch in "*?["):
            missing.append(f"`figures/paper/{pattern}`")
        for fig in found:
            rel = fig.relative_to(results).as_posix()
            body += [f"![{fig.stem}]({rel})", ""]
    lines = [f"## {section.title}", ""]
    if not shown and not body:
        return lines + ["Not produced by this run (no tables or figures of this section).", ""]
    lines += _section_text(section.text, records, results) + body
    if missing:
        lines += ["Not produced by this run: " + ", ".join(missing) + ".", ""]
    return lines


def build_report(params: Params) -> str:
    """The report's Markdown (module docstring)."""
    results = params.results
    records = read_records(params.work)
    order, upstream = pipeline_stages(params)
    top_k = top_k_of(params, records)
    lines = ["# dissect — results report", "",
             "Generated by `make repro` (`dvc repro` in `pipelines/`); every number below is read "
             "from the tables under `results/tables/`, which the stages wrote, and every "
             "parameter from the stages' provenance records. Regenerate with `make repro`; "
             "`dvc status` (in `pipelines/`) says whether they match the code.", ""]
    lines += setup_lines(records)
    for section in sections(top_k):
        lines += section_lines(results, section, records)
    lines += provenance_lines(records, order, upstream)
    return "\n".join(lines).rstrip() + "\n"


def run_report(params: Params) -> Path:
    """Write ``results/report.md`` atomically (no provenance record of its own: the report reads
    the folder it would write to)."""
    out = common.results(params, "report.md")
    with common.replacing(out) as tmp:
        tmp.write_text(build_report(params), encoding="utf-8")
    log.info("report written to %s", out)
    return out
