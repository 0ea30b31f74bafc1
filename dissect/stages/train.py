"""Stage ``train``: saliency readouts on the training split (He et al. §3): setup I (k = 0, trunk
frozen, only the 1×1 readout learns) and setup II (the top k trunk stages fine-tuned with the
readout), each run from the same pretrained weights, trained with −NSS, early-stopped on a
validation slice of the training images (the held-out split is never seen).

Every readout is trained once per seed of ``train.seeds`` (initialisation and data order; the
validation slice, ``train.val_seed``, is the same for every seed) into
``work/readouts/s<seed>/k<k>/model.pt``, with ``train.threads`` torch threads: the same seed and
thread count give bitwise-identical weights (``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.train")


def run_train(params: Params) -> pd.DataFrame:
    import torch
    from tqdm.auto import tqdm

    from dissect.training import split_train_val, train_readout

    t = params["train"]
    seeds = common.seeds(params)
    threads = int(t["threads"])
    if threads < 1:
        raise ValueError(f"train.threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with stage_record(params.work, "train", {"train": t}) as rec:
            dataset, _ = common.inputs(params)
            train_ids = common.ids_of(params, "train")
            heldout = common.ids_of(params, "heldout")
            fit_ids, val_ids = split_train_val(train_ids, float(t["val_fraction"]),
                                               int(t["val_seed"]))
            bb = common.backbone(params)
            dev = common.device(params, float64=True)
            rec["device"] = str(dev)
            curves = []
            summary = {"n_stages": len(bb.stages), "stages": bb.stage_names, "seeds": seeds,
                       "threads": threads, "runs": []}
            show = common.progress(params)
            n_runs = len(seeds) * len(t["ks"])
            # one bar over the readouts (several), one per readout over its epochs
            runs = tqdm(total=n_runs, desc="readouts", unit="readout",
                        disable=not show or n_runs < 2)
            for seed in seeds:
                for k in t["ks"]:
                    name = f"k{k}"
                    folder = common.readout_path(params, name, seed).parent
                    log.info("training %s, seed %d (%d train / %d validation images)", name,
                             seed, len(fit_ids), len(val_ids))
                    res = train_readout(
                        bb, dataset, fit_ids, val_ids, k,
                        epochs=int(t["epochs"]), lr=float(t["lr"]),
                        trunk_lr=float(t["trunk_lr"]), weight_decay=float(t["weight_decay"]),
                        optimizer=str(t["optimizer"]), lr_schedule=t["lr_schedule"],
                        step_size=int(t["step_size"]), gamma=float(t["gamma"]),
                        min_delta=float(t["min_delta"]), batch_size=int(t["batch_size"]),
                        seed=seed, patience=int(t["patience"]),
                        drop_first=bool(params["data"]["drop_first"]), heldout_ids=heldout,
                        cache_dir=common.work(params, "prefix_cache"),
                        log_path=folder / "history.csv", checkpoint_path=folder / "model.pt",
                        device=dev, progress_bar=show, desc=f"train {name} seed {seed}",
                    )  # fmt: skip
                    h = res.history.copy()
                    h.insert(0, "model", name)
                    h.insert(1, "seed", seed)
                    curves.append(h)
                    summary["runs"].append({
                        "model": name, "seed": seed, "k": k, "best_epoch": int(res.best_epoch),
                        "best_val_nss": float(res.best_val_nss), "epochs_run": int(len(h)),
                        "seconds": float(h["seconds"].sum()),
                        "cache_seconds": float(res.cache_seconds),
                        "tuned_stages": res.model.tuned_stage_names,
                    })
                    log.info("%s seed %d: best validation NSS %.3f at epoch %d (%.0f s)", name,
                             seed, res.best_val_nss, res.best_epoch, h["seconds"].sum())
                    runs.update()
            runs.close()
            history = pd.concat(curves, ignore_index=True)
            with common.replacing(common.results(params, "tables", "training_curves.csv")) as out:
                history.to_csv(out, index=False)
            common.work(params, "train", "summary.json").write_text(json.dumps(summary, indent=2))
            rec.update(summary)
    finally:
        torch.set_num_threads(previous_threads)
    return history
