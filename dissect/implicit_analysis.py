"""Implicit saliency per layer (Sun et al. 2020, Table 1 and Fig. 4) and the gradient units
dissected beside the activation units.

**Per layer** (:func:`layer_records`): for every held-out image and every chosen layer, four maps
scored with NSS and CC (the scorecard's functions and conventions, :func:`dissect.robustness.
score_nss_cc`): ``S_C`` (:func:`~dissect.models.implicit.implicit_map` of the cached µ and V of
the class gradients), ``S_F`` (:func:`~dissect.models.implicit.feedforward_map` of the cached
activations — the trunk's activation store, the units the study dissects), Grad-CAM at the
layer, and Guided Backprop (input gradients: one map per image, listed with layer ``input``).
Every map is bilinearly upsampled to the image. :func:`dissect.image_means.means_table` gives
Table 1, :func:`dissect.image_means.paired_differences` the gain of ``S_C`` over ``S_F`` per layer
(Fig. 4, the paper's comparison of the gradient statistics with the feed-forward ones).

**Gradient units** (:func:`gradient_vs_activation`): the µ maps (mean |∂J_i/∂f| over classes, per
unit) are associated with the category-labelled regions by Eq. 1 and summarised by the same
category statistics as activations; per category and layer the excess over the permutation null
of the gradient units is set beside the activation units' — "do the conflicting features encode
the study's salient categories more than the feed-forward features?"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dissect.data.maps import density_map
from dissect.errors import DataError
from dissect.models.base import SaliencyModel, StimulusImage
from dissect.models.implicit import (
    VAR_SUFFIX,
    VarianceNorm,
    feedforward_map,
    implicit_map,
    upsample,
)
from dissect.robustness import score_nss_cc

__all__ = ["GUIDED_LAYER", "METHODS", "gradient_vs_activation", "layer_records"]

#: the map methods of Table 1, in table order
METHODS: tuple[str, ...] = ("implicit S_C", "feedforward S_F", "grad_cam", "guided_backprop")
#: the "layer" of Guided Backprop's rows: it is an input gradient, the same at every layer
GUIDED_LAYER = "input"


def layer_records(
    dataset: Any,
    ids: Sequence[str],
    *,
    gradient_store: str | Path,
    activation_store: str | Path,
    layers: Sequence[str],
    gradcam: Mapping[str, SaliencyModel],
    guided: SaliencyModel | None,
    gt_sigma_px: float,
    drop_first: bool = True,
    conventions: str = "dissect",
    variance_norm: VarianceNorm = "per_map",
    progress: bool = False,
) -> pd.DataFrame:
    """Tidy ``image, layer, method, nss, cc``: the four maps of the module docstring on each
    image of ``ids`` (every id must be in both stores; ``gradcam``: layer → Grad-CAM model)."""
    from tqdm.auto import tqdm

    from dissect.cache import open_activations

    missing = [ly for ly in layers if ly not in gradcam]
    if missing:
        raise DataError("gradcam", f"no Grad-CAM model for layer(s) {missing}")
    mean = {ly: open_activations(gradient_store, ly) for ly in layers}
    var = {ly: open_activations(gradient_store, ly + VAR_SUFFIX) for ly in layers}
    act = {ly: open_activations(activation_store, ly) for ly in layers}
    for name, arrays in (("gradient", mean), ("activation", act)):
        for ly, a in arrays.items():
            absent = sorted(set(map(str, ids)) - {str(v) for v in a["image"].values})
            if absent:
                raise DataError(f"{name} store, layer {ly}", f"images not stored: {absent[:5]}")
    rows = []
    for i in tqdm(list(ids), desc="maps per layer", unit="image", disable=not progress):
        i = str(i)
        pixels = dataset.load_image(i)
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        pts = dataset.points(i, drop_first=drop_first)
        dens = density_map(pts, size, sigma=float(gt_sigma_px))
        stim = StimulusImage(i, pixels)
        maps: list[tuple[str, str, np.ndarray]] = []
        for ly in layers:
            mu = torch.from_numpy(np.asarray(mean[ly].sel(image=i).values, dtype=np.float64))
            v = torch.from_numpy(np.asarray(var[ly].sel(image=i).values, dtype=np.float64))
            a = torch.from_numpy(np.asarray(act[ly].sel(image=i).values, dtype=np.float64))
            maps += [(METHODS[0], ly, upsample(implicit_map(mu, v, variance_norm), size)),
                     (METHODS[1], ly, upsample(feedforward_map(a, variance_norm), size)),
                     (METHODS[2], ly, gradcam[ly].saliency_map(stim))]
        if guided is not None:
            maps.append((METHODS[3], GUIDED_LAYER, guided.saliency_map(stim)))
        for method, ly, smap in maps:
            rows.append({"image": i, "layer": ly, "method": method,
                         **score_nss_cc(smap, pts, dens, conventions=conventions,
                                        source=f"{method} at {ly} on image {i}")})
    return pd.DataFrame(rows)


def gradient_vs_activation(gradient: pd.DataFrame, activation: pd.DataFrame,
                           stat: str) -> pd.DataFrame:
    """Per category and layer, one statistic (``stat``: ``top10_mean`` or ``count_above_T``) of
    the gradient units beside the activation units: ``category, layer, activation,
    activation_excess [ci], gradient, gradient_excess [ci], excess_difference`` (gradient −
    activation excess over each one's own permutation null; > 0: the gradient units encode the
    category more, relative to chance). Inputs: tidy category statistics
    (:func:`dissect.statistics.category_statistics`) with ``layer``; the layers and categories
    are those both hold (a layer or category only one side has is left out, not zero-filled)."""
    cols = ["layer", "category", "stat", "value", "excess", "excess_ci_low", "excess_ci_high",
            "p_value"]
    for name, df in (("gradient", gradient), ("activation", activation)):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"{name} statistics", f"missing column(s) {missing}")
        dup = df[df["stat"] == stat].duplicated(["layer", "category"])
        if dup.any():
            raise DataError(f"{name} statistics", f"repeated (layer, category) rows for {stat}")
    g = gradient[gradient["stat"] == stat][cols].drop(columns="stat")
    a = activation[activation["stat"] == stat][cols].drop(columns="stat")
    both = a.merge(g, on=["layer", "category"], suffixes=("_act", "_grad"))
    if both.empty:
        raise DataError(stat, "the gradient and activation statistics share no layer/category")
    out = pd.DataFrame({
        "category": both["category"], "layer": both["layer"],
        "activation": both["value_act"], "activation_excess": both["excess_act"],
        "activation_excess_ci_low": both["excess_ci_low_act"],
        "activation_excess_ci_high": both["excess_ci_high_act"],
        "activation_p": both["p_value_act"],
        "gradient": both["value_grad"], "gradient_excess": both["excess_grad"],
        "gradient_excess_ci_low": both["excess_ci_low_grad"],
        "gradient_excess_ci_high": both["excess_ci_high_grad"],
        "gradient_p": both["p_value_grad"],
    })
    out["excess_difference"] = out["gradient_excess"] - out["activation_excess"]
    return out.reset_index(drop=True)
