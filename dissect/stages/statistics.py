"""Stage ``statistics``: category statistics of the unit associations (He et al. §4.3) with a
label-permutation null and image-bootstrap intervals (value and excess over the null) → Table 2
(pretrained, every analysed layer), Table 3 (last trunk layer × fine-tuned readouts), the Fig. 4
improvement table, and Table 7 (pt / sp / sr, with the paired permutation test) once the scene
stage has associated the sr trunk. Thin: params → :mod:`dissect.statistics`,
:mod:`dissect.task_compare`, :mod:`dissect.tables`.

Outputs (``top`` = ``f"top{stats.top_k}_mean"``), each folder written through
:func:`dissect.stages.common.replacing`:

* ``results/tables/statistics/``: ``category_statistics.{csv,md}`` (tidy, every column, a
  ``seed`` column: empty for the pretrained trunk, the training seed for every readout),
  ``table2_{top,count_above_T}.{csv,md}`` (``value* (null mean)`` pivots) and
  ``table2_{stat}_excess`` (excess over the null with its interval); ``table3_…`` over the
  training seeds (mean ± sd [min, max] and seeds significant), ``table3_seed_summary``,
  ``table3_seed_anova``; ``fig4_improvement`` (per seed), ``fig4_improvement_summary``;
  ``finetuning_conclusions`` (the study's readings, seed by seed).
* ``results/tables/task/``: per training seed (the i-th scene seed paired with the i-th training
  seed), ``table7_task_statistics.csv`` (tidy, ``seed`` and ``scene_seed`` columns) with
  ``table7_task_statistics.md`` (the pivot over seeds: statistic · model × categories),
  ``table7_seed_summary`` (sp and sr over seeds), ``task_permutation_test.{csv,md}`` (per seed)
  and its agreement over seeds.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import dask
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.statistics")


def k_value(k, n_stages: int) -> int:
    """k as a number: ``"all"`` = every trunk stage tuned (used to order the rows)."""
    return n_stages if str(k) == "all" else int(k)


def statistics_kwargs(params: Params) -> dict[str, Any]:
    """Keyword arguments of :func:`dissect.statistics.category_statistics` from ``stats:``."""
    s = params["stats"]
    return dict(
        k=int(s["top_k"]), threshold=float(s["threshold"]), n_null=int(s["n_null"]),
        n_boot=int(s["n_boot"]), seed=int(s["seed"]), ci_level=float(s["ci_level"]),
        ci_method=str(s["ci_method"]), null=str(s["null_type"]),
        n_null_boot=int(s["n_null_boot"]),
    )  # fmt: skip


def layer_statistics(store: Path, layer: str, kw: dict) -> pd.DataFrame:
    """Category statistics of one layer of an association store (one Dask task of this stage
    and of ``implicit``)."""
    from dissect.association import load_associations
    from dissect.statistics import category_statistics

    return category_statistics(load_associations(store, [layer]), **kw)


def run_statistics(params: Params) -> pd.DataFrame:
    from threadpoolctl import threadpool_limits
    from tqdm.dask import TqdmCallback

    from dissect.association import load_associations

    kw = statistics_kwargs(params)
    top = f"top{kw['k']}_mean"
    seeds = common.seeds(params)
    recorded = {"stats": params["stats"], "train.seeds": seeds, "sp_model": None}
    with stage_record(params.work, "statistics", recorded) as rec:
        layers_pt = list(params["backbone"]["layers"])
        last = layers_pt[-1]
        n_stages = int(common.read_json(params, "train", "summary.json")["n_stages"])

        # the (model, seed, layer) rows; setup I's units are the pretrained ones for every seed
        rows = [("pt", None, layer) for layer in layers_pt]
        rows += [(model, seed, last) for seed in seeds for model in common.model_names(params)[1:]]
        stores = {r: common.assoc_store(params, r[0], r[1]) for r in rows}
        # one Dask task per distinct (store, layer): each reads its association array and
        # reduces it; BLAS single-threaded, the tasks are the parallelism
        distinct = list(dict.fromkeys((stores[r], r[2]) for r in rows))
        tasks = [dask.delayed(layer_statistics)(store, layer, kw) for store, layer in distinct]
        log.info("statistics: %d (store, layer) tasks for %d seeds", len(tasks), len(seeds))
        with common.scheduler(params) as client, threadpool_limits(limits=1, user_api="blas"):
            kw_compute = {} if client is not None else {"scheduler": "threads"}
            with TqdmCallback(desc="statistics", unit="task",
                              disable=not common.progress(params)):
                done = dict(zip(distinct, dask.compute(*tasks, **kw_compute), strict=True))
        parts = []
        for model, seed, layer in rows:
            df = done[(stores[(model, seed, layer)], layer)].copy()
            df.insert(0, "model", model)
            df.insert(1, "seed", pd.array([seed] * len(df), dtype="Int64"))
            df.insert(2, "k", -1 if model == "pt" else k_value(model[1:], n_stages))
            parts.append(df)
        stats = pd.concat(parts, ignore_index=True)

        with common.replacing(common.results(params, "tables", "statistics")) as out:
            write_statistics_tables(stats, out, top=top, last=last, kw=kw)

        pairs = dict(zip(seeds, common.scene_seeds(params), strict=True))
        srs = {seed: common.scene_dir(params, sc) / "assoc_sr.zarr"
               for seed, sc in pairs.items()}
        task = params.results / "tables" / "task"
        if all(p.exists() for p in srs.values()):
            sp = common.sp_model(params)
            recorded["sp_model"] = sp
            t7, tests = task_tables(stats, {s: load_associations(p, [last]) for s, p in
                                            srs.items()}, sp, kw, scene_seeds=pairs,
                                    progress=common.progress(params))
            with common.replacing(common.results(params, "tables", "task")) as out:
                write_task_tables(t7, tests, out, kw=kw, sp=sp)
        elif task.exists():
            # without the scene stage's sr associations there is no Table 7 for these
            # statistics: tables of an earlier run must not stay beside them
            missing = [str(p) for p in srs.values() if not p.exists()]
            log.warning("no %s (run the scene stage): removing the earlier %s",
                        ", ".join(missing), task)
            shutil.rmtree(task)
        rec["rows"] = len(stats)
    return stats


def task_tables(stats: pd.DataFrame, sr: dict[int, dict], sp: str, kw: dict, *,
                scene_seeds: dict[int, int] | None = None,
                progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 7 and its paired test for every training seed: the seed's sp readout against the
    scene model paired with it (``sr[seed]``, trained with ``scene_seeds[seed]``); both tables
    get ``seed`` and ``scene_seed`` columns. ``progress``: a tqdm bar over the seeds."""
    from tqdm.auto import tqdm

    from dissect.tables import columns_first
    from dissect.task_compare import task_statistics

    t7s, tests = [], []
    for seed, assoc in tqdm(sr.items(), total=len(sr), desc="Table 7 (sp vs sr)", unit="seed",
                            disable=not progress):
        rows = stats[(stats["model"] == "pt") | (stats["seed"] == seed)]
        t7, test = task_statistics(rows, assoc, sp, **kw)
        pair = {"seed": seed, "scene_seed": (scene_seeds or {}).get(seed, pd.NA)}
        t7s.append(t7.assign(**pair))
        tests.append(test.assign(**pair))

    first = ["seed", "scene_seed"]
    return (columns_first(pd.concat(t7s, ignore_index=True), first),
            columns_first(pd.concat(tests, ignore_index=True), first))


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """The table with ``model`` replaced by its display name (``kall`` → ``all``)."""
    return df.assign(model=df["model"].map(common.model_label))


