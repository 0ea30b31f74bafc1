"""Stages ``extract-deepgaze`` and ``deepgaze``: DeepGaze I (Kümmerer, Theis & Bethge 2015) on the
frozen pretrained trunk, its layer comparison, and what the readout picked.

``extract-deepgaze`` caches the maps of ``deepgaze.layers`` for every training and held-out image
fed at ``deepgaze.input_scale`` of its size (300 × 400 for OSIE) in ``work/act/deepgaze.zarr``
(the activation cache, :mod:`dissect.cache`: resumable, checksummed, keyed on the trunk's weights
and the preprocessing).

``deepgaze`` brings every cached map to the common grid (the fed size / ``grid_stride``) and
trains one readout (:func:`dissect.models.deepgaze.train_deepgaze`: Adam, StepLR, L1 on the
weights, early stopping on the validation log-likelihood, ``deepgaze.seed``) per layer set of the
DeepGaze I paper's comparison — each layer alone and each layer with every deeper one — on the
training split less its validation slice (``train.val_fraction`` / ``train.val_seed``, the
readouts' slice). Each is scored on the validation slice and on the held-out images (log-
likelihood in bits per fixation over the pixel-uniform density, and information gain over the
centre bias of the ``baselines`` stage on the same grid). The committed model is the best on
**validation** (never chosen on held-out) → ``work/deepgaze/model.pt``; the table and figure of
the comparison go to ``results/tables/deepgaze/`` and ``results/figures/deepgaze/``. Then the
chosen readout's largest weights are mapped to the dissection's units and their category
selectivity (the associate stage's unit means, Eq. 1) is compared with all its units
(:mod:`dissect.picked_units`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.deepgaze")

_LN2 = math.log(2.0)


def feature_store(params: Params):
    return common.work(params, "act", "deepgaze.zarr")


def model_path(params: Params):
    return common.work(params, "deepgaze", "model.pt")


def _check_layers(params: Params, bb) -> list[str]:
    from dissect.errors import DataError

    layers = list(params["deepgaze"]["layers"])
    unknown = [n for n in layers if n not in bb.layers]
    if unknown:
        raise DataError(params.base / params.file, f"deepgaze.layers: {bb.name} has no layer(s) "
                                                   f"{unknown}; its layers: {list(bb.layers)}")
    order = list(bb.layers)
    if layers != sorted(layers, key=order.index):
        raise DataError(params.base / params.file, "deepgaze.layers: list them shallow to deep "
                                                   f"(the trunk's order {order})")
    return layers


def _fed_size(params: Params, dataset, ids: list[str]) -> tuple[int, int]:
    """The trunk's input size, the same for every image (the cache batches one size)."""
    from dissect.errors import DataError
    from dissect.models.deepgaze import input_size

    sizes = {tuple(dataset[i].size) for i in ids}
    if len(sizes) != 1:
        raise DataError("deepgaze", f"images of {len(sizes)} sizes {sorted(sizes)[:3]}: the "
                                    "feature cache feeds one size; resize the dataset first")
    return input_size(sizes.pop(), float(params["deepgaze"]["input_scale"]))


def run_extract_deepgaze(params: Params):
    from dissect.preprocess import Preprocess
    from dissect.stages.extract import extract_store

    d = params["deepgaze"]
    recorded = {"deepgaze.layers": d["layers"], "deepgaze.input_scale": d["input_scale"],
                "deepgaze.dtype": d["dtype"], "extract.batch_size": params["extract"]["batch_size"]}
    with stage_record(params.work, "extract-deepgaze", recorded) as rec:
        dataset, _ = common.inputs(params)
        ids = common.ids_of(params, "train") + common.ids_of(params, "heldout")
        bb = common.backbone(params)
        layers = _check_layers(params, bb)
        fed = _fed_size(params, dataset, ids)
        pre = Preprocess(fed, bb.preprocess.mean, bb.preprocess.std)
        store = feature_store(params)
        extract_store(params, dataset.subset(ids), bb, layers, store, preprocess=pre,
                      dtype=d["dtype"])
        rec.update(weights_id=bb.weights_id, preprocess=pre.to_dict(), n_images=len(ids),
                   store=str(store.relative_to(params.work)))
    return store


