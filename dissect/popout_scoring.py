"""Pop-out scoring (He et al. 2019, §7; Tables 4–6) with NMM (Eq. 4).

``NMM = mean_{p ∈ mask} (S(p) − µ(S)) / σ(S)``: the mean inside the target mask of the map
standardised by its own mean and population std over the whole array (the NSS of the mask,
:func:`dissect.metrics.nmm`). Maps at feature resolution are compared at the array's size after
exact bilinear upsampling (``interpolate(mode="bilinear", align_corners=False)``,
:func:`dissect.metrics.unit_nmm`).

Every item of a search array stands out from the black background, so a map that highlights
all items already has a high target NMM; this project adds the *excess*: target NMM − the mean
NMM of the same map on each distractor item's exact mask.

- :func:`map_nmm`, :func:`nmm_row`, :func:`score_model`: one model's map on each array
  (Table 4 rows);
- :func:`model_tables`: Table 4: mean NMM and excess per model, feature dimensions vs
  conjunction controls, and the excess per dimension;
- :func:`inner_unit_nmm`: the units of a trunk's layers: per (layer, array) the mean of the
  top-k units' NMM and the best unit (Tables 5–6 rows);
- :func:`layer_summary`: Tables 5–6: mean over arrays of the top-k NMM per (model, layer),
  feature vs conjunction arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "NMM_COLUMNS",
    "array_group",
    "inner_unit_nmm",
    "layer_summary",
    "map_nmm",
    "model_tables",
    "nmm_row",
    "score_model",
]

#: columns of a per-array NMM table (:func:`nmm_row`)
NMM_COLUMNS: tuple[str, ...] = (
    "model", "kind", "array", "dimension", "nmm", "nmm_distractors", "nmm_excess",
)


def array_group(dimension: pd.Series) -> np.ndarray:
    """``"conjunction"`` for the conjunction controls (dimension ``conjunction_*``), else
    ``"feature"``."""
    return np.where(dimension.astype(str).str.startswith("conjunction"), "conjunction", "feature")


def map_nmm(saliency_map: np.ndarray, array: Any) -> tuple[float, float]:
    """NMM (Eq. 4) of a map on an array's target, and the mean NMM of the same map on the
    distractor items (each item's exact mask, :func:`dissect.data.popout.item_masks`; NaN-aware
    mean). ``saliency_map`` is either at the array's size (H, W) or at a feature resolution
    (h, w), then bilinearly upsampled to (H, W) exactly. A constant map gives NaN for both."""
    from dissect.data.popout import item_masks
    from dissect.metrics import nmm, unit_nmm

    s = np.asarray(saliency_map, dtype=np.float64)
    masks = np.stack([array.mask, *item_masks(array)])  # target first, then each distractor
    if s.shape == array.mask.shape:
        values = np.asarray(nmm(s, masks))  # the map standardised once for all masks
    else:  # a feature-resolution map: exact bilinear upsampling inside unit_nmm
        values = np.array([unit_nmm(s[None], array.mask.shape, m)[0] for m in masks])
    distractors = values[1:]
    mean_d = float(np.nanmean(distractors)) if np.isfinite(distractors).any() else float("nan")
    return float(values[0]), mean_d


def nmm_row(model: str, kind: str, array: Any, saliency_map: np.ndarray) -> dict[str, Any]:
    """One row of the per-array table (:data:`NMM_COLUMNS`): target NMM, mean distractor NMM
    and the excess ``nmm − nmm_distractors`` of ``saliency_map`` on ``array``."""
    target, distractor = map_nmm(saliency_map, array)
    return {"model": model, "kind": kind, "array": array.id, "dimension": array.dimension,
            "nmm": target, "nmm_distractors": distractor, "nmm_excess": target - distractor}


def score_model(
    model: str,
    kind: str,
    arrays: Iterable[Any],
    saliency: Callable[[np.ndarray], np.ndarray],
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`nmm_row` of ``saliency(array.image)`` for every array: the per-array table of one
    model (``kind``: e.g. ``"classical"`` or ``"readout"``)."""
    from tqdm.auto import tqdm

    rows = [nmm_row(model, kind, a, saliency(a.image))
            for a in tqdm(list(arrays), desc=model, unit="array", disable=not progress)]
    return pd.DataFrame(rows, columns=list(NMM_COLUMNS))