def write_statistics_tables(
    stats: pd.DataFrame, out: Path, *, top: str, last: str, kw: dict
) -> list[str]:
    """Write the statistics folder's tables into ``out``: Table 2 pivots (pretrained trunk) and
    their excess pivots; Table 3 over the training seeds (cells mean ± sd [min, max] and the
    number of seeds with p < 0.05; :func:`dissect.tables.pivot_seeds`) with its tidy
    ``table3_seed_summary`` (:func:`dissect.seeds.seed_summary`) and, with ≥ 2 seeds,
    ``table3_seed_anova`` (:func:`dissect.seeds.seed_anova`, fine-tuned trunks only); the tidy
    table; Fig. 4 per seed (``fig4_improvement``) and over seeds
    (``fig4_improvement_summary``); the study's fine-tuning readings checked in every seed
    (``finetuning_conclusions``). Returns the stems."""
    from dissect.seeds import finetuning_conclusions, improvement_summary, seed_anova, seed_summary
    from dissect.statistics import improvement
    from dissect.tables import (
        pivot_improvement_seeds,
        pivot_layers,
        pivot_seeds,
        stats_caption,
        write_table,
    )

    out.mkdir(parents=True, exist_ok=True)
    tidy = "category_statistics.csv"
    written = []

    def put(df: pd.DataFrame, name: str, caption: str | None = None,
            markdown: pd.DataFrame | None = None) -> None:
        write_table(df, out / name, caption=caption, markdown=markdown)
        written.append(name)

    put(stats, "category_statistics")
    pt = stats[stats["model"] == "pt"]
    for stat in (top, "count_above_T"):
        for cells, suffix in (("value", ""), ("excess", "_excess")):
            caption = stats_caption(pt, stat, cells=cells, n_null=kw["n_null"],
                                    n_boot=kw["n_boot"], tidy=tidy)  # fmt: skip
            put(pivot_layers(pt, stat, cells=cells).reset_index(), f"table2_{stat}{suffix}",
                caption)

    by_k = _labelled(stats[(stats["model"] != "pt") & (stats["layer"] == last)])
    seeds = sorted(int(x) for x in by_k["seed"].dropna().unique())
    n = len(seeds)
    order = list(pd.unique(by_k.sort_values("k", kind="stable")["model"]))
    summary = seed_summary(by_k.assign(seed=by_k["seed"].astype(int)))
    k_of = by_k.drop_duplicates("model").set_index("model")["k"]
    summary.insert(1, "k", summary["model"].map(k_of))
    for stat in (top, "count_above_T"):
        what = "number of units with NSS > T" if stat.startswith("count") else (
            f"top-{kw['k']} mean NSS")
        for cells, suffix in (("value", ""), ("excess", "_excess")):
            of = what if cells == "value" else f"excess of the {what} over the permutation null"
            caption = (
                f"Layer {last}. Cells: the {of}, mean over the {n} training seed(s) "
                f"({', '.join(map(str, seeds))}) ± sd [min, max over seeds], then in how many "
                f"seeds it is significant (permutation p < 0.05, {kw['n_null']} permutations "
                "per seed). k0 (setup I) keeps the pretrained trunk: the same units in every "
                "seed. Per-seed values, nulls, p and intervals: `category_statistics.csv`; the "
                "t test over seeds of the excess (seed as a random effect): "
                "`table3_seed_summary.csv`.")
            put(pivot_seeds(summary, stat, cells=cells, order=order).reset_index(),
                f"table3_{stat}{suffix}", caption)
    put(summary, "table3_seed_summary")
    seeded = by_k[by_k["k"] != 0]
    if n >= 2 and not seeded.empty:
        put(seed_anova(seeded.assign(seed=seeded["seed"].astype(int))), "table3_seed_anova",
            "Per fine-tuned model and statistic: two-way ANOVA of the excess over the null on "
            "category and seed (residual = seed × category interaction), with method-of-moments "
            "variance components (`dissect.seeds.seed_anova`).")

    imp = pd.concat([improvement(g.drop(columns="seed"), stat=top).assign(seed=seed)
                     for seed, g in by_k.groupby("seed", sort=True)], ignore_index=True)
    imp = imp[["seed", *[c for c in imp.columns if c != "seed"]]]
    put(imp, "fig4_improvement")
    isum = improvement_summary(imp)
    put(isum, "fig4_improvement_summary",
        f"Cells: % improvement of the top-{kw['k']} mean over setup I (k0), mean over {n} "
        "seed(s) ± sd [min, max], then in how many seeds it is positive. Per seed: "
        "`fig4_improvement.csv`; the same for the excess over the null: "
        "`fig4_improvement_summary.csv` (`excess_improvement_pct_*`).",
        markdown=pivot_improvement_seeds(isum, order=order).reset_index())
    per_seed, conclusions = finetuning_conclusions(imp)
    put(per_seed, "finetuning_conclusions_per_seed")
    cols = ["statement", "model", "n_holds", "n_seeds", "agreement", "detail", "profile_rs"]
    put(conclusions, "finetuning_conclusions",
        "The study's fine-tuning readings (He et al. §5.2: fine-tuning favours some categories, "
        "e.g. heads, over others, e.g. text), checked in every training seed for every k: "
        "`n_holds` of `n_seeds` seeds; `profile_rs` = mean Spearman correlation between seeds "
        "of the per-category improvement (1 = same ranking). Per seed: "
        "`finetuning_conclusions_per_seed.csv`.",
        markdown=conclusions[cols].rename(columns={"model": "k"}))
    return written


