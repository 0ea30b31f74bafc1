"""Stage ``associate``: unit × region NSS (He et al. Eq. 1) for every cached model, stored as
Zarr (``work/assoc/pt.zarr``, ``work/assoc/s<seed>/<model>.zarr``) plus a tidy CSV of each
unit's per-category mean."""

from __future__ import annotations

import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.associate")


def unit_means_table(assoc: dict) -> pd.DataFrame:
    """Tidy ``layer, unit, category, mean_nss, n_defined`` from ``{layer: DataArray}``."""
    from dissect.statistics import category_means

    frames = []
    for layer, da in assoc.items():
        m, n = category_means(da)
        df = m.to_dataframe(name="mean_nss").reset_index()
        df["n_defined"] = n.values.ravel()
        df.insert(0, "layer", layer)
        frames.append(df[["layer", "unit", "category", "mean_nss", "n_defined"]])
    return pd.concat(frames, ignore_index=True)


def run_associate(params: Params) -> None:
    """Associations of the pretrained trunk (also setup I's units) and of every fine-tuned trunk
    of every training seed (``assoc/s<seed>/k<k>.zarr``)."""
    from dissect.association import associate, save_associations

    d = params["data"]
    with stage_record(params.work, "associate", {"data.drop_first": d["drop_first"]}) as rec:
        dataset, regions = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        runs = [("pt", None)] + [(m, seed) for seed in common.seeds(params)
                                 for m in common.model_names(params) if common.seeded(m)]
        with common.scheduler(params) as client:
            for n, (model, seed) in enumerate(runs, 1):
                store = common.act_store(params, model, seed)
                which = model if seed is None else f"{model} seed {seed}"
                log.info("associations of %s (%d/%d)", which, n, len(runs))
                assoc = associate(store, dataset, regions, image_ids=ids,
                                  drop_first=bool(d["drop_first"]),
                                  chunk_images=int(params["dask"]["chunk_images"]),
                                  scheduler=client, progress=common.progress(params),
                                  desc=f"associate {which} ({n}/{len(runs)})")
                out = common.assoc_store(params, model, seed)
                save_associations(assoc, out)
                unit_means_table(assoc).to_csv(out.with_name(f"{out.stem}_unit_means.csv"),
                                               index=False)
                rec[str(out.relative_to(params.work))] = {
                    layer: list(da.shape) for layer, da in assoc.items()}
