"""Stage ``statistics``: category statistics of the unit associations (He et al. §4.3) with a
label-permutation null and image-bootstrap intervals (value and excess over the null) → Table 2
(pretrained, every analysed layer), Table 3 (last trunk layer × fine-tuned readouts), the Fig. 4
improvement table, and Table 7 (pt / sp / sr, with the paired permutation test) once the scene
stage has associated the sr trunk. Thin: params → :mod:`dissect.statistics`,
:mod:`dissect.task_compare`, :mod:`dissect.tables`.

Outputs (``top`` = ``f"top{stats.top_k}_mean"``), each folder written through
:func:`dissect.stages.common.replacing`:

* ``results/tables/statistics/``: ``category_statistics.{csv,md}`` (tidy, every column),
  ``table2_{top,count_above_T}.{csv,md}`` and ``table3_…`` (``value* (null mean)`` pivots),
  ``table2_{stat}_excess`` / ``table3_{stat}_excess`` (excess over the null with its interval),
  ``fig4_improvement.{csv,md}``.
* ``results/tables/task/``: ``table7_task_statistics.csv`` (tidy) with
  ``table7_task_statistics.md`` (its pivot: categories × statistic · model),
  ``task_permutation_test.{csv,md}``.
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


def run_statistics(params: Params) -> pd.DataFrame:
    from threadpoolctl import threadpool_limits

    from dissect.association import load_associations
    from dissect.statistics import category_statistics
    from dissect.task_compare import task_statistics

    kw = statistics_kwargs(params)
    top = f"top{kw['k']}_mean"
    recorded = {"stats": params["stats"], "sp_model": None}
    with stage_record(params.work, "statistics", recorded) as rec:
        layers_pt = list(params["backbone"]["layers"])
        last = layers_pt[-1]
        n_stages = int(common.read_json(params, "train", "summary.json")["n_stages"])

        def one(model: str, layer: str) -> pd.DataFrame:
            assoc = load_associations(common.assoc_store(params, model), [layer])
            df = category_statistics(assoc, **kw)
            df.insert(0, "model", model)
            df.insert(1, "k", -1 if model == "pt" else k_value(model[1:], n_stages))
            return df

        # one Dask task per (model, layer): each reads its association array and reduces it;
        # BLAS single-threaded, the tasks are the parallelism
        tasks = [dask.delayed(one)(model, layer)
                 for model in common.model_names(params)
                 for layer in (layers_pt if model == "pt" else [last])]
        log.info("statistics: %d (model, layer) tasks", len(tasks))
        with common.scheduler(params) as client, threadpool_limits(limits=1, user_api="blas"):
            kw_compute = {} if client is not None else {"scheduler": "threads"}
            stats = pd.concat(dask.compute(*tasks, **kw_compute), ignore_index=True)

        with common.replacing(common.results(params, "tables", "statistics")) as out:
            write_statistics_tables(stats, out, top=top, last=last, kw=kw)

        sr = common.work(params, "scene", "assoc_sr.zarr")
        if sr.exists():
            sp = common.sp_model(params)
            recorded["sp_model"] = sp
            t7, tests = task_statistics(stats, load_associations(sr, [last]), sp, **kw)
            with common.replacing(common.results(params, "tables", "task")) as out:
                write_task_tables(t7, tests, out, kw=kw, sp=sp)
        elif (task := params.results / "tables" / "task").exists():
            # without the scene stage's sr associations there is no Table 7 for these
            # statistics: tables of an earlier run must not stay beside them
            log.warning("no %s (run the scene stage): removing the earlier %s", sr, task)
            shutil.rmtree(task)
        rec["rows"] = len(stats)
    return stats


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """The table with ``model`` replaced by its display name (``kall`` → ``all``)."""
    return df.assign(model=df["model"].map(common.model_label))


def write_statistics_tables(
    stats: pd.DataFrame, out: Path, *, top: str, last: str, kw: dict
) -> list[str]:
    """Write the statistics folder's tables into ``out`` (Table 2 and 3 pivots with captions,
    their excess pivots, the tidy table, the Fig. 4 improvement table). Returns the stems."""
    from dissect.statistics import improvement
    from dissect.tables import pivot_k, pivot_layers, stats_caption, write_table

    out.mkdir(parents=True, exist_ok=True)
    tidy = "category_statistics.csv"
    written = []

    def put(df: pd.DataFrame, name: str, caption: str | None = None) -> None:
        write_table(df, out / name, caption=caption)
        written.append(name)

    put(stats, "category_statistics")
    pt = stats[stats["model"] == "pt"]
    by_k = _labelled(stats[(stats["model"] != "pt") & (stats["layer"] == last)])
    for table, frame, pivot in (("table2", pt, lambda d, s, c: pivot_layers(d, s, cells=c)),
                                ("table3", by_k,
                                 lambda d, s, c: pivot_k(d, s, layer=last, cells=c))):  # fmt: skip
        for stat in (top, "count_above_T"):
            for cells, suffix in (("value", ""), ("excess", "_excess")):
                caption = stats_caption(frame, stat, cells=cells, n_null=kw["n_null"],
                                        n_boot=kw["n_boot"], tidy=tidy)  # fmt: skip
                put(pivot(frame, stat, cells).reset_index(), f"{table}_{stat}{suffix}", caption)
    put(improvement(by_k, stat=top), "fig4_improvement")
    return written


def write_task_tables(
    t7: pd.DataFrame, tests: pd.DataFrame, out: Path, *, kw: dict, sp: str
) -> None:
    """Table 7 into ``out``: the tidy CSV with its pivot as the Markdown, and the tests."""
    from dissect.tables import NULL_TEXT, pivot_models, write_table

    out.mkdir(parents=True, exist_ok=True)
    caption = (
        f"Cells: `value* (null mean)` of the top-{kw['k']} mean NSS and of the number of units "
        f"with NSS > T = {kw['threshold']:g} over the last trunk layer's units; pt = pretrained "
        f"trunk, sp = saliency readout {common.model_label(sp)}, sr = scene-recognition trunk "
        "(same stages tuned, same images); `*` = permutation p < 0.05 "
        f"({kw['n_null']} permutations, {NULL_TEXT.get(kw['null'], kw['null'])}). Every column "
        "(excess over the null and its interval, counts): `table7_task_statistics.csv`; "
        "the paired sign-flip test of |Δsp| vs |Δsr| over categories: "
        "`task_permutation_test.csv`."
    )
    write_table(t7, out / "table7_task_statistics", caption=caption,
                markdown=pivot_models(t7, models=["pt", "sp", "sr"]).reset_index())  # fmt: skip
    write_table(tests, out / "task_permutation_test")
