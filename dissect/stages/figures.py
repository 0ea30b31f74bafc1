"""Stage ``figures``: every figure of the report, from the committed tables and the caches.

Paper analogues: Table 2/3 heatmaps, Fig. 4 (improvement vs k), inner-vs-output scatter (§6),
Figs. 3/5/6 (best-responding units on chosen regions: ``figures.overlay_categories``), Figs. 8/9
(pop-out maps and best inner units), Fig. 11 (one unit in the pt / sr / sp trunks:
``figures.task_map_category``, sp = :func:`dissect.stages.common.sp_model`), training curves.

File names and titles follow ``stats.top_k`` (``table2_top<k>.png``, "top-<k> mean"); models
are named by :func:`dissect.stages.common.model_label` ("pt", "k0" … "k6", "all"). The folder
``results/figures/paper`` is written through :func:`dissect.stages.common.replacing`: an
interrupted run leaves the committed figures as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.figures")


def k_label(model: str) -> str:
    """A readout's k as displayed in Table 3 / Fig. 4: "0" … "6", "all"
    (:func:`dissect.stages.common.model_label` without its "k")."""
    label = common.model_label(model)
    return label[1:] if label.startswith("k") and label[1:].isdigit() else label


def deepest_numeric(models: list[str]) -> str | None:
    """The fine-tuned readout with the most tuned stages given as a number ("k6" of
    k1 … k6, kall), else the all-stages one, else None (Fig. 5)."""
    numeric = [m for m in models if m[1:].isdigit()]
    if numeric:
        return max(numeric, key=lambda m: int(m[1:]))
    return models[-1] if models else None


def _table(params: Params, *parts: str) -> pd.DataFrame:
    path = params.results.joinpath("tables", *parts)
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def best_region_rows(params: Params, model: str, layer: str, n_units: int = 3,
                     seed: int | None = None) -> list[dict]:
    """Figs. 3/5/6: for each category of ``figures.overlay_categories``, the held-out region with
    the most fixations and the ``n_units`` units with the highest region NSS on it (``seed``:
    the training seed of a fine-tuned model)."""
    from dissect.association import load_associations, region_fixations
    from dissect.cache import open_activations

    dataset, regions = common.inputs(params)
    assoc = load_associations(common.assoc_store(params, model, seed), [layer])[layer]
    store = common.act_store(params, model, seed)
    rows = []
    drop_first = bool(params["data"]["drop_first"])
    for cat in params["figures"]["overlay_categories"]:
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


def seed_mean_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 3 heatmap rows from ``table3_seed_summary.csv``: value = mean over seeds, null
    mean = that mean − the mean excess, ``p_value`` 0 when every seed is significant (the
    heatmap's star) else 1; ``k`` the display label ("0" … "6", "all")."""
    every = summary["n_significant"] == summary["n_seeds"]
    return pd.DataFrame({
        "model": summary["model"], "k": summary["model"].map(k_label),
        "layer": summary["layer"], "category": summary["category"], "stat": summary["stat"],
        "value": summary["value_mean"],
        "null_mean": summary["value_mean"] - summary["excess_mean"],
        "p_value": np.where(every, 0.0, 1.0),
    })


def run_figures(params: Params) -> None:
    k_top = int(params["stats"]["top_k"])
    recorded = {"stats": {"top_k": k_top}, "figures": params["figures"],
                "train": {"ks": list(params["train"]["ks"])},
                "backbone": {"layers": list(params["backbone"]["layers"])},
                "data": {"drop_first": bool(params["data"]["drop_first"])}, "gt": params["gt"],
                "popout": {"models": list(params["popout"]["models"])},
                "seeds": {"train": common.seeds(params), "scene": common.scene_seeds(params)}}
    with (stage_record(params.work, "figures", recorded) as rec,
          common.replacing(common.results(params, "figures", "paper")) as out_dir):
        written = paper_figures(params, out_dir, rec["params"])
        rec["figures"] = written
        log.info("%d figures written", len(written))


