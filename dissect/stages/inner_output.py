"""Stage ``inner-output``: inner vs output saliency (He et al. §6).

For every readout (setup I and each k of setup II) on the held-out images:
- OS_c (Eq. 2): mean over regions of c of the NSS of the model's prediction at the fixations
  inside the region; OD_c (Eq. 3): mean over regions of c of |NSS(pred) − NSS(GT)|, with GT the
  blurred fixation density (σ from ``gt``);
- Spearman r_s across categories between inner saliency (top-k mean of the last trunk layer)
  and OS_c; ANOVA of per-region OD with category cluster (head vs rest) as factor; one-way
  ANOVA + Tukey HSD across categories of the top-k units' NSS.
Also each model's held-out NSS / CC / AUC-Judd against the fixations (its plain performance).
"""

from __future__ import annotations

import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.inner_output")


def region_output_table(models: dict, dataset, regions, ids, *, drop_first: bool, gt: dict,
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For every readout in ``models`` ({name: SaliencyReadout}): per region, the NSS of the
    prediction and of the GT density at the region's fixations; per image, the prediction's
    NSS, CC and AUC-Judd against all the image's fixations. Images are the outer loop, so the
    image, its fixations and its GT density are prepared once for all models."""
    import torch
    from tqdm.auto import tqdm

    from dissect.association import image_regions, region_fixations
    from dissect.data import density_map
    from dissect.metrics import auc_judd, cc, nss, region_nss

    rows, perf = [], []
    for model in models.values():
        model.eval()
    for image_id in tqdm(ids, desc="predict", disable=not progress):
        stim = dataset[image_id]
        size = (stim.height, stim.width)
        points, point_regions = region_fixations(dataset, regions, image_id, drop_first=drop_first)
        image = dataset.load_image(image_id)
        density = density_map(points, size, sigma_deg=gt["sigma_deg"],
                              px_per_degree=gt["px_per_degree"])
        reg = image_regions(regions, image_id)
        rid = reg["region"].tolist()
        g = region_nss(density[None], size, points, point_regions, regions=rid)[0] if rid else None
        for name, model in models.items():
            with torch.no_grad():
                pred = model(model.backbone.preprocess(image))[0].double().numpy()  # (h, w)
            if rid:  # region_nss upsamples the (h, w) prediction exactly
                p = region_nss(pred[None], size, points, point_regions, regions=rid)[0]
                rows.append(pd.DataFrame({"model": name, "image": image_id, "region_id": rid,
                                          "category": reg["category"].to_numpy(),
                                          "nss_pred": p, "nss_gt": g}))
            up = torch.nn.functional.interpolate(torch.from_numpy(pred)[None, None], size=size,
                                                 mode="bilinear",
                                                 align_corners=False)[0, 0].numpy()
            perf.append({"model": name, "image": image_id, "nss": nss(up, points),
                         "cc": cc(up, density), "auc_judd": auc_judd(up, points)})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(perf)


def run_inner_output(params: Params) -> None:
    from dissect.association import load_associations
    from dissect.readout import load_readout
    from dissect.statistics import (
        category_means,
        inner_output_spearman,
        od_anova,
        output_difference,
        output_saliency,
        region_output_difference,
        topk_mean,
        unit_anova_tukey,
    )
    from dissect.tables import write_table

    k_top = int(params["stats"]["top_k"])
    last = params["backbone"]["layers"][-1]
    with stage_record(params.work, "inner-output", {"gt": params["gt"], "top_k": k_top}) as rec:
        dataset, regions = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        base = common.backbone(params)
        per_cat, spear, anovas, tukeys = [], [], [], []
        names = common.model_names(params)[1:]
        models = {name: load_readout(common.work(params, "readouts", name, "model.pt"), base)[0]
                  for name in names}
        all_regions, perf = region_output_table(
            models, dataset, regions, ids, drop_first=bool(params["data"]["drop_first"]),
            gt=params["gt"], progress=common.progress(params))
        for model_name in names:
            reg = all_regions[all_regions["model"] == model_name]
            cats = reg["category"].to_numpy()
            os_c = output_saliency(reg["nss_pred"].to_numpy(), cats)
            od_c = output_difference(reg["nss_pred"].to_numpy(), reg["nss_gt"].to_numpy(), cats)
            reg_od = region_output_difference(reg["nss_pred"].to_numpy(),
                                              reg["nss_gt"].to_numpy(), cats)
            assoc = load_associations(
                common.assoc_store(params, model_name), [last]
            )[last]
            m, _ = category_means(assoc)
            inner = pd.Series(topk_mean(m.values, k_top)[0],
                              index=[str(c) for c in m["category"].values])
            table = os_c.merge(od_c[["category", "od"]], on="category")
            table["inner"] = table["category"].map(inner)
            table.insert(0, "model", model_name)
            per_cat.append(table)
            sp = inner_output_spearman(inner, os_c.set_index("category")["os"])
            spear.append({"model": model_name, "r_s": sp.r_s, "p_value": sp.p_value, "n": sp.n})
            a = od_anova(reg_od.dropna(subset=["od"]))
            a.insert(0, "model", model_name)
            anovas.append(a.assign(test="od_by_cluster"))
            ua, tk = unit_anova_tukey(m, k=k_top)
            ua.insert(0, "model", model_name)
            tk.insert(0, "model", model_name)
            anovas.append(ua.assign(test="unit_anova"))
            tukeys.append(tk)
        res = lambda name: common.results(params, "tables", "inner_output", name)  # noqa: E731
        write_table(pd.concat(per_cat, ignore_index=True), res("inner_output"))
        write_table(pd.DataFrame(spear), res("inner_output_spearman"))
        write_table(pd.concat(anovas, ignore_index=True), res("anova"))
        write_table(pd.concat(tukeys, ignore_index=True), res("tukey_hsd"))
        summary = perf.groupby("model", sort=False)[["nss", "cc", "auc_judd"]].mean()
        write_table(summary.reset_index(), res("readout_performance"))
        all_regions.to_csv(
            common.work(params, "inner_output", "region_output.csv"), index=False)
        rec["spearman"] = spear
