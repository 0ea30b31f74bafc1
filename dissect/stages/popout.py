"""Stages ``popout-arrays`` and ``popout``: pop-out search arrays (He et al. §7).

``popout-arrays`` renders the default seeded set (bit-identical on every run) with exact target
masks. ``popout`` scores, with NMM (Eq. 4), every model's map on every array:
- Table 4: classical models (Itti–Koch, GBVS, BMS, spectral residual, fine-grained) and the
  saliency readouts (setup I, setup II for each k), mean per model and per feature dimension;
- Table 5: inner units of the pretrained trunk: per layer the mean over arrays of the top-k units'
  NMM (each unit's map upsampled to the array size, exactly, :func:`dissect.metrics.unit_nmm`);
- Table 6: the same for the last trunk layer of each fine-tuned readout (k).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.popout")


def arrays_dir(params: Params):
    return common.work(params, "popout", "arrays", "manifest.csv").parent


def run_popout_arrays(params: Params) -> None:
    from dissect.data.popout import default_set, write_set

    p = params["popout"]
    with stage_record(params.work, "popout-arrays", {"popout": p}) as rec:
        arrays = default_set(int(p["n_per_dimension"]), int(p["seed"]))
        manifest = write_set(arrays, arrays_dir(params))
        pd.read_csv(manifest).to_csv(common.results(params, "tables", "popout_manifest.csv"),
                                     index=False)
        rec["n_arrays"] = len(arrays)
        log.info("%d arrays written to %s", len(arrays), manifest.parent)


def inner_unit_nmm(backbone, layers, arrays, k: int, model: str) -> tuple[pd.DataFrame, dict]:
    """Per (layer, array): top-k mean NMM of the layer's units and the best unit."""
    import torch

    from dissect.capture import LayerCapture
    from dissect.metrics import unit_nmm
    from dissect.statistics import topk_mean

    rows, best = [], {}
    with LayerCapture(backbone, list(layers)) as cap:
        for a in arrays:
            with torch.no_grad():
                acts = cap.attribute(backbone.preprocess(a.image))
            for layer in layers:
                maps = acts[layer][0].double().numpy()
                v = unit_nmm(maps, a.mask.shape, a.mask)
                u = int(np.nanargmax(v)) if np.isfinite(v).any() else -1
                rows.append({"model": model, "layer": layer, "array": a.id,
                             "dimension": a.dimension, "top_nmm": float(topk_mean(v, k)[0]),
                             "best_unit": u, "best_nmm": float(v[u]) if u >= 0 else np.nan,
                             "n_units": int(v.size), "n_constant": int((~np.isfinite(v)).sum())})
                best[(model, layer, a.id)] = u
    return pd.DataFrame(rows), best


def map_nmm(saliency_map: np.ndarray, array) -> tuple[float, float]:
    """NMM (Eq. 4) of a map on an array's target, and the mean NMM of the same map on the
    distractor items (each item's exact mask): an ordinary item against the black background
    already stands out, so target − distractor NMM is the pop-out excess."""
    from dissect.data.popout import item_masks
    from dissect.metrics import nmm, unit_nmm

    masks = np.stack([array.mask, *item_masks(array)])  # target first, then each distractor
    if saliency_map.shape == array.mask.shape:
        values = nmm(saliency_map, masks)  # the map standardised once for all masks
    else:  # a feature-resolution map: exact bilinear upsampling inside unit_nmm
        values = np.array([unit_nmm(saliency_map[None], array.mask.shape, m)[0] for m in masks])
    return float(values[0]), float(np.nanmean(values[1:]))


def nmm_row(model: str, kind: str, array, saliency_map: np.ndarray) -> dict:
    target, distractor = map_nmm(saliency_map, array)
    return {"model": model, "kind": kind, "array": array.id, "dimension": array.dimension,
            "nmm": target, "nmm_distractors": distractor, "nmm_excess": target - distractor}


