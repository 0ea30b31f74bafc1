"""Where per-seed outputs live (dissect.stages.common), the seed lists checked, and stale stores
of another configuration removed from the persistent fine-tuned activation folder."""

from __future__ import annotations

import pytest
import yaml

from dissect.config import Params, load_params
from dissect.errors import DataError
from dissect.stages import common
from dissect.stages.extract import prune_stores


@pytest.fixture
def params(tmp_path):
    raw = yaml.safe_load(open(load_params().base / "params.yaml"))
    raw["work"] = str(tmp_path / "work")
    p = Params(raw)
    p.base = tmp_path
    return p


def test_paths_by_seed(params, tmp_path):
    w = tmp_path / "work"
    assert common.readout_path(params, "k1", 2) == w / "readouts" / "s2" / "k1" / "model.pt"
    assert common.readout_path(params, "k0", 0) == w / "readouts" / "s0" / "k0" / "model.pt"
    # setup I keeps the pretrained trunk: one store for every seed, no seed needed
    assert common.act_store(params, "k0", 3) == common.act_store(params, "pt") == \
        w / "act" / "pt.zarr"
    assert common.assoc_store(params, "k0") == w / "assoc" / "pt.zarr"
    assert common.act_store(params, "kall", 1) == w / "act" / "finetuned" / "s1" / "kall.zarr"
    assert common.assoc_store(params, "k6", 0) == w / "assoc" / "s0" / "k6.zarr"
    # a pure path: the scene stage creates the folder
    assert common.scene_dir(params, 7) == w / "scene" / "s7" and not (w / "scene" / "s7").exists()
    with pytest.raises(ValueError, match="seed="):
        common.act_store(params, "k1")
    assert common.seeded("k1") and not common.seeded("k0") and not common.seeded("pt")


@pytest.mark.parametrize("seeds, match", [([], "non-empty"), ([0, 0], "twice"),
                                          ([1, -1], "non-negative"), ("0", "non-empty"),
                                          ([True], "non-negative")])
def test_bad_seed_lists_are_refused(params, seeds, match):
    params["train"]["seeds"] = seeds
    with pytest.raises(DataError, match=match):
        common.seeds(params)


def test_scene_seeds_pair_with_training_seeds(params):
    params["train"]["seeds"], params["scene"]["seeds"] = [0, 1], [5, 6]
    assert list(zip(common.seeds(params), common.scene_seeds(params), strict=True)) == \
        [(0, 5), (1, 6)]
    params["scene"]["seeds"] = [5]
    with pytest.raises(DataError, match="same length"):
        common.scene_seeds(params)


def test_stores_of_another_configuration_are_pruned(tmp_path):
    root = tmp_path / "finetuned"
    keep = [root / "s0" / "k1.zarr", root / "s1" / "k1.zarr"]
    stale = [root / "k1.zarr", root / "s2" / "k1.zarr", root / "s0" / "k9.zarr"]
    for store in keep + stale:
        (store / "act" / "head").mkdir(parents=True)
        (store / "zarr.json").write_text("{}")
    (root / "k1.zarr.lock").write_text("123")
    removed = prune_stores(root, keep)
    assert sorted(removed) == ["k1.zarr", "s0/k9.zarr", "s2/k1.zarr"]
    assert all(s.is_dir() for s in keep) and not any(s.exists() for s in stale)
    assert not (root / "k1.zarr.lock").exists()
    assert prune_stores(root, keep) == []
