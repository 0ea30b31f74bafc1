"""Stage ``inner-output``: inner vs output saliency (He et al. §6, Eqs. 2–3).

Thin glue around :mod:`dissect.inner_output`: for every readout (setup I and each k of setup II)
on the held-out images, OS_c / OD_c per category, inner saliency (top-k mean of the last trunk
layer) raw and null-corrected, Spearman r_s of both against OS_c, the ANOVAs and Tukey HSD, and
each readout's held-out NSS / CC / AUC-Judd.

Reads the statistics stage's ``results/tables/statistics/category_statistics.csv`` for the
permutation-null mean of the top-k statistic (the same null the tables report). Writes
``results/tables/inner_output/`` (through :func:`common.replacing`) and
``work/inner_output/region_output.csv``.
"""

from __future__ import annotations

import logging

import pandas as pd

from dissect.config import Params
from dissect.errors import DataError
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.inner_output")


def run_inner_output(params: Params) -> None:
    from dissect.association import load_associations
    from dissect.inner_output import inner_output_tables, readout_performance, region_output_table
    from dissect.readout import load_readout
    from dissect.tables import write_table

    k_top = int(params["stats"]["top_k"])
    last = params["backbone"]["layers"][-1]
    label = common.model_label
    with stage_record(params.work, "inner-output", {"gt": params["gt"], "top_k": k_top}) as rec:
        stats_path = common.results(params, "tables", "statistics", "category_statistics.csv")
        if not stats_path.is_file():
            raise DataError(stats_path, "missing: run the statistics stage first")
        stats = pd.read_csv(stats_path)
        stats["model"] = stats["model"].astype(str).map(label)
        dataset, regions = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        base = common.backbone(params)
        names = common.model_names(params)[1:]
        models = {label(name): load_readout(common.work(params, "readouts", name, "model.pt"),
                                            base)[0]
                  for name in names}
        region_table, perf = region_output_table(
            models, dataset, regions, ids, drop_first=bool(params["data"]["drop_first"]),
            gt=params["gt"], progress=common.progress(params))
        assoc = {label(name): load_associations(common.assoc_store(params, name), [last])[last]
                 for name in names}
        tables = inner_output_tables(region_table, assoc, stats, layer=last, k=k_top)
        with common.replacing(common.results(params, "tables", "inner_output")) as out:
            write_table(tables.per_category, out / "inner_output")
            write_table(tables.spearman, out / "inner_output_spearman")
            write_table(tables.anova, out / "anova")
            write_table(tables.tukey, out / "tukey_hsd")
            write_table(readout_performance(perf), out / "readout_performance")
        region_table.to_csv(common.work(params, "inner_output", "region_output.csv"), index=False)
        rec["spearman"] = tables.spearman.to_dict(orient="records")