def load_grid_features(store, layers: list[str], ids: list[str], grid: tuple[int, int]):
    """``{layer: (N, C_l, h, w) float16 tensor}`` of ``ids`` (in that order) on ``grid``, read
    from the cache layer by layer (bilinear with antialiasing, :func:`to_grid`, in float32, then
    kept as float16 to bound memory: every cached value is float16 already)."""
    import torch

    from dissect.cache import open_activations
    from dissect.errors import DataError
    from dissect.models.deepgaze import to_grid

    out = {}
    for layer in layers:
        arr = open_activations(store, layer)
        stored = [str(v) for v in arr["image"].values]
        pos = {i: k for k, i in enumerate(stored)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise DataError(store, f"layer {layer}: {len(missing)} image(s) not cached, e.g. "
                                   f"{missing[0]}: rerun extract-deepgaze")
        data = arr.data
        parts = []
        for b in range(0, len(ids), 64):
            idx = [pos[i] for i in ids[b:b + 64]]
            x = torch.from_numpy(np.asarray(data[idx].compute(), dtype=np.float32))
            parts.append(to_grid(x, grid).to(torch.float16))
        out[layer] = torch.cat(parts)
        log.info("features %s: %d channels on the %dx%d grid", layer, out[layer].shape[1],
                 *grid)
    return out


def layer_sets(layers: list[str]) -> list[tuple[str, list[str]]]:
    """The DeepGaze I comparison: each layer alone, and each layer with every deeper one
    (``"<layer>+"``; the deepest layer's is the single-layer set, listed once)."""
    sets = [(name, [name]) for name in layers]
    sets += [(f"{name}+", layers[k:]) for k, name in enumerate(layers[:-1])]
    return sets


def run_deepgaze(params: Params) -> pd.DataFrame:
    import torch
    from tqdm.auto import tqdm

    from dissect.models.deepgaze import (
        FixationCells,
        _gather,
        channel_index,
        fixation_cells,
        grid_size,
        save_deepgaze,
        train_deepgaze,
    )
    from dissect.picked_units import picked_selectivity, picked_units
    from dissect.stages.baselines import load_baselines
    from dissect.tables import write_table
    from dissect.training import split_train_val

    d = params["deepgaze"]
    t = params["train"]
    drop = bool(params["data"]["drop_first"])
    recorded = {"deepgaze": d, "train.val_fraction": t["val_fraction"],
                "train.val_seed": t["val_seed"], "train.threads": t["threads"],
                "device": params.get("device", "auto")}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(t["threads"]))
    try:
        with stage_record(params.work, "deepgaze", recorded) as rec:
            dataset, _ = common.inputs(params)
            train_ids = common.ids_of(params, "train")
            heldout = common.ids_of(params, "heldout")
            fit_ids, val_ids = split_train_val(train_ids, float(t["val_fraction"]),
                                               int(t["val_seed"]))
            bb = common.backbone(params)
            dev = common.device(params)
            layers = _check_layers(params, bb)
            size = tuple(dataset[train_ids[0]].size)
            _fed_size(params, dataset, train_ids + heldout)
            grid = grid_size(size, float(d["input_scale"]), int(d["grid_stride"]))
            cb, _ = load_baselines(params, dataset)
            centre = torch.as_tensor(cb.log_density(grid), dtype=torch.float32)
            all_ids = train_ids + heldout
            feats = load_grid_features(feature_store(params), layers, all_ids, grid)
            row_of = {i: k for k, i in enumerate(all_ids)}
            fix = {i: (dataset.points(i, drop_first=drop), tuple(dataset[i].size))
                   for i in all_ids}

            def scores(model, ids: list[str], chosen: list[str]) -> tuple[float, float]:
                """(LL bits/fix over uniform, IG over the grid centre bias) on ``ids``."""
                cells: list[FixationCells] = [fixation_cells(*fix[i], grid, source=i)
                                              for i in ids]
                with torch.no_grad():
                    ld = torch.cat([model(get(chosen)(ids[b:b + 32]))
                                    for b in range(0, len(ids), 32)])
                    vals = _gather(ld, cells, None, ids).double().cpu()
                    c = (centre - torch.logsumexp(centre.flatten(), 0)).expand(len(ids), *grid)
                    base = _gather(c, cells, None, ids).double()
                hw = torch.tensor([float(fix[i][1][0] * fix[i][1][1]) for i in ids])
                n = torch.tensor([len(c_.flat) for c_ in cells])
                log_hw = torch.repeat_interleave(hw.log(), n).double()
                ll = float((vals + log_hw).mean()) / _LN2
                ig = float((vals - base).mean()) / _LN2
                return ll, ig

            def get(chosen: list[str]):
                def fn(ids):
                    idx = torch.tensor([row_of[i] for i in ids])
                    return torch.cat([feats[name][idx].float() for name in chosen], dim=1)
                return fn

            rows, results = [], {}
            sets = layer_sets(layers)
            show = common.progress(params)
            outer = tqdm(total=len(sets), desc="DeepGaze I layer sets", unit="set",
                         disable=not show or len(sets) < 2)
            for label, chosen in sets:
                res = train_deepgaze(
                    get(chosen), centre, fit_ids, val_ids, fix,
                    epochs=int(d["epochs"]), lr=float(d["lr"]), l1=float(d["l1"]),
                    batch_size=int(d["batch_size"]), seed=int(d["seed"]),
                    patience=int(d["patience"]), step_size=int(d["step_size"]),
                    gamma=float(d["gamma"]), heldout_ids=heldout, device=dev,
                    progress_bar=show, desc=f"train DeepGaze I {label}",
                )  # fmt: skip
                val_ll, val_ig = scores(res.model, val_ids, chosen)
                ho_ll, ho_ig = scores(res.model, heldout, chosen)
                results[label] = (res, chosen)
                rows.append({
                    "layers": label, "kind": "single" if len(chosen) == 1 and not
                    label.endswith("+") else "and above", "n_layers": len(chosen),
                    "n_channels": res.model.n_channels, "best_epoch": res.best_epoch,
                    "epochs_run": len(res.history), "val_log_likelihood": val_ll,
                    "val_information_gain": val_ig, "heldout_log_likelihood": ho_ll,
                    "heldout_information_gain": ho_ig, "sigma": float(res.model.sigma.detach()),
                    "centre_weight": float(res.model.centre_weight.detach()),
                    "seconds": float(res.history["seconds"].sum()),
                })
                log.info("%-10s val IG %.3f, held-out IG %.3f bits/fix (%d epochs, %.0f s)",
                         label, val_ig, ho_ig, len(res.history), rows[-1]["seconds"])
                outer.update()
            outer.close()
            table = pd.DataFrame(rows)
            best = str(table.loc[table["val_log_likelihood"].idxmax(), "layers"])
            table["chosen"] = table["layers"] == best
            res, chosen = results[best]
            units = {name: int(feats[name].shape[1]) for name in chosen}
            meta = {"backbone": bb.name, "weights_id": bb.weights_id,
                    "input_scale": float(d["input_scale"]), "grid_stride": int(d["grid_stride"]),
                    "chosen_by": "validation log-likelihood", "layers": best,
                    "config": res.config, "best_epoch": res.best_epoch}
            save_deepgaze(res.model, model_path(params), feature_layers=chosen,
                          layer_units=units, meta=meta)
            res.history.assign(layers=best).to_csv(
                common.work(params, "deepgaze", "history.csv"), index=False)

            # what the readout picked
            w = channel_index(units)
            w["weight"] = res.model.weights.detach().double().numpy()
            unit_means = pd.read_csv(common.work(params, "assoc", "pt_unit_means.csv"))
            unit_means = unit_means[unit_means["layer"].isin(chosen)]
            top = int(d["top_units"])
            picked = picked_units(w, unit_means, top)
            sel = picked_selectivity(w, unit_means, top, n_null=int(d["n_null"]),
                                     seed=int(d["seed"]))
            with common.replacing(common.results(params, "tables", "deepgaze")) as folder:
                write_table(table, folder / "layer_comparison", floatfmt=".4f",
                            caption=LAYER_CAPTION.format(n_val=len(val_ids),
                                                         n_heldout=len(heldout), best=best))
                write_table(picked, folder / "picked_units", floatfmt=".4f",
                            caption=PICKED_CAPTION.format(top=top, best=best))
                write_table(sel, folder / "picked_selectivity", floatfmt=".4f",
                            caption=SELECTIVITY_CAPTION.format(top=top, n_null=d["n_null"]))
            _figures(params, table, sel, best, top)
            rec.update(chosen=best, grid=list(grid), n_fit=len(fit_ids), n_val=len(val_ids),
                       n_heldout=len(heldout), weights_id=bb.weights_id,
                       centre_bias_bandwidth=cb.bandwidth, device=str(dev))
    finally:
        torch.set_num_threads(previous_threads)
    return table


