"""Stage ``statistics``: category statistics of the unit associations (He et al. §4.3) with a
label-permutation null and image-bootstrap CIs → Table 2 (pretrained, every analysed layer),
Table 3 (last trunk layer × k fine-tuned) and the Fig. 4 improvement table."""

from __future__ import annotations

import logging

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
        frames = []
        layers_pt = list(params["backbone"]["layers"])
        last = layers_pt[-1]
        n_stages = int(common.read_json(params, "train", "summary.json")["n_stages"])
        for model in common.model_names(params):
            path = common.assoc_store(params, model)
            layers = layers_pt if model == "pt" else [last]
            assoc = load_associations(path, layers)
            log.info("statistics of %s (%s)", model, ", ".join(assoc))
            df = category_statistics(assoc, **kw)
            df.insert(0, "model", model)
            df.insert(1, "k", -1 if model == "pt" else k_value(model[1:], n_stages))
            frames.append(df)
        stats = pd.concat(frames, ignore_index=True)
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
        rec["rows"] = len(stats)
    return stats
