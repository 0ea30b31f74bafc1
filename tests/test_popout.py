"""Pop-out search arrays: determinism, exact masks, layout, I/O round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from dissect.data.popout import (
    CONJUNCTIONS,
    DIMENSIONS,
    FEATURE_DIMENSIONS,
    PopoutArray,
    default_set,
    generate_array,
    load_set,
    target_distractor_overlap,
    write_set,
)
from dissect.errors import DataError

SMALL = {"height": 240, "width": 320, "rows": 3, "cols": 4, "item_size": 24.0}


def _small(dimension: str, seed: int = 0, **kw) -> PopoutArray:
    params = dict(SMALL)
    if dimension == "density":
        params["item_size"] = 40.0
    params.update(kw)
    return generate_array(dimension, seed, **params)


@pytest.fixture(scope="module")
def small_set() -> list[PopoutArray]:
    return [_small(d, seed) for d in DIMENSIONS for seed in (0, 1)]


def test_dimensions_cover_the_brief():
    for d in ("colour", "orientation", "size", "shape", "curvature", "luminance", "density",
              "closure", "intersection"):
        assert d in FEATURE_DIMENSIONS
    assert len(CONJUNCTIONS) >= 2 and all(c.startswith("conjunction_") for c in CONJUNCTIONS)


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_default_size_array(dimension):
    a = generate_array(dimension, 7)
    assert a.image.shape == (600, 800, 3) and a.image.dtype == np.uint8
    assert a.mask.shape == (600, 800) and a.mask.dtype == bool
    assert a.mask.sum() == a.meta["mask_pixels"] > 0
    assert a.meta["n_items"] == 35 and len(a.meta["items"]) == 35
    assert target_distractor_overlap(a) == []


def test_deterministic_and_independent_of_global_rng(small_set):
    np.random.seed(123)
    again = [_small(d, seed) for d in DIMENSIONS for seed in (0, 1)]
    np.random.seed(999)
    _ = np.random.random(100)
    for a, b in zip(small_set, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert a.meta == b.meta
    # different seeds do differ
    assert not np.array_equal(small_set[0].image, small_set[1].image)


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_mask_is_exactly_the_target(dimension):
    for seed in (0, 1, 2):
        a = _small(dimension, seed)
        bg = np.array(a.meta["params"]["background"], dtype=np.uint8)
        drawn = (a.image != bg).any(axis=2)
        # every target pixel was painted with the target colour, which differs from the background
        assert drawn[a.mask].all()
        assert (a.image[a.mask] == np.array(a.meta["items"][0]["rgb"], np.uint8)).all()
        # the connected components of drawn pixels that touch the mask lie entirely inside it,
        # so the target touches no distractor and the mask holds no distractor pixel
        lab, _ = ndimage.label(drawn, structure=np.ones((3, 3)))
        touching = np.unique(lab[a.mask])
        assert np.array_equal(np.isin(lab, touching), a.mask)
        # the mask equals the drawn pixels inside the target's bbox (nothing else is there)
        x0, y0, x1, y1 = a.meta["bbox"]
        box = np.zeros_like(a.mask)
        box[y0:y1, x0:x1] = True
        assert np.array_equal(a.mask, drawn & box)
        assert target_distractor_overlap(a) == []
        # target centre inside its bbox; items never touch the image border
        assert x0 <= a.meta["cx"] < x1 and y0 <= a.meta["cy"] < y1
        assert not (drawn[0].any() or drawn[-1].any() or drawn[:, 0].any() or
                    drawn[:, -1].any())


def test_items_and_the_target_differ_only_on_the_dimension():
    a = _small("colour", 3)
    rgbs = {tuple(it["rgb"]) for it in a.meta["items"][1:]}
    assert len(rgbs) == 1 and tuple(a.meta["items"][0]["rgb"]) not in rgbs
    # iso-intensity colours
    assert abs(np.mean(a.meta["items"][0]["rgb"]) - np.mean(next(iter(rgbs)))) <= 1
    o = _small("orientation", 3)
    angles = {it["features"]["angle"] for it in o.meta["items"]}
    assert len(angles) == 2
    assert math.isclose(abs(o.meta["items"][0]["features"]["angle"] -
                            o.meta["items"][1]["features"]["angle"]) % 180, 90.0)
    s = _small("size", 3)
    t, d = s.meta["items"][0], s.meta["items"][1]
    assert math.isclose(t["features"]["diameter"] / d["features"]["diameter"], 1.8)
    dens = _small("density", 3)
    assert all(it["features"]["n_dots"] == 6 for it in dens.meta["items"])
    # shape: area matched within a few percent
    sh = _small("shape", 3, item_size=40.0)
    sizes = ndimage.sum(np.ones(sh.mask.shape),
                        ndimage.label((sh.image != 0).any(axis=2))[0],
                        index=np.arange(1, sh.meta["n_items"] + 1))
    assert sizes.max() / sizes.min() < 1.1


@pytest.mark.parametrize("dimension", CONJUNCTIONS)
def test_conjunction_target_shares_each_feature_with_distractors(dimension):
    a = _small(dimension, 4)
    feats = [it["features"] for it in a.meta["items"]]
    target, dis = feats[0], feats[1:]
    keys = sorted(target)
    assert len(keys) == 2
    for k in keys:  # each feature of the target is shared by about half the distractors
        share = sum(f[k] == target[k] for f in dis)
        assert abs(share - len(dis) / 2) <= 0.5
    assert not any(all(f[k] == target[k] for k in keys) for f in dis)


def test_nmm_of_the_perfect_map_is_analytic():
    from dissect.metrics import nmm

    for d in ("colour", "density", "size"):
        a = _small(d, 5)
        p = a.mask.mean()
        value = nmm(a.mask.astype(np.float64), a.mask)
        assert math.isclose(value, math.sqrt((1 - p) / p), rel_tol=1e-9)


def test_write_and_load_round_trip(tmp_path, small_set):
    write_set(small_set, tmp_path / "a")
    write_set(small_set, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 2 * len(small_set) + 1 and "manifest.csv" in files
    for name in files:  # bit-identical regeneration of every file
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # regenerate from the manifest's parameters and compare bytes again
    loaded = load_set(tmp_path / "a")
    regen = [generate_array(a.meta["dimension"], a.meta["seed"], id=a.id, **a.meta["params"])
             for a in loaded]
    write_set(regen, tmp_path / "c")
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    for a, b in zip(small_set, loaded, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert a.meta == b.meta
    header = (tmp_path / "a" / "manifest.csv").read_text().splitlines()[0].split(",")
    for col in ("id", "dimension", "cx", "cy", "bbox_x0", "bbox_y1", "seed", "params"):
        assert col in header


def test_load_set_errors(tmp_path, small_set):
    with pytest.raises(DataError, match="manifest.csv"):
        load_set(tmp_path)
    write_set(small_set[:2], tmp_path)
    (tmp_path / f"{small_set[0].id}_mask.png").unlink()
    with pytest.raises(DataError, match="_mask.png: file not found"):
        load_set(tmp_path)
    write_set(small_set[:2], tmp_path)
    (tmp_path / f"{small_set[1].id}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_set(tmp_path)


SET = {"height": 300, "width": 400, "rows": 3, "cols": 4, "item_size": 40.0}


def test_default_set_counts_and_ids():
    small = default_set(n_per_dimension=2, seed=3, **SET)
    assert len(small) == 2 * len(DIMENSIONS)
    assert len({a.id for a in small}) == len(small)
    again = default_set(n_per_dimension=2, seed=3, **SET)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(small, again, strict=True))
    other = default_set(n_per_dimension=2, seed=4, **SET)
    assert not np.array_equal(small[0].image, other[0].image)
    feat = default_set(n_per_dimension=1, conjunctions=False, **SET)
    assert {a.dimension for a in feat} == set(FEATURE_DIMENSIONS)
    assert all(a.id == f"{a.dimension}_{i % 2:03d}" for i, a in enumerate(small))


def test_full_default_set_has_at_least_80_arrays():
    full = default_set()  # 10 per feature dimension + 10 per conjunction control
    assert len(full) == 10 * len(DIMENSIONS)
    assert sum(a.dimension in FEATURE_DIMENSIONS for a in full) >= 80
    assert all(a.image.shape == (600, 800, 3) for a in full)


@pytest.mark.parametrize(
    ("dimension", "params", "match"),
    [
        ("texture", {}, "unknown pop-out dimension"),
        ("colour", {"hue": 3}, "unknown parameter"),
        ("colour", {"jitter": 1.5}, "jitter"),
        ("size", {"item_size": 200.0}, "do not fit"),
        ("luminance", {"target_level": 96}, "no luminance difference"),
        ("shape", {"target_shape": "star"}, "target_shape"),
        ("colour", {"rows": 1, "cols": 1}, "at least 2 grid cells"),
        ("luminance", {"distractor_level": 0, "background": [0, 0, 0]}, "distractor_level"),
    ],
)
def test_bad_parameters(dimension, params, match):
    with pytest.raises(DataError, match=match):
        generate_array(dimension, 0, **params)
    with pytest.raises(DataError, match="seed"):
        generate_array("colour", -1)


def test_subset_of_cells():
    a = _small("colour", 2, n_items=7)
    assert a.meta["n_items"] == 7 and len(a.meta["items"]) == 7
    lab, n = ndimage.label((a.image != 0).any(axis=2))
    assert n == 7
