"""Stage ``scene``: task vs data (He et al. §8). The same pretrained trunk fine-tuned on the
same training images for saliency (sp: the readout with the top ``scene.tuned_stages`` stages
tuned, :func:`dissect.stages.common.sp_model`; k = 1 by default) and for scene recognition (sr:
the same stages + 3 FC layers of sizes ``scene.hidden`` with dropout ``scene.dropout``,
class-weighted cross-entropy), compared with the pretrained trunk (pt) on the held-out images:
- scene accuracy, per-class recall, confusion matrix;
- the sr trunk's last-layer units, cached and associated like the others (Table 7 and its
  permutation test are computed by the ``statistics`` stage, so that a change of T reruns
  statistics only);
- Table 8: NSS of the mean of all last-layer maps, scene classified correctly vs wrongly.

One scene model per ``scene.seeds`` entry, paired by position with ``train.seeds`` (sp of
training seed i against sr of scene seed i); outputs under ``work/scene/s<scene seed>/``.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.scene")


def keep_trained_classes(labels, train_ids):
    """Drop (and log) scene classes with no training image: a classifier cannot learn them and
    class-weighted cross-entropy is undefined for them. Only happens on small subsets."""
    from dissect.data.scenes import SceneLabels

    present = set(labels.scenes([i for i in train_ids if i in labels]))
    missing = [c for c in labels.classes if c not in present]
    if not missing:
        return labels
    log.warning("scene classes without training images are dropped: %s", ", ".join(missing))
    table = labels.table[labels.table["scene"].isin(present)].reset_index(drop=True)
    counts = labels.table["scene"].value_counts()
    dropped = pd.concat([labels.dropped, pd.DataFrame(
        {"scene": missing, "n_images": [int(counts[c]) for c in missing]})], ignore_index=True)
    return SceneLabels(table=table, classes=sorted(present), dropped=dropped,
                       min_images=labels.min_images, source=labels.source)


def tuned_stage_count(readout) -> int:
    """Number of trunk stages a saliency readout fine-tuned (its ``k``; ``"all"`` = every stage)."""
    return int(readout.n_stages) if str(readout.k) == "all" else int(readout.k)


def run_scene(params: Params) -> None:
    """Train one scene model per ``scene.seeds`` entry and compare it with the sp readout of the
    training seed at the same position (``train.seeds``): every table gets a ``seed`` column
    (the training seed of the pair; the scene seed is in ``scene_seed``)."""
    import torch

    from dissect.data.scenes import load_scenes
    from dissect.figures import confusion, save_figure
    from dissect.tables import columns_first, write_table
    from dissect.training import split_train_val

    sc = params["scene"]
    sp_name = common.sp_model(params)  # fails before any training when train.ks lacks it
    pairs = list(zip(common.seeds(params), common.scene_seeds(params), strict=True))
    drop_first = bool(params["data"]["drop_first"])
    t = params["train"]
    recorded = {"scene": sc, "sp_model": sp_name, "data": {"drop_first": drop_first},
                "train": {"val_fraction": t["val_fraction"], "val_seed": t["val_seed"],
                          "seeds": t["seeds"], "threads": t["threads"]}}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(t["threads"]))
    try:
        with (stage_record(params.work, "scene", recorded) as rec,
              common.replacing(common.results(params, "tables", "scene")) as tables_dir,
              common.replacing(common.results(params, "figures", "scene_confusion.png"))
              as cm_png):
            rec["device"] = str(common.device(params, float64=True))
            dataset, regions = common.inputs(params)
            labels = load_scenes(params.path(params["data"]["scenes"]),
                                 min_images=int(sc["min_images"]), dataset=dataset)
            train_ids = [i for i in common.ids_of(params, "train") if i in set(labels.ids)]
            heldout = [i for i in common.ids_of(params, "heldout") if i in set(labels.ids)]
            fit_ids, val_ids = split_train_val(train_ids, float(t["val_fraction"]),
                                               int(t["val_seed"]))
            labels = keep_trained_classes(labels, fit_ids)
            keep = set(labels.ids)
            fit_ids, val_ids = [i for i in fit_ids if i in keep], [i for i in val_ids if i in keep]
            heldout = [i for i in heldout if i in keep]
            parts: dict[str, list[pd.DataFrame]] = {}
            for seed, scene_seed in pairs:
                out = one_seed(params, dataset, regions, labels, fit_ids, val_ids, heldout,
                               seed=seed, scene_seed=scene_seed, sp_name=sp_name)
                for name, df in out.items():
                    parts.setdefault(name, []).append(
                        df.assign(seed=seed, scene_seed=scene_seed))
                if seed == pairs[0][0]:  # the figure shows the first pair
                    cm_first = out["scene_confusion"].set_index("true")
                rec[common.seed_label(seed)] = {
                    "scene_seed": scene_seed,
                    "accuracy": float(out["scene_accuracy"]["accuracy"].iloc[0])}
            for name, frames in parts.items():
                df = pd.concat(frames, ignore_index=True)
                write_table(columns_first(df, ["seed", "scene_seed"]), tables_dir / name)
            fig = confusion(cm_first, normalize=True)
            fig.axes[0].set_title(f"{fig.axes[0].get_title()} (training seed {pairs[0][0]}, "
                                  f"scene seed {pairs[0][1]})".strip())
            save_figure(fig, cm_png)
            rec.update(n_heldout=len(heldout), n_seeds=len(pairs))
    finally:
        torch.set_num_threads(previous_threads)


def one_seed(params: Params, dataset, regions, labels, fit_ids, val_ids, heldout, *, seed: int,
             scene_seed: int, sp_name: str) -> dict[str, pd.DataFrame]:
    """One (training seed, scene seed) pair: train the scene model, evaluate it, cache and
    associate its last layer (``scene/s<scene_seed>/``), and Table 8 against the seed's sp
    readout. Returns the tables ``scene_accuracy, scene_recall, scene_confusion,
    table8_mean_map_nss``."""
    from dissect.association import associate, save_associations
    from dissect.errors import DataError
    from dissect.models.base import load_model
    from dissect.scene import evaluate_scene_model, save_scene_model, train_scene_model
    from dissect.stages.extract import extract_store
    from dissect.task_compare import finetuned_trunk, per_image_mean_nss, table8
    from dissect.training import deterministic

    sc = params["scene"]
    last = common.layer_names(params)[-1]
    drop_first = bool(params["data"]["drop_first"])
    folder = common.scene_dir(params, scene_seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = common.backbone(params)
    dev = common.device(params, float64=True)
    sp_path = common.readout_path(params, sp_name, seed)
    sp_model = load_model("readout", checkpoint=sp_path, backbone=base).readout  # its nn.Module
    log.info("scene model, scene seed %d (paired with training seed %d)", scene_seed, seed)
    with deterministic():
        result = train_scene_model(
            base, dataset, labels, fit_ids, val_ids, epochs=int(sc["epochs"]),
            lr=float(sc["lr"]), batch_size=int(sc["batch_size"]), seed=scene_seed,
            patience=int(sc["patience"]), tune_stages=sc["tuned_stages"],
            hidden=[int(h) for h in sc["hidden"]], dropout=float(sc["dropout"]),
            weight_decay=float(sc["weight_decay"]), monitor=str(sc["monitor"]),
            cache_dir=common.work(params, "prefix_cache"), log_path=folder / "history.csv",
            device=dev, progress=common.progress(params),
        )  # fmt: skip
    n_sr, n_sp = len(result.model.tune_stage_names), tuned_stage_count(sp_model)
    if n_sr != n_sp:  # the comparison is only fair when both tasks tuned the same stages
        raise DataError(sp_path, f"the saliency readout {sp_name} tuned {n_sp} stage(s), the "
                                 f"scene model {n_sr} (scene.tuned_stages)")
    save_scene_model(result.model, folder / "model.pt")
    acc, recall, cm, preds = evaluate_scene_model(result.model, dataset, labels, heldout,
                                                  cache_dir=common.work(params, "prefix_cache"),
                                                  device=dev, progress=common.progress(params))
    preds.to_csv(folder / "predictions.csv", index=False)
    log.info("scene seed %d: accuracy on %d held-out images %.3f", scene_seed, len(heldout), acc)

    # the three trunks; sr's last layer cached and associated like the others
    trunks = {"pt": base, "sp": finetuned_trunk(sp_model, "sp"),
              "sr": result.model.trunk_backbone()}
    sr_store = folder / "act_sr.zarr"
    extract_store(params, dataset.subset(common.ids_of(params, "heldout")), trunks["sr"],
                  [last], sr_store, device=dev)
    with common.scheduler(params) as client:
        sr_assoc = associate(sr_store, dataset, regions, drop_first=drop_first, scheduler=client,
                             progress=common.progress(params), desc="associate sr")
    save_associations(sr_assoc, folder / "assoc_sr.zarr")

    correct = preds.set_index("image")["correct"]
    per_image = per_image_mean_nss(trunks, dataset, heldout, correct=correct,
                                   drop_first=drop_first, device=dev,
                                   progress=common.progress(params))
    per_image.to_csv(folder / "mean_map_nss.csv", index=False)
    cm = cm.copy()
    cm.index.name = "true"
    return {
        "scene_accuracy": pd.DataFrame([{
            "accuracy": acc, "n_heldout": len(heldout), "n_classes": len(result.classes),
            "dropped": json.dumps(labels.dropped.to_dict("records")),
            "best_epoch": result.best_epoch}]),
        "scene_recall": recall,
        "scene_confusion": cm.reset_index(),
        "table8_mean_map_nss": table8(per_image),
    }
