"""Inner vs output saliency (He et al. 2019, §6; Eqs. 2–3), as library functions.

For a saliency readout and a set of held-out images with category-labelled salient regions:

- :func:`region_output_table`: per region, the NSS of the model's prediction and of the
  ground-truth fixation density at the fixations inside the region (the summands of Eqs. 2–3);
  per image, the prediction's NSS, CC and AUC-Judd against all of the image's fixations.
- :func:`model_tables` / :func:`inner_output_tables`: per model and category
  ``OS_c = mean_{r ∈ c} NSS(pred, F_r)`` (Eq. 2) and ``OD_c = mean_{r ∈ c} |NSS(pred, F_r) −
  NSS(GT, F_r)|`` (Eq. 3); inner saliency = top-k mean over the last trunk layer's units of the
  per-unit category mean of Eq. 1 (the Table 2/3 statistic); Spearman r_s across categories
  between inner and output saliency, raw (the study's definition) and null-corrected (see
  :data:`SPEARMAN_NOTE`); one-way ANOVA of the per-region OD with the category cluster (head vs
  rest) as factor; one-way ANOVA + Tukey HSD across categories of the top-k units' NSS.

Predictions are compared at the image's own size after bilinear upsampling
(``interpolate(mode="bilinear", align_corners=False)``); region NSS uses the exact
no-upsampling form of :func:`dissect.metrics.region_nss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from dissect.errors import DataError

__all__ = [
    "REGION_COLUMNS",
    "SPEARMAN_NOTE",
    "InnerOutputTables",
    "inner_output_tables",
    "inner_saliency",
    "model_tables",
    "null_of_topk",
    "predict_map",
    "readout_performance",
    "region_output_table",
    "topk_stat",
]

#: columns of the per-region table of :func:`region_output_table`
REGION_COLUMNS: tuple[str, ...] = (
    "model", "image", "region_id", "category", "nss_pred", "nss_gt",
)
#: columns of the per-image performance table of :func:`region_output_table`
PERF_COLUMNS: tuple[str, ...] = ("model", "image", "nss", "cc", "auc_judd")

SPEARMAN_NOTE = (
    "Two rank correlations between inner and output saliency are reported. `r_s` follows the "
    "study's definition (He et al. §6): inner saliency is the raw top-k mean of the last trunk "
    "layer (the Table 2/3 statistic) and output saliency is OS_c (Eq. 2). The top-k mean picks "
    "the best k of several hundred units, so it is inflated by selection alone, and by more for "
    "categories with few regions, whose per-unit means are noisier: ranking categories by it "
    "partly ranks them by how few regions they have, not by how strongly units respond. "
    "`r_s_excess` uses the null-corrected inner saliency instead — the top-k mean minus the mean "
    "of the same statistic under the category-label permutation null (same model, layer and "
    "category, from the statistics stage) — which removes the inflation expected for each "
    "category's size and measures inner saliency beyond chance. `r_s_inner_vs_size` is the rank "
    "correlation of the raw inner saliency with the category's number of regions: where it is "
    "strongly negative and the two r_s disagree, the raw correlation is dominated by category "
    "size, and `r_s_excess` is the comparison of inner and output saliency proper."
)
"""Explanatory text for the report: which Spearman r_s matches the study and what the
null-corrected one means."""


def topk_stat(k: int) -> str:
    """Name of the top-k mean statistic in the statistics stage's tidy table."""
    return f"top{int(k)}_mean"


# --------------------------------------------------------------------------- per region / image


def predict_map(model: Any, image: np.ndarray) -> np.ndarray:
    """A readout's prediction for one uint8 (H, W, 3) image at its output resolution: ``(h, w)``
    float64 (``model(model.backbone.preprocess(image))[0]`` without gradients)."""
    import torch

    with torch.no_grad():
        return model(model.backbone.preprocess(image))[0].double().numpy()


