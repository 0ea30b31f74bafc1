"""The association and extraction stages on a two-worker ``distributed`` cluster give exactly what
the local scheduler gives (issue "Staged, cached, scalable pipeline").

Everything is synthetic (a random-weight two-layer conv net built from torch modules only, PNG
stimuli of different sizes, a `FixationDataset` from a table and a `RegionSet` from in-memory
masks), so the test always runs. The dataset, region set (its mask reader is a closure), plan and
backbone travel to worker *processes* through cloudpickle; a task stream checks that the work
really ran on both workers.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from dissect.backbones import Backbone, state_dict_sha256
from dissect.config import Params
from dissect.data import FixationDataset, RegionSet, Stimulus
from dissect.preprocess import Preprocess

N_IMAGES = 10
SIZES = [(40, 56), (48, 48), (36, 60)]  # (H, W): maps are upsampled to each image's own size
CODES = [1, 27, 37, 57]  # person head, object, text, food


def tiny_backbone() -> Backbone:
    """Random-weight conv net of plain torch modules (picklable by reference on any worker)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(5, 7, 3, padding=1), nn.ReLU(),
        ).eval()
    stages = [("s1", nn.Sequential(model[0], model[1])),
              ("s2", nn.Sequential(model[2], model[3], model[4]))]
    return Backbone("tiny-seq", model, stages, {"c1": "1", "c2": "4"}, state_dict_sha256(model),
                    Preprocess((24, 32)))


def synthetic_inputs(folder) -> tuple[FixationDataset, RegionSet]:
    """Stimuli (PNG files), fixations of 3 observers and 1–3 rectangular regions per image."""
    rng = np.random.default_rng(7)
    stimuli, fix, masks, rows = [], [], {}, []
    for k in range(N_IMAGES):
        image_id = f"s{k:02d}"
        h, w = SIZES[k % len(SIZES)]
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img[h // 3 : h // 2, w // 4 : w // 2] = 255  # a bright patch: non-trivial maps
        path = folder / f"{image_id}.png"
        Image.fromarray(img).save(path)
        stimuli.append(Stimulus(image_id, path, h, w))
        inst = np.zeros((h, w), np.int32)
        for r in range(1, 2 + k % 3):
            y0, x0 = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
            inst[y0 : y0 + 10, x0 : x0 + 10] = r  # later regions may cover earlier ones
        present = sorted(set(np.unique(inst).tolist()) - {0})
        for r in present:
            rows.append((image_id, r, "", CODES[(k + r) % len(CODES)]))
        masks[image_id] = inst
        for subject in range(3):
            n = int(rng.integers(4, 9))
            xs, ys = rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)
            # the second fixation lands inside region 1 (every region-1 gets some fixations)
            ry, rx = np.nonzero(inst == present[0])
            xs[1], ys[1] = rx[0] + 0.2, ry[0] + 0.3
            fix += [(image_id, subject, o, xs[o], ys[o], 200.0) for o in range(n)]
    fixations = pd.DataFrame(fix, columns=["image", "subject", "order", "x", "y", "duration"])
    table = pd.DataFrame(rows, columns=["image", "region", "category", "code"])
    from dissect.categories import name_of

    table["category"] = [name_of(c) for c in table["code"]]
    dataset = FixationDataset.from_table(stimuli, fixations, "synthetic")
    return dataset, RegionSet.from_masks(table, masks, "synthetic-masks")


def stage_params(scheduler: str | None, batch_size: int = 3) -> Params:
    """The parts of pipelines/params.yaml that `extract_store` reads."""
    return Params({"extract": {"batch_size": batch_size, "dtype": "float16"},
                   "dask": {"scheduler": scheduler, "chunk_images": 3}, "progress": False})


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as lc:
        lc.startup_seconds = time.perf_counter() - t0
        yield lc


def _assert_same_assoc(local: dict, remote: dict) -> None:
    assert list(local) == list(remote)
    for layer in local:
        a, b = local[layer], remote[layer]
        assert a.dims == b.dims and a.shape == b.shape
        assert np.array_equal(a.values, b.values, equal_nan=True), layer
        # NaN positions identical, and some regions undefined/defined (non-trivial comparison)
        assert np.array_equal(np.isnan(a.values), np.isnan(b.values))
        assert np.isfinite(a.values).any()
        for c in ("unit", "image", "region_id", "category"):
            assert np.array_equal(a[c].values, b[c].values), (layer, c)
        assert a.attrs == b.attrs


def _tasks_by_worker(stream: list[dict], prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in stream:
        if str(rec.get("key", "")).find(prefix) >= 0:
            counts[rec["worker"]] = counts.get(rec["worker"], 0) + 1
    return counts


def test_extract_and_associate_on_a_two_worker_cluster_match_local(tmp_path, cluster):
    from distributed import Client, get_task_stream

    from dissect.association import associate
    from dissect.cache import open_activations, store_metadata
    from dissect.stages.extract import extract_store

    t0 = time.perf_counter()
    (tmp_path / "img").mkdir()
    dataset, regions = synthetic_inputs(tmp_path / "img")
    bb = tiny_backbone()
    layers = ["c1", "c2"]

    # extraction: the stage's local path (threads) and its cluster path (params dask.scheduler)
    local_store = extract_store(stage_params(None), dataset, bb, layers, tmp_path / "local.zarr")
    with Client(cluster.scheduler_address) as client:
        with get_task_stream(client) as ts:  # the records arrive when this block exits
            remote_store = extract_store(stage_params(cluster.scheduler_address), dataset, bb,
                                         layers, tmp_path / "remote.zarr")
        extract_stream = list(ts.data)
    assert store_metadata(remote_store)["complete"]
    n_batches = store_metadata(remote_store)["n_batches"]
    assert n_batches == 4
    ran = _tasks_by_worker(extract_stream, "extract_batch")
    assert sum(ran.values()) == n_batches and len(ran) == 2, ran  # both worker processes
    for layer in layers:
        a = open_activations(local_store, layer)
        b = open_activations(remote_store, layer)
        assert a.dtype == b.dtype == np.float16
        assert np.array_equal(a.values, b.values), layer
        assert np.array_equal(a["image"].values, b["image"].values)
        assert np.isfinite(a.values).all() and a.values.std() > 0

    # association (Eq. 1): local threads vs the cluster (a Client, as run_associate passes it)
    local = associate(local_store, dataset, regions, chunk_images=3, scheduler="threads")
    with Client(cluster.scheduler_address) as client:
        with get_task_stream(client) as ts:
            remote = associate(remote_store, dataset, regions, chunk_images=3, scheduler=client)
        assoc_stream = list(ts.data)
    ran = _tasks_by_worker(assoc_stream, "_associate_chunk")
    assert sum(ran.values()) == 4 and len(ran) == 2, ran  # ceil(10 / 3) chunks on both workers
    _assert_same_assoc(local, remote)
    # undefined regions (no fixation inside) are NaN in both, never 0
    nan_cols = np.isnan(local["c2"].values).all(axis=0)
    assert nan_cols.any() and not nan_cols.all()
    # and the sequential scheduler agrees too (a third, independent execution path)
    _assert_same_assoc(local, associate(local_store, dataset, regions, chunk_images=4,
                                        scheduler="sync"))
    elapsed = time.perf_counter() - t0 + cluster.startup_seconds
    # ~20 s on 2 busy cores (the workers import torch); a bound against pathological slowness
    # such as shipping and unpickling large objects per task
    assert elapsed < 60, f"took {elapsed:.1f} s"
