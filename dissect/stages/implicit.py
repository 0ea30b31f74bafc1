"""Stages ``extract-implicit`` and ``implicit``: implicit saliency (Sun, Prabhushankar & AlRegib
2020) of the pretrained trunk on the held-out images — per layer against the feed-forward map,
Grad-CAM and Guided Backprop (the paper's Table 1 and Fig. 4), and its gradient units dissected
beside the activation units.

1. **Gradient statistics, cached** by the stage ``extract-implicit`` (``work/act/implicit.zarr``,
   :func:`run_extract_implicit`): for every held-out image and every layer of
   ``implicit.layers``, µ and V over the classes of ``R_i = |∂J_i/∂f|`` per unit and position
   (:func:`dissect.models.implicit.statistics_backbone` through the activation cache: one
   batched backward per chunk of ``implicit.chunk_size`` classes gives every layer; float32;
   resumable, locked and checksummed like activations). ``implicit`` reads it
   (:func:`checked_store`).
2. **Table 1 / Fig. 4** (:func:`dissect.implicit_analysis.layer_records`): NSS and CC of
   ``S_C`` (from the cache), ``S_F`` (from the ``extract`` stage's activation store), Grad-CAM at
   each layer and Guided Backprop, with image-bootstrap intervals (``stats.n_boot``,
   ``stats.ci_*``), and the paired gain of ``S_C`` over ``S_F`` per layer →
   ``results/tables/implicit/table1_layers``, ``fig4_gain``,
   ``results/figures/implicit/fig4_gain.png``.
3. **Gradient units** (He et al.'s Eq. 1 on the µ maps, the ``statistics`` stage's category
   statistics with the ``stats`` parameters) beside the activation units of the same layers
   (:func:`dissect.implicit_analysis.gradient_vs_activation`) →
   ``results/tables/implicit/gradient_statistics`` (tidy) and
   ``gradient_vs_activation_<stat>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.implicit")


def gradient_store(params: Params) -> Path:
    return common.work(params, "act", "implicit.zarr")


def implicit_layers(params: Params) -> list[str]:
    """``implicit.layers``, each of which must be in ``backbone.layers`` (its activations,
    for ``S_F`` and the comparison, are the ``extract`` stage's)."""
    from dissect.errors import DataError

    layers = [str(n) for n in params["implicit"]["layers"]]
    unknown = [n for n in layers if n not in common.layer_names(params)]
    if unknown:
        raise DataError("implicit.layers", f"{unknown} not in backbone.layers "
                                           f"{common.layer_names(params)}: their activations are "
                                           "not cached")
    return layers


def statistics_kwargs(params: Params) -> dict:
    """``classes``, ``chunk_size`` of the implicit models and the statistics cache."""
    c = params["implicit"]["classes"]
    return {"classes": None if c is None else int(c),
            "chunk_size": int(params["implicit"]["chunk_size"])}


def run_extract_implicit(params: Params) -> Path:
    """Stage ``extract-implicit``: µ and V of the class gradients at every layer of
    ``implicit.layers`` for the held-out images → ``work/act/implicit.zarr`` (float32, one
    Dask task per image batch, resumable)."""
    from dissect.models.implicit import statistics_backbone
    from dissect.stages.extract import extract_store

    im = params["implicit"]
    recorded = {**{f"implicit.{k}": im[k] for k in ("layers", "classes", "chunk_size")},
                "backbone": params["backbone"],
                "extract.batch_size": params["extract"]["batch_size"],
                "device": params.get("device", "auto")}
    with stage_record(params.work, "extract-implicit", recorded) as rec:
        dataset, _ = common.inputs(params)
        heldout = common.ids_of(params, "heldout")
        dev = common.device(params)
        sbb = statistics_backbone(common.backbone(params), implicit_layers(params),
                                  **statistics_kwargs(params))
        store = extract_store(params, dataset.subset(heldout), sbb, list(sbb.layers),
                              gradient_store(params), dtype="float32", device=dev)
        rec.update(weights_id=sbb.weights_id, n_images=len(heldout), device=str(dev),
                   store=str(store.relative_to(params.work)))
    return store


def checked_store(params: Params, sbb, ids: list[str]) -> Path:
    """The gradient-statistics store, refused unless it holds exactly these statistics
    (``weights_id``), preprocessing and images, complete (rerun ``extract-implicit``)."""
    from dissect.cache import image_ids_hash, store_metadata
    from dissect.errors import DataError

    store = gradient_store(params)
    meta = store_metadata(store)
    problems = []
    if meta.get("weights_id") != sbb.weights_id:
        problems.append(f"statistics {meta.get('weights_id')} ≠ {sbb.weights_id}")
    if meta.get("preprocess") != sbb.preprocess.to_dict():
        problems.append("another preprocessing")
    if meta.get("image_ids_sha256") != image_ids_hash(ids):
        problems.append("other images")
    if list(meta.get("layers", [])) != list(sbb.layers):
        problems.append(f"layers {meta.get('layers')} ≠ {list(sbb.layers)}")
    if not meta.get("complete"):
        problems.append(f"incomplete ({meta['n_done']}/{meta['n_batches']} batches)")
    if problems:
        raise DataError(store, "; ".join(problems) + ": rerun `dissect extract-implicit`")
    return store


def run_implicit(params: Params) -> pd.DataFrame:
    import dask
    from threadpoolctl import threadpool_limits
    from tqdm.dask import TqdmCallback

    from dissect.association import associate, save_associations
    from dissect.figures import implicit_gain_figure, save_figure
    from dissect.image_means import means_table, paired_differences
    from dissect.implicit_analysis import METHODS, gradient_vs_activation, layer_records
    from dissect.models.base import load_model
    from dissect.models.implicit import statistics_backbone
    from dissect.stages.associate import unit_means_table
    from dissect.stages.statistics import layer_statistics
    from dissect.stages.statistics import statistics_kwargs as stats_kwargs
    from dissect.tables import write_table

    im, s = params["implicit"], params["stats"]
    drop = bool(params["data"]["drop_first"])
    conventions = str(params["evaluate"]["conventions"])
    gt_sigma = float(params["gt"]["sigma_deg"]) * float(params["gt"]["px_per_degree"])
    boot = dict(n_boot=int(s["n_boot"]), seed=int(s["seed"]), level=float(s["ci_level"]),
                method=str(s["ci_method"]))
    recorded = {"implicit": im, "stats": s, "gt": params["gt"], "data.drop_first": drop,
                "evaluate.conventions": conventions, "device": params.get("device", "auto")}
    with stage_record(params.work, "implicit", recorded) as rec:
        dataset, regions = common.inputs(params)
        heldout = common.ids_of(params, "heldout")
        layers = implicit_layers(params)
        kw = statistics_kwargs(params)
        bb = common.backbone(params)
        bb.model.to(common.device(params))
        n_out = _n_outputs(bb)

        # 1. µ and V of every layer: the extract-implicit stage's cache (checked: the same
        #    statistics of the same images, complete)
        sbb = statistics_backbone(bb, layers, **kw)
        store = checked_store(params, sbb, heldout)

        # 2. Table 1 and Fig. 4 (Grad-CAM / Guided Backprop on the trunk's own network: the
        #    statistics' wrapper is not running now)
        gradcam = {ly: load_model("gradcam", backbone=bb, layer=ly) for ly in layers}
        guided = load_model("guided_backprop", backbone=bb)
        records = layer_records(
            dataset, heldout, gradient_store=store, activation_store=common.act_store(params, "pt"),
            layers=layers, gradcam=gradcam, guided=guided, gt_sigma_px=gt_sigma,
            drop_first=drop, conventions=conventions, variance_norm=im["variance_norm"],
            progress=common.progress(params))
        records.to_csv(common.work(params, "implicit", "per_image.csv"), index=False)
        table1 = means_table(records, ["layer", "method"], ["nss", "cc"], **boot)
        gain = paired_differences(records[records["method"].isin(METHODS[:2])], ["layer"],
                                  "method", METHODS[0], METHODS[1], ["nss", "cc"], **boot)

        # 3. the gradient units (µ maps) by Eq. 1 and the category statistics
        with common.scheduler(params) as client:
            assoc = associate(store, dataset, regions, layers=layers, image_ids=heldout,
                              drop_first=drop, chunk_images=int(params["dask"]["chunk_images"]),
                              scheduler=client, progress=common.progress(params),
                              desc="associate gradient units")
        out_assoc = common.work(params, "implicit", "assoc.zarr")
        save_associations(assoc, out_assoc)
        unit_means_table(assoc).to_csv(out_assoc.with_name("assoc_unit_means.csv"), index=False)
        skw = stats_kwargs(params)
        # one Dask task per layer, as the statistics stage does for the activation units
        tasks = [dask.delayed(layer_statistics)(out_assoc, ly, skw) for ly in layers]
        with common.scheduler(params) as client, threadpool_limits(limits=1, user_api="blas"):
            kw_compute = {} if client is not None else {"scheduler": "threads"}
            with TqdmCallback(desc="gradient unit statistics", unit="task",
                              disable=not common.progress(params)):
                grad_stats = pd.concat(dask.compute(*tasks, **kw_compute), ignore_index=True)
        grad_stats.insert(0, "model", "pt_gradients")
        act_stats = pd.read_csv(common.results(params, "tables", "statistics",
                                               "category_statistics.csv"))
        act_stats = act_stats[(act_stats["model"] == "pt") & act_stats["layer"].isin(layers)]

        ci = f"{float(s['ci_level']):.0%} image-bootstrap interval ({s['ci_method']}, " \
             f"{s['n_boot']} resamples)"
        top = f"top{skw['k']}_mean"
        with common.replacing(common.results(params, "tables", "implicit")) as out:
            out.mkdir()
            pivot = table1.pivot_table(index=["layer"], columns=["metric", "method"],
                                       values="value", sort=False)
            pivot.columns = [f"{m} {meth}" for m, meth in pivot.columns]
            write_table(table1, out / "table1_layers", markdown=pivot.reset_index(),
                        caption=f"NSS and CC of implicit saliency S_C, its feed-forward "
                                f"counterpart S_F, Grad-CAM (each at the layer) and Guided "
                                f"Backprop (input gradients, layer 'input') on the held-out "
                                f"OSIE images (n = {len(heldout)}), {bb.name} "
                                f"({params['backbone']['weights']} weights), "
                                f"{_classes_text(kw['classes'], n_out)}; V normalised "
                                f"{im['variance_norm']}. Intervals ({ci}) in the CSV. Command: "
                                "`dvc repro implicit`.")
            write_table(gain, out / "fig4_gain",
                        caption=f"Gain of S_C over S_F per layer: the mean over images of "
                                f"(S_C − S_F) NSS and CC on the same image, with its paired {ci}.")
            write_table(grad_stats, out / "gradient_statistics")
            for stat in (top, "count_above_T"):
                write_table(gradient_vs_activation(grad_stats, act_stats, stat),
                            out / f"gradient_vs_activation_{stat}",
                            caption=f"{stat} per category and layer: the gradient units (µ, "
                                    "the mean |∂J_i/∂f| over the classes, per unit) beside the "
                                    "activation units of the same layer, each with its excess "
                                    "over its own label-permutation null "
                                    f"({skw['n_null']} permutations) and {ci}; "
                                    "excess_difference > 0: the gradient units encode the "
                                    "category more, relative to chance.")
        with common.replacing(common.results(params, "figures", "implicit")) as fig_out:
            save_figure(implicit_gain_figure(table1, gain, layers), fig_out / "fig4_gain.png")
        rec.update(n_images=len(heldout), layers=layers, n_classes=kw["classes"] or n_out,
                   weights_id=sbb.weights_id,
                   store=str(store.relative_to(params.work)))
    return table1


def _classes_text(classes: int | None, n_out: int) -> str:
    return (f"every output class of the network (N = {n_out})" if classes is None
            else f"the first N = {classes} of its {n_out} classes")


def _n_outputs(bb) -> int:
    """The network's number of outputs (classes), from one forward pass of a blank image."""
    import torch

    p = next(bb.model.parameters())
    size = bb.preprocess.size or (224, 224)
    with torch.no_grad():
        return int(bb.model(torch.zeros(1, 3, *size, dtype=p.dtype, device=p.device)).shape[1])