def _upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to ``size`` (``align_corners=False``, no antialias), float64."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def region_output_table(
    models: Mapping[str, Any],
    dataset: Any,
    regions: Any,
    ids: Sequence[str],
    *,
    drop_first: bool,
    gt: Mapping[str, float],
    progress: bool = False,
    desc: str = "predict",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-region and per-image outputs of each readout (the inputs of He et al. Eqs. 2–3).

    ``models``: ``{name: SaliencyReadout}`` (anything :func:`predict_map` accepts);
    ``dataset``: a :class:`dissect.data.FixationDataset`; ``regions``: a
    :class:`dissect.data.RegionSet`; ``ids``: the images; ``drop_first``: drop each observer's
    first fixation; ``gt``: ``{"sigma_deg", "px_per_degree"}`` of the ground-truth density
    (:func:`dissect.data.density_map`).

    Returns ``(regions, performance)``:

    - ``regions`` (:data:`REGION_COLUMNS`): one row per (model, region) with
      ``nss_pred`` = NSS of the prediction, bilinearly upsampled to the image size, at the
      fixations inside the region (Eq. 1 applied to the output map; exact,
      :func:`dissect.metrics.region_nss`), and ``nss_gt`` = the same for the GT density.
      NaN where the region has no fixation or the map is constant.
    - ``performance`` (:data:`PERF_COLUMNS`): per (model, image) NSS and AUC-Judd of the
      upsampled prediction against the image's fixations and CC against the GT density.

    Images are the outer loop: each image, its fixations and GT density are prepared once for
    all models.
    """
    from tqdm.auto import tqdm

    from dissect.association import image_regions, region_fixations
    from dissect.data import density_map
    from dissect.metrics import auc_judd, cc, nss, region_nss

    rows: list[pd.DataFrame] = []
    perf: list[dict[str, Any]] = []
    for model in models.values():
        model.eval()
    for image_id in tqdm(ids, desc=desc, unit="image", disable=not progress):
        stim = dataset[image_id]
        size = (stim.height, stim.width)
        points, point_regions = region_fixations(dataset, regions, image_id,
                                                 drop_first=drop_first)
        image = dataset.load_image(image_id)
        density = density_map(points, size, sigma_deg=float(gt["sigma_deg"]),
                              px_per_degree=float(gt["px_per_degree"]))
        reg = image_regions(regions, image_id)
        rid = reg["region"].astype(np.int64).tolist()
        g = (region_nss(density[None], size, points, point_regions, regions=rid)[0]
             if rid else None)
        for name, model in models.items():
            pred = predict_map(model, image)
            if rid:  # region_nss upsamples the (h, w) prediction exactly
                p = region_nss(pred[None], size, points, point_regions, regions=rid)[0]
                rows.append(pd.DataFrame({
                    "model": name, "image": str(image_id), "region_id": rid,
                    "category": reg["category"].astype(str).to_numpy(),
                    "nss_pred": p, "nss_gt": g,
                }))
            up = _upsample(pred, size)
            perf.append({"model": name, "image": str(image_id), "nss": nss(up, points),
                         "cc": cc(up, density), "auc_judd": auc_judd(up, points)})
    table = (pd.concat(rows, ignore_index=True) if rows
             else pd.DataFrame(columns=list(REGION_COLUMNS)))
    return table, pd.DataFrame(perf, columns=list(PERF_COLUMNS))


def readout_performance(perf: pd.DataFrame) -> pd.DataFrame:
    """Mean over images of each model's NSS, CC and AUC-Judd (``model`` in first-seen order)."""
    return (perf.groupby("model", sort=False)[["nss", "cc", "auc_judd"]].mean()
            .reset_index())


# --------------------------------------------------------------------------- inner saliency


def inner_saliency(assoc: xr.DataArray, k: int) -> tuple[pd.Series, xr.DataArray]:
    """Inner saliency per category (He et al. §6; the Table 2/3 statistic): the mean of the
    ``k`` largest per-unit category means ``m[u, c]`` of Eq. 1 over the layer's units
    (:func:`dissect.statistics.category_means`, :func:`dissect.statistics.topk_mean`).

    ``assoc``: the ``(unit, region)`` association array of one layer. Returns the Series
    (index: category, display order) and ``m`` (``(unit, category)``), which the unit ANOVA
    reuses."""
    from dissect.statistics import category_means, topk_mean

    m, _ = category_means(assoc)
    values = topk_mean(np.asarray(m.values, dtype=np.float64), int(k))[0]
    return pd.Series(values, index=[str(c) for c in m["category"].values], name="inner"), m