def paper_figures(params: Params, out_dir: Path, recorded: dict | None = None) -> list[str]:
    """Write every figure whose inputs exist into ``out_dir``; returns the file names. The sp
    readout's name is added to ``recorded`` (the provenance record's parameters) when used."""
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

    k_top = int(params["stats"]["top_k"])
    top, tk = f"top{k_top}_mean", f"top{k_top}"
    layers = list(params["backbone"]["layers"])
    first = common.seeds(params)[0]  # figures of one fine-tuned model show the first seed
    written: list[str] = []

    def save(fig, name):
        save_figure(fig, out_dir / name)
        written.append(name)

    stats = _table(params, "statistics", "category_statistics.csv")
    if not stats.empty:
        pt = stats[stats["model"] == "pt"]
        save(heatmap_layers(pt, top, title=f"Pretrained trunk: top-{k_top} mean NSS per category"),
             f"table2_{tk}.png")
        save(heatmap_layers(pt, top, excess=True,
                            title=f"Pretrained trunk: top-{k_top} mean NSS − permutation null"),
             f"table2_{tk}_excess.png")
        save(heatmap_layers(pt, "count_above_T", title="Pretrained trunk: units with NSS > T"),
             "table2_count.png")
        summary = _table(params, "statistics", "table3_seed_summary.csv")
        if not summary.empty:
            by_k = seed_mean_rows(summary)
            n = int(summary["n_seeds"].max())
            over = f"mean of {n} seeds, * = p < 0.05 in every seed" if n > 1 else "one seed"
            save(heatmap_k(by_k, top, title=f"{layers[-1]}: top-{k_top} mean NSS vs k "
                                            f"fine-tuned ({over})"),
                 f"table3_{tk}.png")
            save(heatmap_k(by_k, top, excess=True,
                           title=f"{layers[-1]}: top-{k_top} mean − null vs k fine-tuned "
                                 f"({over})"),
                 f"table3_{tk}_excess.png")
        imp = _table(params, "statistics", "fig4_improvement_summary.csv")
        if not imp.empty:
            imp = imp.assign(k=imp["model"].map(k_label))
            n = int(imp["n_seeds"].max())
            spread = f"bars: mean of {n} seeds, whiskers: min–max" if n > 1 else "one seed"
            save(improvement_bars(imp, value="improvement_pct_mean", top_k=k_top,
                                  low="improvement_pct_min", high="improvement_pct_max",
                                  ylabel=f"% improvement of top-{k_top} mean over k0",
                                  title=spread),
                 "fig4_improvement.png")
            save(improvement_bars(imp, value="excess_improvement_pct_mean", top_k=k_top,
                                  low="excess_improvement_pct_min",
                                  high="excess_improvement_pct_max",
                                  ylabel=f"% improvement of (top-{k_top} mean − null)",
                                  title=spread),
                 "fig4_improvement_excess.png")
        save(unit_overlay_grid(best_region_rows(params, "pt", layers[-1]),
                               title=f"Best {layers[-1]} units of the pretrained trunk"),
             "fig3_units_pretrained.png")
        tuned = [m for m in common.model_names(params) if common.seeded(m)]
        m = deepest_numeric(tuned)
        if m is not None:
            save(unit_overlay_grid(best_region_rows(params, m, layers[-1], seed=first),
                                   title=f"Best {layers[-1]} units after fine-tuning "
                                         f"({common.model_label(m)}, seed {first})"),
                 "fig5_units_finetuned.png")
    io = _table(params, "inner_output", "inner_output.csv")
    sp = _table(params, "inner_output", "inner_output_spearman.csv")
    if not io.empty:  # the scatter of the first training seed (every seed: the tables)
        io, sp = io[io["seed"] == first], sp[sp["seed"] == first]
    for model in io["model"].unique() if not io.empty else []:
        r = sp[sp["model"] == model].iloc[0]
        label = common.model_label(model)
        save(inner_vs_output(io[io["model"] == model], r["r_s"], r["p_value"], top_k=k_top,
                             title=f"Inner vs output saliency ({label}, seed {first})"),
             f"inner_vs_output_{label}.png")
        if "inner_excess" in io and "r_s_excess" in r:  # the null-corrected inner saliency
            save(inner_vs_output(io[io["model"] == model], r["r_s_excess"], r["p_value_excess"],
                                 x="inner_excess", top_k=k_top,
                                 title=f"Inner (− null) vs output saliency ({label}, seed "
                                       f"{first})"),
                 f"inner_vs_output_excess_{label}.png")
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
        if "model" in curves:
            curves = curves.assign(model=curves["model"].map(common.model_label))
        save(training_curves(curves, title="Saliency readouts: training loss (−NSS) and "
                                           "validation NSS"), "training_curves.png")
    scene_seed = common.scene_seeds(params)[0]
    if (common.scene_dir(params, scene_seed) / "model.pt").is_file():
        sp_name = common.sp_model(params)
        if recorded is not None:
            recorded["sp_model"] = sp_name
        save(_task_maps(params, sp_name), "fig11_task_maps.png")
    return written


