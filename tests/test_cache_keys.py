"""The activation store's key follows the image *contents* and the computing code: a stimulus
replaced under the same id is recomputed (exactly its batch), and a change to the code that
computes activations makes the store stale instead of silently reused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_pipeline_dask import synthetic_inputs, tiny_backbone

import dissect.cache as cache
from dissect.cache import extract_activations, open_activations, prepare_cache
from dissect.errors import StaleCacheError


def test_a_replaced_image_is_recomputed_and_only_its_batch(tmp_path, caplog):
    dataset, _ = synthetic_inputs(tmp_path)
    bb = tiny_backbone()
    store = tmp_path / "act.zarr"
    extract_activations(dataset, bb, ["c2"], store, batch_size=3)
    before = open_activations(store, "c2").values.copy()
    # s03 (batch 1) replaced by the image of s00: same id, same size, other content
    shutil.copy(tmp_path / "s00.png", tmp_path / "s03.png")
    plan = prepare_cache(dataset, bb, ["c2"], store, batch_size=3)
    assert plan.pending() == [1]
    assert "s03" in caplog.text and "recomputing" in caplog.text
    extract_activations(dataset, bb, ["c2"], store, batch_size=3)
    after = open_activations(store, "c2").values
    fresh_store = tmp_path / "fresh.zarr"
    extract_activations(dataset, bb, ["c2"], fresh_store, batch_size=3)
    np.testing.assert_array_equal(after, open_activations(fresh_store, "c2").values)
    assert not np.array_equal(after[3], before[3])  # s03 now holds s00's activations
    np.testing.assert_array_equal(after[3], after[0])
    np.testing.assert_array_equal(np.delete(after, 3, 0), np.delete(before, 3, 0))
    # nothing changed any more: nothing to recompute
    assert prepare_cache(dataset, bb, ["c2"], store, batch_size=3).pending() == []


def test_a_change_of_the_computing_code_makes_the_store_stale(tmp_path, monkeypatch):
    dataset, _ = synthetic_inputs(tmp_path)
    bb = tiny_backbone()
    store = tmp_path / "act.zarr"
    extract_activations(dataset, bb, ["c1"], store, batch_size=4)
    assert set(cache.COMPUTING_MODULES) == {"backbones.py", "preprocess.py", "capture.py",
                                           "cache.py"}
    monkeypatch.setattr(cache, "code_hash", lambda: "0123456789abcdef")
    with pytest.raises(StaleCacheError, match="code_sha256"):
        prepare_cache(dataset, bb, ["c1"], store, batch_size=4)