def null_of_topk(stats: pd.DataFrame, model: str, layer: str, k: int) -> pd.DataFrame:
    """The rows of the statistics stage's tidy table (``category_statistics.csv``: columns
    ``model, layer, category, stat, value, null_mean, …``) for the top-k mean of one model's
    layer: a frame indexed by category with ``value`` and ``null_mean`` (the mean of the same
    statistic over the category-label permutations). No row → :class:`DataError`."""
    need = {"model", "layer", "category", "stat", "value", "null_mean"}
    if not need <= set(stats.columns):
        raise DataError("category statistics", f"table lacks column(s) {sorted(need - set(stats))}")
    sel = stats[(stats["model"].astype(str) == str(model)) & (stats["layer"].astype(str) == layer)
                & (stats["stat"].astype(str) == topk_stat(k))]
    if sel.empty:
        raise DataError("category statistics",
                        f"no {topk_stat(k)!r} rows for model {model!r}, layer {layer!r}: "
                        "rerun the statistics stage with the same stats.top_k")
    if sel["category"].duplicated().any():
        raise DataError("category statistics",
                        f"duplicate categories for model {model!r}, layer {layer!r}")
    return sel.set_index(sel["category"].astype(str))[["value", "null_mean"]].astype(np.float64)


def _excess(inner: pd.Series, null: pd.DataFrame, model: str) -> tuple[pd.Series, pd.Series]:
    """Null mean and null-corrected inner saliency per category, after checking that the
    statistics table's top-k mean is the one computed here (else the table is stale)."""
    missing = sorted(set(inner.index) - set(null.index))
    if missing:
        raise DataError("category statistics",
                        f"model {model!r}: no null for categories {missing}")
    ref = null.loc[inner.index]
    both = np.isfinite(inner.to_numpy()) & np.isfinite(ref["value"].to_numpy())
    ours, theirs = inner.to_numpy(), ref["value"].to_numpy()
    diff = np.abs(ours[both] - theirs[both])
    tol = 1e-9 * np.maximum(1.0, np.abs(ours[both]))
    if (diff > tol).any() or (np.isfinite(ours) != np.isfinite(theirs)).any():
        raise DataError("category statistics",
                        f"model {model!r}: the table's top-k mean differs from the associations' "
                        f"(max |Δ| {diff.max() if diff.size else np.nan:.3g}); the statistics "
                        "table is stale: rerun the statistics stage")
    null_mean = ref["null_mean"].rename("inner_null")
    return null_mean, (inner - null_mean).rename("inner_excess")


# --------------------------------------------------------------------------- per model


class InnerOutputTables(NamedTuple):
    """The tables of the inner-output stage (all tidy, one row per model and item)."""

    #: model, category, os, n, n_regions, od, inner, inner_null, inner_excess
    per_category: pd.DataFrame
    #: model, r_s, p_value, n, r_s_excess, p_value_excess, n_excess, r_s_inner_vs_size
    spearman: pd.DataFrame
    anova: pd.DataFrame  # model, term, df, sum_sq, F, p_value, eta_sq, n, test
    tukey: pd.DataFrame  # model, group1, group2, meandiff, p_adj, ci_low, ci_high, reject


