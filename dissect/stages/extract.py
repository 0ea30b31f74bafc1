"""Stages ``extract`` and ``extract-finetuned``: cache unit activations of the held-out images in
Zarr (:mod:`dissect.cache`), one Dask task per image batch.

``extract`` caches every analysed layer of the pretrained trunk ('pt'); ``extract-finetuned``
caches the last trunk layer of every readout whose trunk was fine-tuned (k ≥ 1; setup I, k = 0,
keeps the pretrained trunk and reuses 'pt'), once per training seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.extract")


def extract_store(params: Params, dataset, backbone, layers, store: Path, *,
                  preprocess=None, dtype: str | None = None, device=None) -> Path:
    """Fill ``store`` batch by batch as Dask tasks (resumes a partial store). ``preprocess``:
    the input preprocessing (default the backbone's); ``dtype``: default ``extract.dtype``;
    ``device``: where the forward passes run (default the ``device`` parameter,
    :func:`common.device`): the backbone's model is moved there (in place) and the capture moves
    each batch to the model's device."""
    from tqdm.dask import TqdmCallback

    from dissect.cache import extract_batch, prepare_cache
    from dissect.errors import StaleCacheError

    e = params["extract"]
    kw = dict(batch_size=int(e["batch_size"]), dtype=dtype or e["dtype"], preprocess=preprocess)
    backbone.model.to(common.device(params) if device is None else device)
    try:  # same arguments: resume what an interrupted run left
        plan = prepare_cache(dataset, backbone, list(layers), store, **kw)
    except StaleCacheError as exc:  # the stage's inputs changed: rebuild, and say so
        log.warning("%s; rebuilding it", exc)
        plan = prepare_cache(dataset, backbone, list(layers), store, overwrite=True, **kw)
    with plan:  # the store's writer lock is held until every batch is written
        pending = plan.pending()
        log.info("%s: %d of %d batches to compute", store.name, len(pending), plan.n_batches)
        tasks = [dask.delayed(extract_batch)(plan, b, dataset, backbone, force=True)
                 for b in pending]
        with common.scheduler(params) as client:
            # locally two threads: a model lock serialises the forward passes (torch already
            # uses every core), so one batch's float16 cast and Zarr writes overlap the next
            # batch's forward (bench/extraction_overhead.py: 1.03-1.08x a bare loop on 200
            # images, 1.68x with one thread)
            kw = {} if client is not None else {"scheduler": "threads", "num_workers": 2}
            work = params.path(params.get("work"))  # a hand-built Params may have none
            where = (store.relative_to(work).as_posix()
                     if work is not None and work in store.parents else store.name)
            with TqdmCallback(desc=f"extract {where}", unit="task",
                              disable=not common.progress(params)):
                dask.compute(*tasks, **kw)
    return store


def run_extract(params: Params) -> Path:
    b = params["backbone"]
    with stage_record(params.work, "extract", {"backbone": b, "extract": params["extract"]}) as rec:
        dataset, _ = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        bb = common.backbone(params)
        dev = common.device(params)
        store = common.act_store(params, "pt")
        extract_store(params, dataset.subset(ids), bb, common.layer_names(params), store,
                      device=dev)
        rec.update(weights_id=bb.weights_id, preprocess=bb.preprocess.to_dict(), device=str(dev),
                   n_images=len(ids), store=str(store.relative_to(params.work)))
    return store


def run_extract_finetuned(params: Params) -> list[Path]:
    """Cache the last trunk layer of every fine-tuned readout (k ≥ 1) of every training seed in
    ``act/finetuned/s<seed>/k<k>.zarr``."""
    from dissect.models.base import load_model
    from dissect.task_compare import finetuned_trunk

    last = common.layer_names(params)[-1]
    out = []
    recorded = {"train.ks": params["train"]["ks"], "train.seeds": common.seeds(params),
                "extract": params["extract"]}
    with stage_record(params.work, "extract-finetuned", recorded) as rec:
        dataset, _ = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        base = common.backbone(params)
        dev = common.device(params)
        rec["device"] = str(dev)
        for seed in common.seeds(params):
            for model in common.model_names(params)[1:]:
                if not common.seeded(model):
                    continue
                readout = load_model("readout", backbone=base,
                                     checkpoint=common.readout_path(params, model, seed)).readout
                store = common.act_store(params, model, seed)
                extract_store(params, dataset.subset(ids), finetuned_trunk(readout, model),
                              [last], store, device=dev)
                out.append(store)
        rec["stores"] = [str(p.relative_to(params.work)) for p in out]
        rec["removed"] = prune_stores(common.work(params, "act", "finetuned"), out)
    return out


def prune_stores(root: Path, keep: list[Path]) -> list[str]:
    """Remove the activation stores under ``root`` that this run did not write (other seeds,
    other k, the layout before seeds): the folder is a persistent output, and a store of an
    earlier configuration must not sit beside the current ones. Returns what was removed."""
    import shutil

    keep_set = {Path(k).resolve() for k in keep}
    removed = []
    for store in sorted(root.rglob("*.zarr")) if root.is_dir() else []:
        if store.resolve() in keep_set or any(k in store.resolve().parents for k in keep_set):
            continue
        if not store.exists():  # inside a store removed above
            continue
        log.warning("removing %s: not an output of this configuration", store)
        shutil.rmtree(store)
        lock = store.with_name(store.name + ".lock")
        if lock.exists():
            lock.unlink()
        removed.append(str(store.relative_to(root)))
    return removed
