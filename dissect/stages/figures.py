"""Stage ``figures``: every figure of the report, from the committed tables and the caches.

Paper analogues: Table 2/3 heatmaps, Fig. 4 (improvement vs k), inner-vs-output scatter (§6),
Figs. 3/5/6 (best-responding units on chosen regions), Figs. 8/9 (pop-out maps and best inner
units), Fig. 11 (one unit in the pt / sr / sp trunks), training curves.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.figures")

OVERLAY_CATEGORIES = ("person head", "text", "animal head", "vehicle", "symbol", "food")


def _table(params: Params, *parts: str) -> pd.DataFrame:
    path = params.results.joinpath("tables", *parts)
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def best_region_rows(params: Params, model: str, layer: str, n_units: int = 3) -> list[dict]:
    """Figs. 3/5/6: for each category in ``OVERLAY_CATEGORIES``, the held-out region with the
    most fixations and the ``n_units`` units with the highest region NSS on it."""
    from dissect.association import load_associations, region_fixations
    from dissect.cache import open_activations

    dataset, regions = common.inputs(params)
    assoc = load_associations(common.assoc_store(params, model), [layer])[layer]
    store = common.act_store(params, model)
    rows = []
    drop_first = bool(params["data"]["drop_first"])
    for cat in OVERLAY_CATEGORIES:
        cols = np.flatnonzero(assoc["category"].values == cat)
        if cols.size == 0:
            continue
        counts = []
        for c in cols:
            image_id, rid = str(assoc["image"].values[c]), int(assoc["region_id"].values[c])
            _, pr = region_fixations(dataset, regions, image_id, drop_first=drop_first)
            counts.append(int((pr == rid).sum()))
        c = int(cols[int(np.argmax(counts))])
        image_id, rid = str(assoc["image"].values[c]), int(assoc["region_id"].values[c])
        v = assoc.values[:, c].astype(float)
        order = np.argsort(np.where(np.isfinite(v), v, -np.inf))[::-1][:n_units]
        acts = open_activations(store, layer).sel(image=image_id).values.astype(np.float64)
        points = dataset.points(image_id, drop_first=drop_first)
        rows.append({
            "image": dataset.load_image(image_id),
            "fixations": points,
            "region_mask": regions.instance_mask(image_id) == rid,
            "unit_maps": {f"{layer}:{u}": acts[u] for u in order},
            "nss": {f"{layer}:{u}": float(v[u]) for u in order},
            "title": f"{cat} ({image_id})",
        })
    return rows


def run_figures(params: Params) -> None:
    from dissect.figures import (
        heatmap_k,
        heatmap_layers,
        improvement_bars,
        inner_vs_output,
        popout_bars,
        save_figure,
        training_curves,
        unit_overlay_grid,
    )

    top = f"top{int(params['stats']['top_k'])}_mean"
    layers = list(params["backbone"]["layers"])
    out = lambda name: common.results(params, "figures", "paper", name)  # noqa: E731
    written = []

    def save(fig, name):
        written.append(str(save_figure(fig, out(name))))

    with stage_record(params.work, "figures", {}) as rec:
        stats = _table(params, "statistics", "category_statistics.csv")
        if not stats.empty:
            pt = stats[stats["model"] == "pt"]
            save(heatmap_layers(pt, top, title="Pretrained trunk: top-10 mean NSS per category"),
                 "table2_top10.png")
            save(heatmap_layers(pt, top, excess=True,
                                title="Pretrained trunk: top-10 mean NSS − permutation null"),
                 "table2_top10_excess.png")
            save(heatmap_layers(pt, "count_above_T", title="Pretrained trunk: units with NSS > T"),
                 "table2_count.png")
            by_k = stats[(stats["model"] != "pt") & (stats["layer"] == layers[-1])]
            save(heatmap_k(by_k, top, title=f"{layers[-1]}: top-10 mean NSS vs k fine-tuned"),
                 "table3_top10.png")
            save(heatmap_k(by_k, top, excess=True,
                           title=f"{layers[-1]}: top-10 mean − null vs k fine-tuned"),
                 "table3_top10_excess.png")
            imp = _table(params, "statistics", "fig4_improvement.csv")
            save(improvement_bars(imp), "fig4_improvement.png")
            save(improvement_bars(imp, value="excess_improvement_pct",
                                  ylabel="% improvement of (top-10 mean − null)"),
                 "fig4_improvement_excess.png")
            save(unit_overlay_grid(best_region_rows(params, "pt", layers[-1]),
                                   title=f"Best {layers[-1]} units of the pretrained trunk"),
                 "fig3_units_pretrained.png")
            k_max = [m for m in common.model_names(params) if common.trunk_model(m) != "pt"]
            if k_max:
                m = k_max[-2] if len(k_max) > 1 else k_max[-1]  # deepest numeric k
                save(unit_overlay_grid(best_region_rows(params, m, layers[-1]),
                                       title=f"Best {layers[-1]} units after fine-tuning ({m})"),
                     "fig5_units_finetuned.png")
        io = _table(params, "inner_output", "inner_output.csv")
        sp = _table(params, "inner_output", "inner_output_spearman.csv")
        for model in io["model"].unique() if not io.empty else []:
            r = sp[sp["model"] == model].iloc[0]
            save(inner_vs_output(io[io["model"] == model], r["r_s"], r["p_value"],
                                 title=f"Inner vs output saliency ({model})"),
                 f"inner_vs_output_{model}.png")
        pop = _table(params, "popout_readouts", "popout_nmm.csv")
        if pop.empty:
            pop = _table(params, "popout", "popout_nmm.csv")
        if not pop.empty:
            save(popout_bars(pop, title="NMM of the target per model (mean, 95% CI)"),
                 "table4_popout_models.png")
            excess = pop.assign(nmm=pop["nmm_excess"])
            save(popout_bars(excess, title="Target − distractor NMM per model"),
                 "table4_popout_excess.png")
            save(popout_bars(excess, hue="dimension",
                             title="Target − distractor NMM per model and dimension"),
                 "table4_popout_excess_by_dimension.png")
            save(_popout_examples(params), "fig8_popout_examples.png")
            save(_popout_best_units(params), "fig9_popout_best_units.png")
        curves = _table(params, "training_curves.csv")
        if not curves.empty:
            save(training_curves(curves), "training_curves.png")
        if common.work(params, "scene", "model.pt").is_file():
            save(_task_maps(params), "fig11_task_maps.png")
        rec["figures"] = written
        log.info("%d figures written", len(written))


def _short(dimension: str) -> str:
    """Row label of a pop-out dimension that fits beside a panel."""
    return dimension.replace("conjunction_", "conj.\n").replace("_", "×")


def _popout_examples(params: Params):
    from dissect.data.popout import load_set
    from dissect.figures import popout_examples
    from dissect.models.classical import load_classical
    from dissect.stages.popout import arrays_dir

    arrays = load_set(arrays_dir(params))
    first = {}
    for a in arrays:
        first.setdefault(a.dimension, a)
    models = {name: load_classical(name) for name in params["popout"]["models"]}
    readout = _readout(params, "k0")
    rows, labels = [], []
    for dim, a in first.items():
        maps = {name: m.saliency(a.image) for name, m in models.items()}
        if readout is not None:
            maps["readout k0"] = readout.predict(a.image)
        rows.append((a.image, a.mask, maps))
        labels.append(_short(dim))
    return popout_examples(rows, labels, title="Pop-out arrays and model maps")


def _readout(params: Params, name: str):
    path = common.work(params, "readouts", name, "model.pt")
    if not path.is_file():
        return None
    from dissect.readout import load_readout

    model, _ = load_readout(path, common.backbone(params))
    return model.eval()


def _popout_best_units(params: Params):
    import torch

    from dissect.capture import LayerCapture
    from dissect.data.popout import load_set
    from dissect.figures import popout_best_units
    from dissect.stages.popout import arrays_dir

    inner = pd.read_csv(common.work(params, "popout", "inner_units.csv"))
    inner = inner[inner["model"] == "pt"]
    arrays = {a.id: a for a in load_set(arrays_dir(params))}
    chosen = inner.drop_duplicates("dimension")["array"].tolist()
    bb = common.backbone(params)
    layers = list(params["backbone"]["layers"])
    rows = []
    with LayerCapture(bb, layers) as cap:
        for array_id in chosen:
            a = arrays[array_id]
            with torch.no_grad():
                acts = cap.attribute(bb.preprocess(a.image))
            best = inner[inner["array"] == array_id].set_index("layer")
            rows.append({
                "image": a.image, "mask": a.mask, "label": _short(a.dimension),
                "maps": {ly: acts[ly][0, int(best.loc[ly, "best_unit"])].numpy() for ly in layers},
                "units": {ly: int(best.loc[ly, "best_unit"]) for ly in layers},
                "nmm": {ly: float(best.loc[ly, "best_nmm"]) for ly in layers},
            })
    return popout_best_units(rows, title="Best inner unit per layer (pretrained trunk)")


def _task_maps(params: Params):
    import torch

    from dissect.association import load_associations
    from dissect.capture import LayerCapture
    from dissect.data import density_map
    from dissect.figures import task_maps
    from dissect.scene import load_scene_model
    from dissect.task_compare import finetuned_trunk

    dataset, _ = common.inputs(params)
    layer = params["backbone"]["layers"][-1]
    base = common.backbone(params)
    trunks = {"pt": base, "sr": load_scene_model(common.work(params, "scene", "model.pt"),
                                                 base).trunk_backbone()}
    sp = _readout(params, "k1")
    if sp is not None:
        trunks["sp"] = finetuned_trunk(sp, "sp")
    # the unit and region: the sp trunk's best person-head unit on its best region
    assoc = load_associations(common.assoc_store(params, "k1"), [layer])[layer]
    cols = np.flatnonzero(assoc["category"].values == "person head")
    v = assoc.values[:, cols].astype(float)
    n = np.isfinite(v).sum(axis=1)
    unit = int(np.argmax(np.where(n > 0, np.nansum(v, axis=1) / np.maximum(n, 1), -np.inf)))
    c = int(cols[int(np.nanargmax(v[unit]))])
    image_id = str(assoc["image"].values[c])
    image = dataset.load_image(image_id)
    points = dataset.points(image_id, drop_first=bool(params["data"]["drop_first"]))
    g = params["gt"]
    density = density_map(points, image.shape[:2], sigma_deg=g["sigma_deg"],
                          px_per_degree=g["px_per_degree"])
    maps = {}
    for name, bb in trunks.items():
        with LayerCapture(bb, [layer]) as cap, torch.no_grad():
            maps[name] = cap.attribute(bb.preprocess(image))[layer][0, unit].numpy()
    return task_maps(image, density, maps, fixations=points,
                     title=f"{layer} unit {unit} in the pt / sr / sp trunks ({image_id})")
