"""Stage ``scene``: task vs data (He et al. §8). The same pretrained trunk fine-tuned on the
same training images for saliency (sp: the readout with the last stage tuned, k = 1) and for
scene recognition (sr: last stage + 3 FC layers, class-weighted cross-entropy), compared with
the pretrained trunk (pt) on the held-out images:
- scene accuracy, per-class recall, confusion matrix;
- the sr trunk's last-layer units, cached and associated like the others (Table 7 and its
  permutation test are computed by the ``statistics`` stage, so that a change of T reruns
  statistics only);
- Table 8: NSS of the mean of all last-layer maps, scene classified correctly vs wrongly.
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
    log.warning("scene classes without training images are dropped: %s", missing)
    table = labels.table[labels.table["scene"].isin(present)].reset_index(drop=True)
    counts = labels.table["scene"].value_counts()
    dropped = pd.concat([labels.dropped, pd.DataFrame(
        {"scene": missing, "n_images": [int(counts[c]) for c in missing]})], ignore_index=True)
    return SceneLabels(table=table, classes=sorted(present), dropped=dropped,
                       min_images=labels.min_images, source=labels.source)


def run_scene(params: Params) -> None:
    from dissect.association import associate, save_associations
    from dissect.data.scenes import load_scenes
    from dissect.readout import load_readout
    from dissect.scene import evaluate_scene_model, save_scene_model, train_scene_model
    from dissect.tables import write_table
    from dissect.task_compare import (
        finetuned_trunk,
        per_image_mean_nss,
        table8,
    )
    from dissect.training import split_train_val

    sc = params["scene"]
    last = params["backbone"]["layers"][-1]
    res = lambda name: common.results(params, "tables", "scene", name)  # noqa: E731
    with stage_record(params.work, "scene", {"scene": sc}) as rec:
        dataset, regions = common.inputs(params)
        labels = load_scenes(params.path(params["data"]["scenes"]),
                             min_images=int(sc["min_images"]), dataset=dataset)
        train_ids = [i for i in common.ids_of(params, "train") if i in set(labels.ids)]
        heldout = [i for i in common.ids_of(params, "heldout") if i in set(labels.ids)]
        fit_ids, val_ids = split_train_val(train_ids, float(params["train"]["val_fraction"]),
                                           int(params["train"]["seed"]))
        labels = keep_trained_classes(labels, fit_ids)
        keep = set(labels.ids)
        fit_ids, val_ids = [i for i in fit_ids if i in keep], [i for i in val_ids if i in keep]
        heldout = [i for i in heldout if i in keep]
        base = common.backbone(params)
        result = train_scene_model(
            base, dataset, labels, fit_ids, val_ids, epochs=int(sc["epochs"]), lr=float(sc["lr"]),
            batch_size=int(sc["batch_size"]), seed=int(sc["seed"]), patience=int(sc["patience"]),
            cache_dir=common.work(params, "prefix_cache"),
            log_path=common.work(params, "scene", "history.csv"),
        )
        save_scene_model(result.model, common.work(params, "scene", "model.pt"))
        acc, recall, cm, preds = evaluate_scene_model(result.model, dataset, labels, heldout,
                                                      cache_dir=common.work(params, "prefix_cache"))
        write_table(pd.DataFrame([{"accuracy": acc, "n_heldout": len(heldout),
                                   "n_classes": len(result.classes),
                                   "dropped": json.dumps(labels.dropped.to_dict("records")),
                                   "best_epoch": result.best_epoch}]), res("scene_accuracy"))
        write_table(recall, res("scene_recall"))
        write_table(cm.reset_index(), res("scene_confusion"))
        from dissect.figures import confusion, save_figure

        save_figure(confusion(cm, normalize=True),
                    common.results(params, "figures", "scene_confusion.png"))
        preds.to_csv(common.work(params, "scene", "predictions.csv"), index=False)
        log.info("scene accuracy on %d held-out images: %.3f", len(heldout), acc)

        # the three trunks; sr's last layer cached and associated like the others
        sp_model, _ = load_readout(common.work(params, "readouts", "k1", "model.pt"), base)
        trunks = {"pt": base, "sp": finetuned_trunk(sp_model, "sp"),
                  "sr": result.model.trunk_backbone()}
        from dissect.stages.extract import extract_store

        sr_store = common.work(params, "scene", "act_sr.zarr")
        extract_store(params, dataset.subset(common.ids_of(params, "heldout")), trunks["sr"],
                      [last], sr_store)
        with common.scheduler(params) as client:
            sr_assoc = associate(sr_store, dataset, regions,
                                 drop_first=bool(params["data"]["drop_first"]), scheduler=client)
        save_associations(sr_assoc, common.work(params, "scene", "assoc_sr.zarr"))

        correct = preds.set_index("image")["correct"]
        per_image = per_image_mean_nss(trunks, dataset, heldout, correct=correct,
                                       drop_first=bool(params["data"]["drop_first"]))
        per_image.to_csv(common.work(params, "scene", "mean_map_nss.csv"), index=False)
        write_table(table8(per_image), res("table8_mean_map_nss"))
        rec.update(accuracy=acc, n_heldout=len(heldout))