def model_tables(
    region_rows: pd.DataFrame,
    assoc: xr.DataArray,
    null: pd.DataFrame,
    *,
    model: str,
    k: int,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """§6 for one model: ``(per_category, spearman_row, anova, tukey)``.

    ``region_rows``: this model's rows of :func:`region_output_table`; ``assoc``: the
    association array of the model's last trunk layer; ``null``: :func:`null_of_topk` for that
    model and layer.

    - per category: ``os`` (Eq. 2, :func:`dissect.statistics.output_saliency`; ``n`` regions
      used, ``n_regions`` all), ``od`` (Eq. 3, :func:`dissect.statistics.output_difference`),
      ``inner`` (:func:`inner_saliency`), ``inner_null`` (its permutation-null mean) and
      ``inner_excess = inner − inner_null``;
    - Spearman across categories (:func:`dissect.statistics.inner_output_spearman`) of OS_c with
      ``inner`` (``r_s``, ``p_value``, ``n``) and with ``inner_excess`` (``r_s_excess``,
      ``p_value_excess``, ``n_excess``); see :data:`SPEARMAN_NOTE`;
    - ANOVA of the per-region OD with the cluster (head vs rest) as factor (``test =
      "od_by_cluster"``) and across categories of the top-k units' NSS (``test =
      "unit_anova"``), with the Tukey HSD table of the latter
      (:func:`dissect.statistics.od_anova`, :func:`dissect.statistics.unit_anova_tukey`).
    """
    from dissect.statistics import (
        inner_output_spearman,
        od_anova,
        output_difference,
        output_saliency,
        region_output_difference,
        unit_anova_tukey,
    )

    pred = region_rows["nss_pred"].to_numpy(dtype=np.float64)
    gt = region_rows["nss_gt"].to_numpy(dtype=np.float64)
    cats = region_rows["category"].astype(str).to_numpy()
    os_c = output_saliency(pred, cats)
    od_c = output_difference(pred, gt, cats)
    inner, m = inner_saliency(assoc, k)
    inner_null, inner_excess = _excess(inner, null, model)

    table = os_c.merge(od_c[["category", "od"]], on="category")
    for col in (inner, inner_null, inner_excess):
        table[col.name] = table["category"].map(col)
    table.insert(0, "model", model)

    os_s = os_c.set_index("category")["os"]
    raw = inner_output_spearman(inner, os_s)
    exc = inner_output_spearman(inner_excess, os_s)
    # how much the raw statistic ranks categories by their size (number of regions)
    size = inner_output_spearman(inner, table.set_index("category")["n_regions"].astype(float))
    spear = {"model": model, "r_s": raw.r_s, "p_value": raw.p_value, "n": raw.n,
             "r_s_excess": exc.r_s, "p_value_excess": exc.p_value, "n_excess": exc.n,
             "r_s_inner_vs_size": size.r_s}

    reg_od = region_output_difference(pred, gt, cats)
    a = od_anova(reg_od.dropna(subset=["od"])).assign(test="od_by_cluster")
    ua, tk = unit_anova_tukey(m, k=int(k))
    anova = pd.concat([a, ua.assign(test="unit_anova")], ignore_index=True)
    anova.insert(0, "model", model)
    tk.insert(0, "model", model)
    return table, spear, anova, tk


def inner_output_tables(
    region_table: pd.DataFrame,
    assoc_by_model: Mapping[str, xr.DataArray],
    stats: pd.DataFrame,
    *,
    layer: str,
    k: int,
) -> InnerOutputTables:
    """§6 for every model of ``assoc_by_model`` (``{model: association array of its last trunk
    layer}``, in output order): :func:`model_tables` with the null of :func:`null_of_topk`
    taken from ``stats`` (the statistics stage's ``category_statistics`` table, so that the
    tables' excess and this one use the same null), concatenated."""
    per_cat, spear, anovas, tukeys = [], [], [], []
    for model, assoc in assoc_by_model.items():
        rows = region_table[region_table["model"].astype(str) == str(model)]
        if rows.empty:
            raise DataError("inner_output_tables", f"no region rows for model {model!r}")
        t, s, a, tk = model_tables(rows, assoc, null_of_topk(stats, model, layer, k),
                                   model=str(model), k=k)
        per_cat.append(t)
        spear.append(s)
        anovas.append(a)
        tukeys.append(tk)
    if not per_cat:
        raise DataError("inner_output_tables", "no models given")
    return InnerOutputTables(
        pd.concat(per_cat, ignore_index=True), pd.DataFrame(spear),
        pd.concat(anovas, ignore_index=True), pd.concat(tukeys, ignore_index=True),
    )