def model_tables(per_array: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 4 analogue from a per-array table (:data:`NMM_COLUMNS`). Returns

    - ``table4``: per model (first-seen order) the mean NMM and excess over the feature-dimension
      arrays (``nmm_feature``, ``nmm_excess_feature``), over the conjunction controls
      (``…_conjunction``, when present) and over all arrays (``nmm_all``, ``nmm_excess_all``);
    - ``by_dimension``: per model the mean excess on each dimension (one column per dimension).
    Means skip NaN (constant maps)."""
    t4 = (per_array.assign(group=array_group(per_array["dimension"]))
          .groupby(["model", "group"], sort=False)[["nmm", "nmm_excess"]].mean()
          .unstack("group"))
    t4.columns = [f"{a}_{b}" for a, b in t4.columns]
    t4 = t4.join(per_array.groupby("model", sort=False)[["nmm", "nmm_excess"]].mean()
                 .add_suffix("_all")).reset_index()
    by_dim = per_array.pivot_table(index="model", columns="dimension", values="nmm_excess",
                                   aggfunc="mean", sort=False)
    by_dim.columns.name = None
    return t4, by_dim.reset_index()


def inner_unit_nmm(
    backbone: Any, layers: Sequence[str], arrays: Iterable[Any], k: int, model: str, *,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[tuple[str, str, str], int]]:
    """Inner units on pop-out arrays (Tables 5–6 rows): for each array and layer, the NMM
    (Eq. 4) of every unit's map upsampled exactly to the array's size
    (:func:`dissect.metrics.unit_nmm`), summarised as ``top_nmm`` = the mean of the ``k`` largest
    defined unit NMMs (:func:`dissect.statistics.topk_mean`), the best unit and its NMM, the
    number of units and of constant (undefined) ones.

    Returns the table (``model, layer, array, dimension, top_nmm, best_unit, best_nmm,
    n_units, n_constant``; ``best_unit = -1`` when every map is constant) and
    ``{(model, layer, array id): best unit}``. ``progress``: a tqdm bar (arrays) on stderr."""
    import torch
    from tqdm.auto import tqdm

    from dissect.capture import LayerCapture
    from dissect.metrics import unit_nmm
    from dissect.statistics import topk_mean

    rows, best = [], {}
    layers = list(layers)
    arrays = list(arrays)
    with LayerCapture(backbone, layers) as cap:
        for a in tqdm(arrays, desc=f"{model} units", unit="array", disable=not progress):
            with torch.no_grad():
                acts = cap.attribute(backbone.preprocess(a.image))
            for layer in layers:
                maps = acts[layer][0].double().cpu().numpy()  # the model may be on a GPU
                v = unit_nmm(maps, a.mask.shape, a.mask)
                u = int(np.nanargmax(v)) if np.isfinite(v).any() else -1
                rows.append({"model": model, "layer": layer, "array": a.id,
                             "dimension": a.dimension, "top_nmm": float(topk_mean(v, k)[0]),
                             "best_unit": u, "best_nmm": float(v[u]) if u >= 0 else np.nan,
                             "n_units": int(v.size), "n_constant": int((~np.isfinite(v)).sum())})
                best[(model, layer, a.id)] = u
    return pd.DataFrame(rows), best


def layer_summary(inner: pd.DataFrame) -> pd.DataFrame:
    """Tables 5–6 analogue: per (model, layer), in first-seen order, the mean over arrays of
    :func:`inner_unit_nmm`'s ``top_nmm``, separately for the feature-dimension arrays
    (``feature``) and the conjunction controls (``conjunction``, when present)."""
    out = (inner.assign(group=array_group(inner["dimension"]))
           .groupby(["model", "layer", "group"], sort=False)["top_nmm"].mean()
           .unstack("group").reset_index())
    out.columns.name = None
    return out
