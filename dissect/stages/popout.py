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


def topk_mean(values: np.ndarray, k: int) -> float:
    """Mean of the k largest finite values (NaN units, i.e. constant maps, excluded)."""
    v = values[np.isfinite(values)]
    return float(np.sort(v)[-k:].mean()) if v.size else float("nan")


def inner_unit_nmm(backbone, layers, arrays, k: int, model: str) -> tuple[pd.DataFrame, dict]:
    """Per (layer, array): top-k mean NMM of the layer's units and the best unit."""
    import torch

    from dissect.capture import LayerCapture
    from dissect.metrics import unit_nmm

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
                             "dimension": a.dimension, "top_nmm": topk_mean(v, k),
                             "best_unit": u, "best_nmm": float(v[u]) if u >= 0 else np.nan,
                             "n_units": int(v.size), "n_constant": int((~np.isfinite(v)).sum())})
                best[(model, layer, a.id)] = u
    return pd.DataFrame(rows), best


def run_popout(params: Params) -> None:
    from tqdm.auto import tqdm

    from dissect.data.popout import load_set
    from dissect.metrics import nmm, unit_nmm
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
                rows.append({"model": name, "kind": "classical", "array": a.id,
                             "dimension": a.dimension, "nmm": nmm(model.saliency(a.image), a.mask)})
        base = common.backbone(params)
        inner, _ = inner_unit_nmm(base, layers, arrays, k_top, "pt")
        inner_k = []
        have_readouts = common.work(params, "train", "summary.json").is_file()
        if have_readouts:
            import torch

            from dissect.readout import load_readout
            from dissect.task_compare import finetuned_trunk

            for name in common.model_names(params)[1:]:
                readout, _ = load_readout(common.work(params, "readouts", name, "model.pt"), base)
                readout.eval()
                for a in arrays:
                    with torch.no_grad():
                        pred = readout(readout.backbone.preprocess(a.image))[0]
                    v = unit_nmm(pred.double().numpy()[None], a.mask.shape, a.mask)[0]
                    rows.append({"model": f"readout_{name}", "kind": "readout", "array": a.id,
                                 "dimension": a.dimension, "nmm": float(v)})
                if common.trunk_model(name) != "pt":
                    df, _ = inner_unit_nmm(finetuned_trunk(readout, name), [layers[-1]], arrays,
                                           k_top, name)
                    inner_k.append(df)
        else:
            log.warning("no trained readouts (run `dissect train`): Table 4 has classical models "
                        "only and Table 6 is skipped")
        per_array = pd.DataFrame(rows)
        write_table(per_array, res("popout_nmm"))
        feature = ~per_array["dimension"].str.startswith("conjunction")
        t4 = (per_array.assign(group=np.where(feature, "feature", "conjunction"))
              .groupby(["model", "group"], sort=False)["nmm"].mean().unstack("group").reset_index())
        t4["all"] = per_array.groupby("model", sort=False)["nmm"].mean().to_numpy()
        write_table(t4, res("table4_popout_models"))
        by_dim = per_array.pivot_table(index="model", columns="dimension", values="nmm",
                                       aggfunc="mean", sort=False)
        write_table(by_dim.reset_index(), res("table4_popout_by_dimension"))

        inner_all = pd.concat([inner, *inner_k], ignore_index=True)
        inner_all.to_csv(common.work(params, "popout", "inner_units.csv"), index=False)
        grp = np.where(inner_all["dimension"].str.startswith("conjunction"), "conjunction",
                       "feature")
        summary = (inner_all.assign(group=grp)
                   .groupby(["model", "layer", "group"], sort=False)["top_nmm"].mean()
                   .unstack("group").reset_index())
        write_table(summary[summary["model"] == "pt"].drop(columns="model"),
                    res("table5_popout_layers"))
        if inner_k:
            t6 = summary[summary["layer"] == layers[-1]]
            write_table(t6, res("table6_popout_k"))
        rec["n_arrays"] = len(arrays)