def _short(dimension: str) -> str:
    """Row label of a pop-out dimension that fits beside a panel."""
    return dimension.replace("conjunction_", "conj.\n").replace("_", "×")


def _popout_examples(params: Params):
    from dissect.data.popout import load_set
    from dissect.figures import popout_examples
    from dissect.models.base import load_model
    from dissect.stages.popout import arrays_dir

    arrays = load_set(arrays_dir(params))
    first = {}
    for a in arrays:
        first.setdefault(a.dimension, a)
    models = {name: load_model(name) for name in params["popout"]["models"]}
    readout = _readout(params, "k0") if "k0" in common.model_names(params) else None
    rows, labels = [], []
    for dim, a in first.items():
        maps = {name: m.saliency_map(a.image) for name, m in models.items()}
        if readout is not None:
            maps["readout k0"] = readout.predict(a.image)
        rows.append((a.image, a.mask, maps))
        labels.append(_short(dim))
    return popout_examples(rows, labels, title="Pop-out arrays and model maps")


def _readout(params: Params, name: str, base=None):
    """The readout ``name`` of the first training seed, its ``nn.Module`` in eval mode (None
    when not trained); ``base``: the pretrained backbone when the caller holds it already."""
    path = common.readout_path(params, name, common.seeds(params)[0])
    if not path.is_file():
        return None
    from dissect.models.base import load_model

    base = common.backbone(params) if base is None else base
    return load_model("readout", checkpoint=path, backbone=base).readout


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


def _task_maps(params: Params, sp_name: str):
    """Fig. 11: the sp trunk's best unit for ``figures.task_map_category`` (highest mean region
    NSS over that category's held-out regions) on its best region, in the pt / sr / sp trunks."""
    import torch

    from dissect.association import load_associations
    from dissect.capture import LayerCapture
    from dissect.data import density_map
    from dissect.figures import task_maps
    from dissect.models.base import load_model
    from dissect.task_compare import finetuned_trunk

    dataset, _ = common.inputs(params)
    layer = common.layer_names(params)[-1]
    base = common.backbone(params)
    seed, scene_seed = common.seeds(params)[0], common.scene_seeds(params)[0]
    scene_path = common.scene_dir(params, scene_seed) / "model.pt"
    scene = load_model("scene_classifier", checkpoint=scene_path, backbone=base)
    trunks = {"pt": base, "sr": scene.classifier.trunk_backbone()}
    sp = _readout(params, sp_name, base)
    if sp is not None:
        trunks["sp"] = finetuned_trunk(sp, "sp")
    # the unit and region: the sp trunk's best unit for the category on its best region
    category = str(params["figures"]["task_map_category"])
    assoc = load_associations(common.assoc_store(params, sp_name, seed), [layer])[layer]
    cols = np.flatnonzero(assoc["category"].values == category)
    if cols.size == 0:
        from dissect.errors import DataError

        raise DataError(common.assoc_store(params, sp_name, seed),
                        f"no held-out region of figures.task_map_category {category!r}")
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
                     title=f"{layer} unit {unit} in the pt / sr / sp trunks ({category}, "
                           f"{image_id}; sp = {common.model_label(sp_name)} seed {seed}, sr "
                           f"scene seed {scene_seed})")