LAYER_CAPTION = (
    "DeepGaze I readouts of the frozen trunk on each layer alone and on each layer with every "
    "deeper one ('<layer>+'), trained on the training split less its validation slice. LL: "
    "log-likelihood in bits/fixation over the pixel-uniform density; IG: over the centre bias "
    "(baselines stage) on the same grid; validation n = {n_val}, held-out n = {n_heldout} images. "
    "Chosen on validation LL: {best}. Command: `dvc repro deepgaze`."
)
PICKED_CAPTION = (
    "The {top} units of the largest positive weights of the committed DeepGaze I readout "
    "({best}; weights of unit-std features) with each unit's best category by mean region NSS "
    "(Eq. 1, held-out regions). Command: `dvc repro deepgaze`."
)
SELECTIVITY_CAPTION = (
    "Per category: mean region NSS (Eq. 1) of the {top} picked units vs all the readout's "
    "units; null: {n_null} random sets of {top} units (2.5-97.5 % band); one-sided permutation "
    "p. Command: `dvc repro deepgaze`."
)


def _figures(params: Params, table: pd.DataFrame, sel: pd.DataFrame, best: str, top: int):
    from dissect.figures import deepgaze_layer_figure, picked_selectivity_figure, save_figure

    with common.replacing(common.results(params, "figures", "deepgaze")) as folder:
        save_figure(deepgaze_layer_figure(table, best), folder / "layer_comparison.png")
        save_figure(picked_selectivity_figure(
            sel, f"DeepGaze I ({best}): top {top} units vs all"), folder / "picked_selectivity.png")
