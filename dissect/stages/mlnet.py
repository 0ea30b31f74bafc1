"""Stage ``mlnet``: train ML-Net (Cornia, Baraldi, Serra & Cucchiara 2016;
:mod:`dissect.models.mlnet`) on the training split.

The network is built on the pipeline's trunk (``backbone``: the Lite0 analogue by default, or
VGG-16's reference layout), its head initialised under ``mlnet.seed``, and trained by
:func:`dissect.models.mlnet.train_mlnet` on the training split less its validation slice
(``train.val_fraction`` / ``train.val_seed``: the readouts' and DeepGaze's slice), with early
stopping on the validation loss. The target of an image is its fixation density (``gt``: the
blur every density of the project uses, first fixations dropped as ``data.drop_first`` says)
on the output grid (:func:`~dissect.models.mlnet.density_target`).

Outputs: the checkpoint ``work/mlnet/model.pt`` (loaded as the registry's ``mlnet`` model by
``mlnet-dissect``, ``evaluate`` and ``popout-readouts``) and the training curve
``results/tables/mlnet_training/``. A stage of its own, apart from the dissection, so that the
dissection's code can change without training again.
"""

from __future__ import annotations

import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.mlnet")


def model_path(params: Params):
    return common.work(params, "mlnet", "model.pt")


def training_data(params: Params, dataset, ids: list[str], net, *, desc: str = "ML-Net targets"):
    """``(images, targets)`` of ``ids``: uint8 images and their fixation densities (``gt``) on
    ``net``'s output grid. An image without fixations → :class:`DataError` naming it. A
    progress bar (``desc``) when ``progress`` is on."""
    from tqdm.auto import tqdm

    from dissect.data.maps import density_map
    from dissect.errors import DataError
    from dissect.models.mlnet import density_target

    g = params["gt"]
    drop = bool(params["data"]["drop_first"])
    images, targets = [], []
    for i in tqdm(ids, desc=desc, unit="image", leave=False,
                  disable=not common.progress(params)):
        image = dataset.load_image(i)
        points = dataset.points(i, drop_first=drop)
        if len(points) == 0:
            raise DataError(i, "has no fixations: no ML-Net target")
        density = density_map(points, image.shape[:2], sigma_deg=float(g["sigma_deg"]),
                              px_per_degree=float(g["px_per_degree"]))
        try:
            targets.append(density_target(density, net))
        except DataError as e:
            raise DataError(i, e.problem) from None
        images.append(image)
    return images, targets


def run_mlnet(params: Params) -> pd.DataFrame:
    import torch

    from dissect.models.mlnet import MLNet, save_mlnet, train_mlnet
    from dissect.tables import write_table
    from dissect.training import split_train_val

    m, t = params["mlnet"], params["train"]
    recorded = {"mlnet": m, "gt": params["gt"], "data.drop_first": params["data"]["drop_first"],
                "train.val_fraction": t["val_fraction"], "train.val_seed": t["val_seed"],
                "train.threads": t["threads"], "device": params.get("device", "auto")}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(t["threads"]))
    try:
        with stage_record(params.work, "mlnet", recorded) as rec:
            dataset, _ = common.inputs(params)
            fit_ids, val_ids = split_train_val(common.ids_of(params, "train"),
                                               float(t["val_fraction"]), int(t["val_seed"]))
            bb = common.backbone(params)
            dev = common.device(params)
            net = MLNet.from_backbone(bb, input_size=m["input_size"], seed=int(m["seed"]))
            net.to(dev)
            images, targets = training_data(params, dataset, fit_ids, net,
                                            desc="ML-Net targets (training)")
            val_images, val_targets = training_data(params, dataset, val_ids, net,
                                                    desc="ML-Net targets (validation)")
            log.info("ML-Net on %s (%s trunk): %d training / %d validation images, input %dx%d",
                     bb.name, m["trunk"], len(fit_ids), len(val_ids), *net.input_size)
            net, history = train_mlnet(
                net, images, targets, val_images, val_targets, epochs=int(m["epochs"]),
                batch_size=int(m["batch_size"]), patience=int(m["patience"]),
                optimizer=str(m["optimizer"]), lr=float(m["lr"]),
                momentum=float(m["momentum"]), decay=float(m["decay"]),
                frozen=m["trunk"] == "frozen", seed=int(m["seed"]), log=log,
                progress=common.progress(params))
            curve = pd.DataFrame(history)
            best = curve.loc[curve["val_loss"].idxmin()]
            meta = {"backbone": bb.name, "trunk_weights_id": bb.weights_id, "trunk": m["trunk"],
                    "best_epoch": int(best["epoch"]), "val_loss": float(best["val_loss"]),
                    "n_train": len(fit_ids), "n_val": len(val_ids), "seed": int(m["seed"])}
            save_mlnet(model_path(params), net.cpu(), metadata=meta)
            with common.replacing(common.results(params, "tables", "mlnet_training")) as out:
                write_table(curve, out / "training_curve", floatfmt=".4f",
                            caption=f"ML-Net on {bb.name} ({m['trunk']} trunk, "
                                    f"{m['optimizer']}, lr {m['lr']}): loss per epoch "
                                    f"(validation on {len(val_ids)} training images); the "
                                    f"kept epoch is {int(best['epoch'])}.")
            rec.update(meta, epochs_run=len(curve), device=str(dev))
    finally:
        torch.set_num_threads(previous_threads)
    return curve
