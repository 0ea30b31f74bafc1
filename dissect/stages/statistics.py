"""Stage ``statistics``: category statistics of the unit associations (He et al. §4.3) with a
label-permutation null and image-bootstrap CIs → Table 2 (pretrained, every analysed layer),
Table 3 (last trunk layer × k fine-tuned), the Fig. 4 improvement table, and Table 7 (pt / sp /
sr, with the paired permutation test) once the scene stage has associated the sr trunk."""

from __future__ import annotations

import logging

import dask
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.statistics")


def k_value(k, n_stages: int) -> int:
    """k as a number: ``"all"`` = every trunk stage tuned."""
    return n_stages if str(k) == "all" else int(k)


def run_statistics(params: Params) -> pd.DataFrame:
    from dissect.association import load_associations
    from dissect.statistics import category_statistics, improvement
    from dissect.tables import pivot_k, pivot_layers, write_table

    s = params["stats"]
    kw = dict(k=int(s["top_k"]), threshold=float(s["threshold"]), n_null=int(s["n_null"]),
              n_boot=int(s["n_boot"]), seed=int(s["seed"]))
    top = f"top{int(s['top_k'])}_mean"
    with stage_record(params.work, "statistics", {"stats": s}) as rec:
        layers_pt = list(params["backbone"]["layers"])
        last = layers_pt[-1]
        n_stages = int(common.read_json(params, "train", "summary.json")["n_stages"])

        def one(model: str, layer: str) -> pd.DataFrame:
            assoc = load_associations(common.assoc_store(params, model), [layer])
            df = category_statistics(assoc, **kw)
            df.insert(0, "model", model)
            df.insert(1, "k", -1 if model == "pt" else k_value(model[1:], n_stages))
            return df

        # one Dask task per (model, layer): each reads its association array and reduces it
        tasks = [dask.delayed(one)(model, layer)
                 for model in common.model_names(params)
                 for layer in (layers_pt if model == "pt" else [last])]
        log.info("statistics: %d (model, layer) tasks", len(tasks))
        with common.scheduler(params) as client:
            kw_compute = {} if client is not None else {"scheduler": "threads"}
            stats = pd.concat(dask.compute(*tasks, **kw_compute), ignore_index=True)
        out = common.results(params, "tables", "statistics", "category_statistics")
        write_table(stats, out)

        pt = stats[stats["model"] == "pt"]
        for stat in (top, "count_above_T"):
            write_table(pivot_layers(pt, stat).reset_index(),
                        common.results(params, "tables", "statistics", f"table2_{stat}"))
        # Table 3 / Fig. 4: the last trunk layer, setup I (k=0) and setup II (k ≥ 1)
        by_k = stats[(stats["model"] != "pt") & (stats["layer"] == last)]
        for stat in (top, "count_above_T"):
            write_table(pivot_k(by_k, stat, layer=last).reset_index(),
                        common.results(params, "tables", "statistics", f"table3_{stat}"))
        imp = improvement(by_k, stat=top)
        write_table(imp, common.results(params, "tables", "statistics", "fig4_improvement"))
        sr = common.work(params, "scene", "assoc_sr.zarr")
        if sr.exists():
            task_statistics(params, stats, sr, kw)
        rec["rows"] = len(stats)
    return stats


def task_statistics(params: Params, stats: pd.DataFrame, sr_store, kw: dict) -> pd.DataFrame:
    """Table 7 (He et al. §8): the last trunk layer of pt, sp (saliency, k = 1) and sr (scene
    recognition, same stage tuned) per category, and a paired sign-flip permutation test over
    categories of |sp − pt| vs |sr − pt| for both statistics."""
    from dissect.association import load_associations
    from dissect.statistics import category_statistics
    from dissect.tables import write_table
    from dissect.task_compare import paired_deltas, paired_permutation_test

    last = params["backbone"]["layers"][-1]
    pt = stats[(stats["model"] == "pt") & (stats["layer"] == last)].assign(model="pt")
    sp = stats[(stats["model"] == "k1")].assign(model="sp")
    sr = category_statistics(load_associations(sr_store, [last]), **kw)
    sr.insert(0, "model", "sr")
    t7 = pd.concat([pt, sp, sr], ignore_index=True).drop(columns="k")
    out = lambda name: common.results(params, "tables", "task", name)  # noqa: E731
    write_table(t7, out("table7_task_statistics"))
    tests = []
    for stat in t7["stat"].unique():
        deltas = paired_deltas(t7[t7["stat"] == stat], "category")
        t = paired_permutation_test(deltas["sp"], deltas["sr"], seed=int(kw["seed"]))
        t.insert(0, "stat", stat)
        tests.append(t)
    write_table(pd.concat(tests, ignore_index=True), out("task_permutation_test"))
    return t7
