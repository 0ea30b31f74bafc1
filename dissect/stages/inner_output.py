"""Stage ``inner-output``: inner vs output saliency (He et al. §6, Eqs. 2–3).

Thin glue around :mod:`dissect.inner_output`: for every readout (setup I and each k of setup II)
on the held-out images, OS_c / OD_c per category, inner saliency (top-k mean of the last trunk
layer) raw and null-corrected, Spearman r_s of both against OS_c, the ANOVAs and Tukey HSD, and
each readout's held-out NSS / CC / AUC-Judd.

Reads the statistics stage's ``results/tables/statistics/category_statistics.csv`` for the
permutation-null mean of the top-k statistic (the same null the tables report). Runs once per
training seed (``train.seeds``); every table has a ``seed`` column and a ``*_seeds`` summary
says how many seeds make each decision. Writes
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
    """§6 for every readout of every training seed; every table gets a ``seed`` column, and the
    decisions (Spearman p < 0.05, ANOVA p < 0.05, Tukey rejections) are summarised over seeds
    (``*_seeds`` tables: how many seeds make each decision)."""
    from dissect.association import load_associations
    from dissect.inner_output import inner_output_tables, readout_performance, region_output_table
    from dissect.models.base import load_model
    from dissect.seeds import agreement, spread
    from dissect.tables import columns_first, write_table

    k_top = int(params["stats"]["top_k"])
    last = common.layer_names(params)[-1]
    label = common.model_label
    seeds = common.seeds(params)
    recorded = {"gt": params["gt"], "top_k": k_top, "train.seeds": seeds}
    with stage_record(params.work, "inner-output", recorded) as rec:
        stats_path = common.results(params, "tables", "statistics", "category_statistics.csv")
        if not stats_path.is_file():
            raise DataError(stats_path, "missing: run the statistics stage first")
        stats = pd.read_csv(stats_path)
        if "seed" not in stats:
            raise DataError(stats_path, "no seed column: rerun the statistics stage")
        stats["model"] = stats["model"].astype(str).map(label)
        dataset, regions = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        base = common.backbone(params)
        names = common.model_names(params)[1:]
        parts: dict[str, list[pd.DataFrame]] = {}
        for seed in seeds:
            log.info("inner vs output saliency, training seed %d", seed)
            models = {}  # the readouts' nn.Modules, built through the model registry
            for name in names:
                path = common.readout_path(params, name, seed)
                models[label(name)] = load_model("readout", checkpoint=path, backbone=base).readout
            region_table, perf = region_output_table(
                models, dataset, regions, ids, drop_first=bool(params["data"]["drop_first"]),
                gt=params["gt"], progress=common.progress(params),
                desc=f"readout maps, seed {seed}")
            assoc = {label(name): load_associations(common.assoc_store(params, name, seed),
                                                    [last])[last]
                     for name in names}
            seed_stats = stats[(stats["model"] == "pt") | (stats["seed"] == seed)]
            tables = inner_output_tables(region_table, assoc, seed_stats, layer=last, k=k_top)
            for name, df in (("inner_output", tables.per_category),
                             ("inner_output_spearman", tables.spearman),
                             ("anova", tables.anova), ("tukey_hsd", tables.tukey),
                             ("readout_performance", readout_performance(perf)),
                             ("region_output", region_table)):
                parts.setdefault(name, []).append(df.assign(seed=seed))
        out_tables = {name: columns_first(pd.concat(frames, ignore_index=True), ["seed"])
                      for name, frames in parts.items()}
        region_table = out_tables.pop("region_output")
        spear = out_tables["inner_output_spearman"]
        anova = out_tables["anova"]
        tukey = out_tables["tukey_hsd"]
        summaries = {
            "inner_output_spearman_seeds": spread(
                spear, ["model"], ["r_s", "r_s_excess", "r_s_inner_vs_size"]).merge(
                agreement(spear.assign(significant=spear["p_value"] < 0.05), ["model"],
                          "significant")[["model", "n_significant", "seeds_significant"]],
                on="model").merge(
                agreement(spear.assign(excess_significant=spear["p_value_excess"] < 0.05),
                          ["model"], "excess_significant")[
                    ["model", "n_excess_significant", "seeds_excess_significant"]],
                on="model"),
            "anova_seeds": anova_agreement(anova),
            "tukey_hsd_seeds": agreement(tukey.assign(reject=tukey["reject"].astype(bool)),
                                         ["model", "group1", "group2"], "reject"),
            "readout_performance_seeds": spread(out_tables["readout_performance"], ["model"],
                                                ["nss", "cc", "auc_judd"]),
        }
        with common.replacing(common.results(params, "tables", "inner_output")) as out:
            for name, df in out_tables.items():
                write_table(df, out / name)
            for name, df in summaries.items():
                write_table(df, out / name, caption=SEED_CAPTIONS.get(name))
        region_table.to_csv(common.work(params, "inner_output", "region_output.csv"), index=False)
        tk = summaries["tukey_hsd_seeds"]
        rec["spearman"] = summaries["inner_output_spearman_seeds"].to_dict(orient="records")
        rec["tukey_pairs_mixed"] = int((tk["agreement"] == "mixed").sum())


SEED_CAPTIONS = {
    "inner_output_spearman_seeds": (
        "Per readout, over the training seeds: Spearman r_s of inner (top-k mean) vs output "
        "saliency (and of the null-corrected inner saliency, `r_s_excess`), mean ± sd and min–"
        "max, and in how many seeds p < 0.05. Per seed: `inner_output_spearman.csv`."),
    "anova_seeds": (
        "Seeds in which each ANOVA term is significant (p < 0.05). Per seed: `anova.csv`."),
    "tukey_hsd_seeds": (
        "Tukey HSD decisions per category pair, over the training seeds: `agreement` = all / "
        "none / mixed (the seeds disagree). Per seed: `tukey_hsd.csv`."),
    "readout_performance_seeds": (
        "Held-out NSS / CC / AUC-Judd of each readout over the training seeds (mean ± sd, "
        "min–max). Per seed: `readout_performance.csv`."),
}


def anova_agreement(anova: pd.DataFrame) -> pd.DataFrame:
    """Per (model, test, term) of the per-seed ANOVA tables (residual rows are not tests): in
    how many seeds p < 0.05, and in how many the test was undefined (``n_undefined``: NaN p,
    counted as not significant, never dropped)."""
    from dissect.seeds import agreement

    tests = anova[anova["term"].astype(str) != "Residual"]
    out = agreement(tests.assign(significant=tests["p_value"] < 0.05),
                    ["model", "test", "term"], "significant")
    undefined = tests.assign(u=tests["p_value"].isna()).groupby(
        ["model", "test", "term"], sort=False)["u"].sum().rename("n_undefined").reset_index()
    return out.merge(undefined, on=["model", "test", "term"], how="left")