def write_task_tables(
    t7: pd.DataFrame, tests: pd.DataFrame, out: Path, *, kw: dict, sp: str
) -> None:
    """Table 7 into ``out``: the tidy per-seed CSV with, as its Markdown, the pivot over seeds
    (rows statistic · model, cells :func:`dissect.tables.format_seed_cell`), the per-seed
    summary, and the paired tests per seed with their agreement over seeds."""
    from dissect.seeds import agreement, seed_summary
    from dissect.tables import NULL_TEXT, pivot_seeds, write_table

    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(int(x) for x in t7["seed"].unique())
    summary = seed_summary(t7)
    stats = sorted(pd.unique(summary["stat"]), key=lambda x: (not str(x).startswith("top"), x))
    pivot = pd.concat([pivot_seeds(summary, st, order=["pt", "sp", "sr"]).reset_index()
                       .assign(stat=st) for st in stats], ignore_index=True)
    pivot = pivot[["stat", *[c for c in pivot.columns if c != "stat"]]]
    caption = (
        f"Cells: top-{kw['k']} mean NSS and number of units with NSS > T = {kw['threshold']:g} "
        f"over the last trunk layer's units, mean over {len(seeds)} seed(s) ± sd [min, max], "
        "then in how many seeds the permutation test is significant (p < 0.05, "
        f"{kw['n_null']} permutations, {NULL_TEXT.get(kw['null'], kw['null'])}); pt = "
        f"pretrained trunk (the same in every seed), sp = saliency readout "
        f"{common.model_label(sp)} of training seed i, sr = the scene-recognition trunk of "
        "scene seed i (same stages tuned, same images). Per seed, every column: "
        "`table7_task_statistics.csv`; over seeds: `table7_seed_summary.csv`; the paired "
        "sign-flip test of |Δsp| vs |Δsr| over categories per seed: "
        "`task_permutation_test.csv`, its agreement over seeds: `task_permutation_agreement`."
    )
    write_table(t7, out / "table7_task_statistics", caption=caption, markdown=pivot)
    write_table(summary, out / "table7_seed_summary")
    write_table(tests, out / "task_permutation_test")
    agree = agreement(tests.assign(significant=tests["p_value"] < 0.05), ["stat"],
                      "significant")
    write_table(agree, out / "task_permutation_agreement",
                caption="Seeds in which the paired test of |Δsp| vs |Δsr| is significant "
                "(p < 0.05).")
