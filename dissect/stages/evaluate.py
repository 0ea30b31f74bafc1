"""Stage ``evaluate``: every saliency model on one scorecard (:mod:`dissect.evaluation`) on the
held-out OSIE images, with image-bootstrap intervals.

Models (``evaluate.models``, each built through the registry :func:`dissect.models.base.
load_model`): ``uniform``; ``centre_bias`` and ``gold_standard`` (fitted by the ``baselines``
stage on training images); the classical models; ``readouts`` — the He et al. readout of every
k of ``train.ks`` and every training seed (``readout_k<k>_s<seed>``); ``deepgaze`` — DeepGaze I
of the ``deepgaze`` stage with the centre-bias prior; ``mlnet`` — the ``mlnet`` stage's model;
``implicit_saliency`` and ``gradcam`` — implicit saliency ``S_C`` and Grad-CAM of the pretrained
trunk (:func:`build_models`).

Map metrics (NSS, CC, SIM, KLD, AUC-Judd, AUC-Borji, sAUC) score each model's raw map with the
conventions ``evaluate.conventions`` (``dissect`` or ``mit``, docs/metrics.md). Log-likelihood,
information gain over the centre bias and IG explained (over the gold standard's IG) score
densities: the baselines and DeepGaze I are densities already; a map-only model (classical,
readout) is converted by :class:`dissect.models.density.SaliencyDensity` — blur, power and
centre-bias mixture fitted by log-likelihood on the first ``evaluate.density_train_images``
training images (never on held-out).

Scoring runs as one Dask task per chunk of ``dask.chunk_images`` held-out images
(:func:`dissect.evaluation.score_chunk`, a pure function), locally on two threads or on the
``dask.scheduler`` cluster; the chunks' records are combined by :func:`dissect.evaluation.
summarise` (one set of ``stats.n_boot`` image resamples for every model: paired intervals).

Outputs: ``results/tables/evaluate/summary.csv`` (tidy: model, metric, value, ci_low, ci_high,
n_images, ci_method), ``leaderboard.{csv,md}`` (sorted by IG explained), ``density_conversion
.csv`` (the fitted conversions), ``results/figures/evaluate/leaderboard.png``; the per-image
table in ``work/evaluate/per_image.csv``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.evaluate")

CLASSICAL = ("itti", "gbvs", "bms", "spectral_residual", "fine_grained")


def fit_density(model, dataset, ids: list[str], centre_bias, drop_first: bool, *,
                progress: bool = False, desc: str = "density fit"):
    """``model`` as a :class:`~dissect.models.density.SaliencyDensity` fitted on ``ids``
    (``progress``: a tqdm bar over the images' maps, named ``desc``)."""
    from tqdm.auto import tqdm

    from dissect.models.base import StimulusImage
    from dissect.models.density import SaliencyDensity, fit_saliency_density

    maps, fix, base = {}, {}, {}
    for i in tqdm(ids, desc=desc, unit="image", leave=False, disable=not progress):
        stim = StimulusImage(i, dataset.load_image(i))
        maps[i] = model.saliency_map(stim)
        fix[i] = dataset.points(i, drop_first=drop_first)
        base[i] = centre_bias.log_density(stim.size)
    sigma, gamma, weight, table = fit_saliency_density(maps, fix, base)
    return SaliencyDensity(model, centre_bias, sigma, gamma, weight, table)


def build_models(params: Params, dataset, centre_bias, gold, *,
                 fit: bool = True) -> tuple[dict[str, Any], list]:
    """label → model of ``evaluate.models`` (map-only models with their fitted density; with
    ``fit=False`` the raw map models, no fitting) and the rows of the density-conversion table.

    ``implicit_saliency`` (``S_C`` at the first of ``implicit.layers``, reading the held-out
    images' statistics from the ``extract-implicit`` stage's cache; the density-fit training
    images are computed) and ``gradcam`` (at
    ``implicit.gradcam_layer``) each get their own copy of the trunk: they hook its modules
    while they run (under their network's lock), and Dask runs models on two threads: a trunk of
    their own keeps them from blocking, or being blocked by, the readouts on the shared one."""
    from dissect.models.base import load_model
    from dissect.stages.deepgaze import model_path
    from dissect.stages.implicit import gradient_store, implicit_layers
    from dissect.stages.implicit import statistics_kwargs as implicit_kwargs
    from dissect.stages.mlnet import model_path as mlnet_path

    e = params["evaluate"]
    drop = bool(params["data"]["drop_first"])
    fit_ids = common.ids_of(params, "train")[: int(e["density_train_images"])]
    models: dict[str, Any] = {}
    conversions = []

    def with_density(label: str, model) -> None:
        if not fit:
            models[label] = model
            return
        dm = fit_density(model, dataset, fit_ids, centre_bias, drop,
                         progress=common.progress(params), desc=f"density fit {label}")
        t = dm.fit_table
        best = t["log_likelihood"].max()
        # still on the grid's upper edge after the fit's extensions: said, never hidden
        edge = bool((dm.sigma > 0 and dm.sigma == t["sigma"].max())
                    or dm.gamma == t["gamma"].max())
        if edge:
            log.warning("%s: the density conversion's optimum is on the grid's edge "
                        "(σ=%g, γ=%g)", label, dm.sigma, dm.gamma)
        conversions.append({"model": label, "sigma_px": dm.sigma, "exponent": dm.gamma,
                            "centre_bias_weight": dm.weight,
                            "train_log_likelihood_nats": float(best),
                            "n_images": len(fit_ids), "n_grid_points": len(t),
                            "on_grid_edge": edge})
        log.info("%s: density conversion σ=%g px, γ=%g, w=%.3f", label, dm.sigma, dm.gamma,
                 dm.weight)
        models[label] = dm

    bb = None
    dev = common.device(params)
    for name in e["models"]:
        if name == "uniform":
            models[name] = load_model("uniform")
        elif name == "centre_bias":
            models[name] = centre_bias
        elif name == "gold_standard":
            models[name] = gold
        elif name in CLASSICAL:
            with_density(name, load_model(name))
        elif name == "readouts":
            bb = bb or common.backbone(params)
            for seed in common.seeds(params):
                for k in params["train"]["ks"]:
                    label = f"readout_k{k}_s{seed}"
                    m = load_model("readout", checkpoint=common.readout_path(params, f"k{k}",
                                                                             seed),
                                   backbone=bb, name=label)
                    m.readout.to(dev)
                    with_density(label, m)
        elif name == "mlnet":
            bb = bb or common.backbone(params)
            with_density(name, load_model("mlnet", checkpoint=mlnet_path(params), backbone=bb,
                                          device=dev))
        elif name == "deepgaze":
            bb = bb or common.backbone(params)
            models[name] = load_model("deepgaze", checkpoint=model_path(params), backbone=bb,
                                      prior=centre_bias, name="deepgaze", device=dev)
        elif name == "implicit_saliency":
            own = common.backbone(params)
            own.model.to(dev)
            with_density(name, load_model(
                "implicit_saliency", backbone=own, layer=implicit_layers(params)[0],
                variance_norm=params["implicit"]["variance_norm"], name=name,
                store=gradient_store(params), images=dataset, **implicit_kwargs(params)))
        elif name == "gradcam":
            own = common.backbone(params)
            own.model.to(dev)
            with_density(name, load_model("gradcam", backbone=own, name=name,
                                          layer=str(params["implicit"]["gradcam_layer"])))
    return models, conversions


def leaderboard_markdown(summary: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with IG explained's interval: one row per model, sorted by IG
    explained (:func:`dissect.evaluation.leaderboard`)."""
    from dissect.evaluation import leaderboard

    board = leaderboard(summary)
    ige = summary[summary["metric"] == "ig_explained"].set_index("model")
    cells = []
    for m, v in zip(board["model"], board["ig_explained"], strict=True):
        if m in ige.index and np.isfinite(v):
            lo, hi = ige.loc[m, "ci_low"], ige.loc[m, "ci_high"]
            cells.append(f"{v:.3f} [{lo:.3f}, {hi:.3f}]")
        else:
            cells.append("")
    out = board.copy()
    out["ig_explained"] = cells
    return out


def run_evaluate(params: Params) -> pd.DataFrame:
    import dask
    import torch

    from dissect.evaluation import per_image_table, score_chunk, summarise
    from dissect.figures import leaderboard_figure, save_figure
    from dissect.stages.baselines import load_baselines
    from dissect.tables import write_table

    e, s = params["evaluate"], params["stats"]
    drop = bool(params["data"]["drop_first"])
    gt_sigma = float(params["gt"]["sigma_deg"]) * float(params["gt"]["px_per_degree"])
    recorded = {"evaluate": e, "device": params.get("device", "auto"),
                "stats.n_boot": s["n_boot"], "stats.ci_level": s["ci_level"],
                "stats.ci_method": s["ci_method"], "gt": params["gt"]}
    previous_threads = torch.get_num_threads()
    with stage_record(params.work, "evaluate", recorded) as rec:
        dataset, _ = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        cb, gold = load_baselines(params, dataset)
        models, conversions = build_models(params, dataset, cb, gold)
        step = int(params["dask"]["chunk_images"])
        chunks = [ids[k:k + step] for k in range(0, len(ids), step)]
        tasks = [dask.delayed(score_chunk)(
            models, dataset, c, centre_bias=cb, gold=gold, gt_sigma_px=gt_sigma,
            negative_pool=ids, seed=int(e["seed"]), drop_first=drop,
            auc_borji_splits=int(e["auc_borji_splits"]), conventions=str(e["conventions"]))
            for c in chunks]
        log.info("scoring %d models on %d held-out images in %d chunks", len(models), len(ids),
                 len(chunks))
        from tqdm.dask import TqdmCallback

        torch.set_num_threads(1)  # two Dask threads, one torch thread each
        try:
            with common.scheduler(params) as client:
                kw = {} if client is not None else {"scheduler": "threads", "num_workers": 2}
                with TqdmCallback(desc="evaluate", unit="task",
                                  disable=not common.progress(params)):
                    parts = dask.compute(*tasks, **kw)
        finally:
            torch.set_num_threads(previous_threads)
        records = pd.concat(parts, ignore_index=True)
        summary = summarise(records, n_boot=int(s["n_boot"]), seed=int(e["seed"]),
                            level=float(s["ci_level"]), method=str(s["ci_method"]))
        per_image = per_image_table(records)
        per_image.to_csv(common.work(params, "evaluate", "per_image.csv"), index=False)
        caption = (f"Held-out OSIE images (n = {len(ids)}); conventions: {e['conventions']}. "
                   "IG explained = IG(model) / IG(gold standard), both over the centre bias, "
                   f"with its {float(s['ci_level']):.0%} image-bootstrap interval "
                   f"({s['ci_method']}, {s['n_boot']} resamples); LL and IG in bits/fixation; "
                   "map-only models scored by LL/IG through their density conversion "
                   "(density_conversion.csv). Command: `dvc repro evaluate`.")
        board = leaderboard_markdown(summary)
        with common.replacing(common.results(params, "tables", "evaluate")) as folder:
            folder.mkdir()
            summary.to_csv(folder / "summary.csv", index=False)
            pd.DataFrame(conversions).to_csv(folder / "density_conversion.csv", index=False)
            write_table(board, folder / "leaderboard", caption=caption)
        with common.replacing(common.results(params, "figures", "evaluate")) as folder:
            folder.mkdir()
            save_figure(leaderboard_figure(summary, order=list(board["model"])),
                        folder / "leaderboard.png")
        rec.update(models=list(models), n_images=len(ids), n_chunks=len(chunks))
    return summary
