"""Activation cache: layout, xarray round trip, gradients, staleness, and real kill -9 resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import zarr
from _helpers_cache import BATCH, LAYERS, N_IMAGES, TinyImages, count_forwards, tiny_backbone

from dissect.cache import (
    extract_activations,
    extract_batch,
    open_activations,
    open_gradients,
    prepare_cache,
    store_metadata,
)
from dissect.errors import DataError, StaleCacheError
from dissect.preprocess import Preprocess

HELPER = Path(__file__).with_name("_helpers_cache.py")


def _arrays(store: Path) -> dict[str, np.ndarray]:
    out = {}
    for prefix, var in (("act", "activation"), ("grad", "gradient")):
        for layer in LAYERS:
            path = f"{prefix}/{layer}/{var}"
            out[path] = zarr.open_array(store=str(store), path=path, mode="r")[:]
    return out


def _batch_chunks(store: Path, batches: set[int]) -> list[Path]:
    """Chunk files of the given batches (chunk key ``<array>/c/<batch>/...``)."""
    out = []
    for p in store.rglob("*"):
        parts = p.relative_to(store).parts
        if p.is_file() and "c" in parts:
            i = parts.index("c")
            if parts[i - 1] in ("activation", "gradient", "done") and int(parts[i + 1]) in batches:
                out.append(p)
    return out


def direct_forward(backbone, x, layers, target_class=None):
    """Reference maps (and gradients of logit ``target_class`` w.r.t. them) from one plain
    forward of the full model with torch forward hooks: neither captum nor `dissect.capture`,
    whose `LayerCapture` the cache itself uses."""
    outs = {}

    def keep(name):
        def hook(_module, _inputs, out):
            if out.requires_grad:
                out.retain_grad()
            outs[name] = out
        return hook

    hooks = [backbone.module(name).register_forward_hook(keep(name)) for name in layers]
    try:
        if target_class is None:
            with torch.no_grad():
                backbone.model(x)
            return {name: outs[name].detach() for name in layers}
        backbone.model(x)[:, target_class].sum().backward()
        backbone.model.zero_grad(set_to_none=True)
        return ({name: outs[name].detach() for name in layers},
                {name: outs[name].grad for name in layers})
    finally:
        for h in hooks:
            h.remove()


def _expected(backbone, ds, layers, preprocess=None):
    pre = preprocess or backbone.preprocess
    return direct_forward(backbone, pre([ds.load_image(i) for i in ds.ids]), layers)


def test_roundtrip_layout_and_values(tmp_path):
    bb, ds = tiny_backbone(), TinyImages()
    store = extract_activations(ds, bb, ["c2", "c1"], tmp_path / "a.zarr", batch_size=BATCH,
                                dtype="float32", progress=False)
    want = _expected(bb, ds, LAYERS)
    for layer in LAYERS:
        arr = open_activations(store, layer)
        assert arr.dims == ("image", "unit", "y", "x")
        assert arr.chunks is not None  # lazy, dask-backed
        assert arr.chunks[0] == (3, 3, 3, 2)  # one chunk per batch of images
        assert arr.chunks[1] == (want[layer].shape[1],)
        assert list(arr["image"].values) == ds.ids
        assert list(arr["unit"].values) == list(range(want[layer].shape[1]))
        assert arr.attrs["layer"] == layer and arr.attrs["backbone"] == "tiny"
        np.testing.assert_array_equal(arr.values, want[layer].numpy())
        assert arr.sel(image="img04").shape == want[layer].shape[1:]
    meta = store_metadata(store)
    assert meta["layers"] == LAYERS  # depth order, whatever order was asked
    assert meta["complete"] and meta["n_done"] == meta["n_batches"] == 4
    assert meta["weights_id"] == bb.weights_id and meta["dtype"] == "float32"
    assert meta["preprocess"]["size"] == [16, 16] and "antialias=True" in meta["preprocess"][
        "resize"]
    assert set(meta["versions"]) >= {"torch", "numpy", "zarr", "xarray", "dissect"}
    assert len(meta["args_hash"]) == 16 and len(meta["image_ids_sha256"]) == 16


def test_float16_default(tmp_path):
    bb, ds = tiny_backbone(), TinyImages(4)
    store = extract_activations(ds, bb, None, tmp_path / "h.zarr", progress=False)
    arr = open_activations(store, "c1")
    assert arr.dtype == np.float16
    want = _expected(bb, ds, ["c1"])["c1"].numpy()
    np.testing.assert_array_equal(arr.values, want.astype(np.float16))


def test_gradients_stored(tmp_path):
    bb, ds = tiny_backbone(), TinyImages(5)
    store = extract_activations(ds, bb, LAYERS, tmp_path / "g.zarr", batch_size=2,
                                dtype="float32", gradients="logit:3", progress=False)
    x = bb.preprocess([ds.load_image(i) for i in ds.ids])
    acts, grads = direct_forward(bb, x, LAYERS, target_class=3)
    for layer in LAYERS:
        np.testing.assert_allclose(open_gradients(store, layer).values, grads[layer].numpy(),
                                   rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(open_activations(store, layer).values, acts[layer].numpy(),
                                   rtol=1e-6, atol=1e-7)
        assert open_gradients(store, layer).attrs["kind"] == "gradient"
    assert store_metadata(store)["gradients"] == "logit:3"
    assert float(np.abs(open_gradients(store, "c1").values).max()) > 0


@pytest.mark.parametrize("kill", ["forward:2", "write:9"])
def test_resume_after_sigkill(tmp_path, one_torch_thread, kill):
    """Kill -9 part-way, rerun with the same arguments: the done batches are not recomputed and
    the arrays equal an uninterrupted run bit for bit."""
    n_batches = -(-N_IMAGES // BATCH)
    ref = tmp_path / "ref.zarr"
    bb = tiny_backbone()
    calls = count_forwards(bb)
    extract_activations(TinyImages(), bb, LAYERS, ref, batch_size=BATCH, dtype="float32",
                        gradients="top1", progress=False)
    assert len(calls) == n_batches + 1  # one shape probe + one pass per batch

    store, counts = tmp_path / "killed.zarr", tmp_path / "count.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HELPER), str(store), str(counts), kill],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # forward:2 → batches 0, 1 done; write:9 → 4 writes per batch, so batches 0, 1 done and
    # batch 2 has one chunk written but is not marked done
    meta = store_metadata(store)
    assert meta["n_done"] == 2 and not meta["complete"]
    with pytest.raises(DataError, match="incomplete"):
        open_activations(store, "c1")
    partial = open_activations(store, "c1", allow_partial=True).values
    assert np.isnan(partial[9:]).all() and not np.isnan(partial[:6]).any()
    done_mtimes = {p: p.stat().st_mtime_ns for p in _batch_chunks(store, {0, 1})}
    assert len(done_mtimes) == 2 * (2 * len(LAYERS) + 1)  # act + grad per layer, done flag

    bb2 = tiny_backbone()
    calls2 = count_forwards(bb2)
    extract_activations(TinyImages(), bb2, LAYERS, store, batch_size=BATCH, dtype="float32",
                        gradients="top1", progress=False)
    assert len(calls2) == n_batches - 2  # completed batches were skipped, no probe
    assert store_metadata(store)["complete"]
    got, want = _arrays(store), _arrays(ref)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # the completed batches' chunks were not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in done_mtimes.items())


def test_stale_arguments(tmp_path):
    ds, store = TinyImages(4), tmp_path / "s.zarr"
    bb = tiny_backbone()
    extract_activations(ds, bb, ["c1"], store, batch_size=2, progress=False)
    h = store_metadata(store)["args_hash"]
    # same arguments: nothing to do, no error
    calls = count_forwards(bb)
    extract_activations(ds, bb, ["c1"], store, batch_size=2, progress=False)
    assert calls == [] and store_metadata(store)["args_hash"] == h
    cases = [
        (dict(layers=["c1", "c2"]), "layers"),
        (dict(dtype="float32"), "dtype"),
        (dict(backbone=tiny_backbone(seed=1)), "weights_id"),
        (dict(preprocess=Preprocess((20, 20))), "preprocess"),
        (dict(dataset=TinyImages(3)), "image_ids_sha256"),
        (dict(batch_size=3), "batch_size"),
        (dict(gradients="top1"), "gradients"),
    ]
    for change, field in cases:
        kw = dict(dataset=ds, backbone=bb, layers=["c1"], batch_size=2)
        kw.update(change)
        with pytest.raises(StaleCacheError, match=field):
            extract_activations(kw.pop("dataset"), kw.pop("backbone"), kw.pop("layers"), store,
                                progress=False, **kw)
    extract_activations(ds, bb, ["c1", "c2"], store, batch_size=2, dtype="float32",
                        overwrite=True, progress=False)
    meta = store_metadata(store)
    assert meta["layers"] == LAYERS and meta["dtype"] == "float32" and meta["args_hash"] != h


def test_refuses_foreign_directory(tmp_path):
    other = tmp_path / "notacache"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not a dissect activation cache"):
            extract_activations(TinyImages(2), tiny_backbone(), None, other,
                                overwrite=overwrite, progress=False)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="not a dissect activation cache"):
        store_metadata(other)


def test_bad_image_named(tmp_path):
    class Bad(TinyImages):
        def load_image(self, image_id):
            img = super().load_image(image_id)
            return img.astype(np.float32) if image_id == "img02" else img

    with pytest.raises(DataError, match="img02"):
        extract_activations(Bad(4), tiny_backbone(), None, tmp_path / "b.zarr", batch_size=2,
                            progress=False)


def test_native_size_needs_one_size(tmp_path):
    bb = tiny_backbone(size=None)
    store = extract_activations(TinyImages(4, same_size=True), bb, ["c2"], tmp_path / "n.zarr",
                                batch_size=2, dtype="float32", progress=False)
    assert open_activations(store, "c2").shape == (4, 6, 10, 12)
    with pytest.raises(DataError, match="size"):
        extract_activations(TinyImages(4), bb, ["c2"], tmp_path / "m.zarr", batch_size=2,
                            progress=False)


def test_extract_batch_under_dask(tmp_path):
    """Batches written in parallel by dask tasks give the same store as the serial loop."""
    bb, ds = tiny_backbone(), TinyImages()
    serial = extract_activations(ds, bb, LAYERS, tmp_path / "serial.zarr", batch_size=BATCH,
                                 dtype="float32", gradients="top1", progress=False)
    plan = prepare_cache(ds, bb, LAYERS, tmp_path / "par.zarr", batch_size=BATCH,
                         dtype="float32", gradients="top1")
    tasks = [dask.delayed(extract_batch)(plan, b, ds, bb) for b in plan.pending()]
    assert all(dask.compute(*tasks, scheduler="threads", num_workers=2))
    assert plan.pending() == []
    assert not extract_batch(plan, 0, ds, bb)  # done batches are skipped
    got, want = _arrays(plan.store), _arrays(serial)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-9, err_msg=key)


@pytest.mark.osie
def test_osie_efficientnet_two_images(osie, tmp_path):
    from dissect.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0")
    ids = list(osie.ids)[:2]

    class Two:
        def __init__(self):
            self.ids = ids

        def load_image(self, image_id):
            return osie.load_image(image_id)

    store = extract_activations(Two(), bb, ["block3", "head"], tmp_path / "e.zarr",
                                batch_size=2, dtype="float32", progress=False)
    x = bb.preprocess([osie.load_image(i) for i in ids])
    want = direct_forward(bb, x, ["block3", "head"])
    head = open_activations(store, "head")
    assert head.shape == (2, 1280, 7, 7) and list(head["image"].values) == ids
    np.testing.assert_allclose(head.values, want["head"].numpy(), rtol=1e-6, atol=1e-6)
    assert open_activations(store, "block3").shape == (2, 144, 28, 28)


def test_plan_and_backbone_pickle_for_dask_workers(tmp_path):
    import pickle

    bb, ds = tiny_backbone(), TinyImages(4)
    plan = prepare_cache(ds, bb, LAYERS, tmp_path / "p.zarr", batch_size=2, dtype="float32",
                         gradients="logit:1")
    plan2, bb2 = pickle.loads(pickle.dumps((plan, bb)))
    assert plan2.gradients == "logit:1" and plan2.pending() == [0, 1]
    assert extract_batch(plan2, 1, ds, bb2)
    assert plan.pending() == [0]