def model_tables(per_array: pd.DataFrame, res) -> None:
    """Table 4 analogue: mean NMM (and excess over distractors) per model, feature dimensions
    vs conjunction controls, and per dimension."""
    from dissect.tables import write_table

    group = np.where(per_array["dimension"].str.startswith("conjunction"), "conjunction",
                     "feature")
    t4 = (per_array.assign(group=group)
          .groupby(["model", "group"], sort=False)[["nmm", "nmm_excess"]].mean()
          .unstack("group"))
    t4.columns = [f"{a}_{b}" for a, b in t4.columns]
    t4 = t4.join(per_array.groupby("model", sort=False)[["nmm", "nmm_excess"]].mean()
                 .add_suffix("_all")).reset_index()
    write_table(t4, res("table4_popout_models"))
    by_dim = per_array.pivot_table(index="model", columns="dimension", values="nmm_excess",
                                   aggfunc="mean", sort=False)
    write_table(by_dim.reset_index(), res("table4_popout_excess_by_dimension"))


def layer_summary(inner: pd.DataFrame) -> pd.DataFrame:
    group = np.where(inner["dimension"].str.startswith("conjunction"), "conjunction", "feature")
    return (inner.assign(group=group)
            .groupby(["model", "layer", "group"], sort=False)["top_nmm"].mean()
            .unstack("group").reset_index())


def run_popout(params: Params) -> None:
    """Classical models and the pretrained trunk's units (needs no OSIE)."""
    from tqdm.auto import tqdm

    from dissect.data.popout import load_set
    from dissect.models.classical import load_classical
    from dissect.tables import write_table

    p, k_top = params["popout"], int(params["stats"]["top_k"])
    layers = list(params["backbone"]["layers"])
    res = lambda name: common.results(params, "tables", "popout", name)  # noqa: E731
    with stage_record(params.work, "popout", {"popout": p, "top_k": k_top}) as rec:
        arrays = load_set(arrays_dir(params))
        rows = []
        for name in p["models"]:
            model = load_classical(name)
            for a in tqdm(arrays, desc=name, disable=not common.progress(params)):
                rows.append(nmm_row(name, "classical", a, model.saliency(a.image)))
        per_array = pd.DataFrame(rows)
        write_table(per_array, res("popout_nmm"))
        model_tables(per_array, res)
        inner, _ = inner_unit_nmm(common.backbone(params), layers, arrays, k_top, "pt")
        inner.to_csv(common.work(params, "popout", "inner_units.csv"), index=False)
        write_table(layer_summary(inner).drop(columns="model"), res("table5_popout_layers"))
        rec["n_arrays"] = len(arrays)


def run_popout_readouts(params: Params) -> None:
    """The saliency readouts (setup I, each k of setup II) next to the classical models
    (Table 4), and the last trunk layer's units vs k (Table 6)."""
    import torch

    from dissect.data.popout import load_set
    from dissect.readout import load_readout
    from dissect.tables import write_table
    from dissect.task_compare import finetuned_trunk

    k_top = int(params["stats"]["top_k"])
    last = params["backbone"]["layers"][-1]
    res = lambda name: common.results(params, "tables", "popout_readouts", name)  # noqa: E731
    with stage_record(params.work, "popout-readouts", {"top_k": k_top}) as rec:
        arrays = load_set(arrays_dir(params))
        base = common.backbone(params)
        rows = []
        inner = pd.read_csv(common.work(params, "popout", "inner_units.csv"))
        inner_k = [inner[(inner["model"] == "pt") & (inner["layer"] == last)]]
        for name in common.model_names(params)[1:]:
            readout, _ = load_readout(common.work(params, "readouts", name, "model.pt"), base)
            readout.eval()
            for a in arrays:
                with torch.no_grad():
                    pred = readout(readout.backbone.preprocess(a.image))[0].double().numpy()
                rows.append(nmm_row(f"readout_{name}", "readout", a, pred))
            if common.trunk_model(name) != "pt":
                df, _ = inner_unit_nmm(finetuned_trunk(readout, name), [last], arrays, k_top,
                                       name)
                inner_k.append(df)
        classical = pd.read_csv(common.results(params, "tables", "popout", "popout_nmm.csv"))
        per_array = pd.concat([classical, pd.DataFrame(rows)], ignore_index=True)
        write_table(per_array, res("popout_nmm"))
        model_tables(per_array, res)
        inner_all = pd.concat(inner_k, ignore_index=True)
        inner_all.to_csv(common.work(params, "popout", "inner_units_finetuned.csv"), index=False)
        write_table(layer_summary(inner_all), res("table6_popout_k"))
        rec["n_arrays"] = len(arrays)
