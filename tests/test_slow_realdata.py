"""Long real-data checks (``make test-slow`` = ``pytest -m slow``): the pipeline's extraction and
Eq. 1 association on held-out OSIE images against references computed the long way.

* EfficientNet-Lite0 (ImageNet weights): the activation cache written with the pipeline's
  extraction settings (``pipelines/params.yaml``: layers, batch size, float16) equals a direct
  forward pass with plain forward hooks, image by image, on 50 held-out images.
* Region NSS (He et al. 2019, Eq. 1) from `dissect.association.associate` on that cache, and
  `dissect.metrics.region_nss` on the same maps, equal upsample-then-loop: every sampled unit map
  upsampled to 600×800 with ``F.interpolate(bilinear, align_corners=False)`` in float64,
  standardised by its own mean and population std, averaged over the fixations whose pixel
  ``(rint(y), rint(x))`` falls in each region of the ``SegmentationObject`` PNG (read here with
  PIL), region by region; layers of 28×28, 14×14 and 7×7 maps.
* VGG-16 with random weights (the study's trunk and layers, conv4_1 … conv5_3): cache and
  association end to end on 32 held-out images against a forward pass written with
  ``torch.nn.functional`` primitives (tests/test_backbone_reference.py) and upsample-then-loop.

Each test takes 1–3 minutes on 2 cores; they are skipped, with the reason, where OSIE is absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_backbone_reference import vgg16_reference

from dissect.association import associate
from dissect.backbones import load_backbone
from dissect.cache import extract_activations, open_activations, store_metadata
from dissect.config import load_params
from dissect.data.splits import load_split
from dissect.metrics import region_nss

pytestmark = [pytest.mark.slow, pytest.mark.osie]

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "annotations" / "splits" / "osie.csv"
N_LITE, N_VGG = 50, 32
VGG_LAYERS = ["conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


# ------------------------------------------------------------------ references
def region_table(root: Path) -> pd.DataFrame:
    """``regions.csv`` of the region annotations, read directly."""
    return pd.read_csv(root / "regions.csv", dtype={"image": str})


def fixation_regions(osie, root: Path, image_id: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixations (first of each observer dropped), their pixels and the instance id under each,
    read from ``<root>/SegmentationObject/<id>.png``."""
    pts = osie.points(image_id, drop_first=True)
    mask = np.asarray(Image.open(root / "SegmentationObject" / f"{image_id}.png"))
    rows, cols = np.rint(pts[:, 1]).astype(int), np.rint(pts[:, 0]).astype(int)
    return rows, cols, mask[rows, cols].astype(int)


def nss_upsample_loop(maps: np.ndarray, size: tuple[int, int], rows: np.ndarray,
                      cols: np.ndarray, rid: np.ndarray, regions: list[int]) -> np.ndarray:
    """Eq. 1 the long way: ``(units, regions)``, NaN for constant maps and empty regions."""
    up = F.interpolate(torch.from_numpy(maps.astype(np.float64))[None], size=size,
                       mode="bilinear", align_corners=False)[0].numpy()
    mu = up.mean(axis=(1, 2))
    sd = up.std(axis=(1, 2))  # population std (ddof = 0)
    const = np.ptp(maps.reshape(maps.shape[0], -1), axis=1) == 0
    sd[const] = np.nan  # a constant map has no NSS
    out = np.full((maps.shape[0], len(regions)), np.nan)
    for j, region in enumerate(regions):
        inside = rid == region
        if inside.any():
            out[:, j] = ((up[:, rows[inside], cols[inside]] - mu[:, None]) / sd[:, None]).mean(1)
    return out


def heldout_ids(osie, regions_root: Path, n: int) -> list[str]:
    """The first ``n`` held-out images of the committed split that have annotated regions."""
    split = load_split(SPLIT)
    with_regions = set(region_table(regions_root)["image"])
    ids = [i for i in split.loc[split["split"] == "heldout", "image"] if i in with_regions]
    assert len(ids) >= n and all(i in osie for i in ids[:n])
    return ids[:n]


def check_association(assoc, store, osie, regions_root, ids, layers, rng, n_units: int
                      ) -> dict[str, int]:
    """`associate`'s table and `region_nss` on the stored maps against upsample-then-loop, for
    ``n_units`` seeded random units per layer and image (all units for `region_nss` itself)."""
    table = region_table(regions_root)
    counts = {"regions": 0, "compared": 0, "nan_units": 0}
    for layer in layers:
        da = assoc[layer]
        acts = open_activations(store, layer)
        for image_id in ids:
            expect = table[table["image"] == image_id].sort_values("region")
            cols_of = np.flatnonzero(da["image"].values == image_id)
            assert list(da["region_id"].values[cols_of]) == expect["region"].tolist()
            assert list(da["category"].values[cols_of]) == expect["category"].tolist()
            maps = acts.sel(image=image_id).values.astype(np.float64)  # as stored (float16)
            size = osie[image_id].size
            rows, cols, rid = fixation_regions(osie, regions_root, image_id)
            regions = expect["region"].tolist()
            units = np.sort(rng.choice(maps.shape[0], n_units, replace=False))
            ref = nss_upsample_loop(maps[units], size, rows, cols, rid, regions)
            exact = region_nss(maps, size, osie.points(image_id, drop_first=True), rid,
                               regions=regions)
            np.testing.assert_array_equal(np.isnan(exact[units]), np.isnan(ref))
            np.testing.assert_allclose(exact[units], ref, rtol=1e-9, atol=1e-9, equal_nan=True,
                                       err_msg=f"{layer} {image_id}")
            stored = da.values[:, cols_of]  # float32 in the association store
            np.testing.assert_allclose(stored, exact, rtol=1e-6, atol=1e-6, equal_nan=True,
                                       err_msg=f"{layer} {image_id}")
            counts["regions"] += len(regions) if layer == layers[0] else 0
            counts["compared"] += int(np.isfinite(ref).sum())
            counts["nan_units"] += int(np.isnan(ref).all(axis=1).sum())
    return counts


# ------------------------------------------------------------------ EfficientNet-Lite0
@pytest.fixture(scope="module")
def lite():
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite_store(tmp_path_factory, osie, osie_regions_root, lite):
    """The pipeline's extraction (params.yaml) of 50 held-out images, plus a 28×28 layer."""
    params = load_params()
    layers = ["block4", *params["backbone"]["layers"]]
    ids = heldout_ids(osie, osie_regions_root, N_LITE)
    store = tmp_path_factory.mktemp("lite") / "acts.zarr"
    t0 = time.perf_counter()
    extract_activations(osie.subset(ids), lite, layers, store,
                        batch_size=params["extract"]["batch_size"],
                        dtype=params["extract"]["dtype"], progress=False)
    print(f"extraction of {len(ids)} images: {time.perf_counter() - t0:.1f} s")
    return store, ids, layers, params["extract"]["dtype"], osie_regions_root


def test_lite0_cache_equals_direct_forward(lite_store, lite, osie):
    store, ids, layers, dtype, _ = lite_store
    meta = store_metadata(store)
    assert meta["complete"] and meta["layers"] == layers and meta["weights_id"] == lite.weights_id
    eps = float(np.finfo(dtype).eps)
    captured: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    hooks = [lite.module(layer).register_forward_hook(
        lambda _m, _i, out, layer=layer: captured[layer].append(out.detach()))
        for layer in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(ids), 7):  # another batch size than the cache's
                lite.model(lite.preprocess([osie.load_image(i) for i in ids[start:start + 7]]))
    finally:
        for h in hooks:
            h.remove()
    for layer in layers:
        direct = torch.cat(captured[layer]).numpy()
        cached = open_activations(store, layer)
        assert [str(i) for i in cached["image"].values] == ids
        got = cached.values
        assert got.dtype == np.dtype(dtype) and got.shape == direct.shape
        # float16 storage: within half an ulp of the float32 maps (plus float32 noise)
        tol = eps * np.abs(direct) + 1e-6 * np.abs(direct).max()
        assert np.all(np.abs(got.astype(np.float64) - direct) <= tol), layer
        assert float((direct > 0).mean()) > 0.01, layer  # real, non-trivial maps


def test_region_nss_exact_on_real_lite0_maps(lite_store, osie, osie_regions):
    store, ids, _, _, regions_root = lite_store
    layers = ["block4", "block8", "block11", "head"]  # 28×28, 14×14, 7×7, 7×7 maps
    t0 = time.perf_counter()
    assoc = associate(store, osie, osie_regions, layers=layers, image_ids=ids)
    t1 = time.perf_counter()
    counts = check_association(assoc, store, osie, regions_root, ids, layers,
                               np.random.default_rng(0), n_units=48)
    print(f"associate {t1 - t0:.1f} s, reference {time.perf_counter() - t1:.1f} s, {counts}")
    assert counts["regions"] >= 100 and counts["compared"] >= 10_000


# ------------------------------------------------------------------ VGG-16, random weights
def test_vgg16_random_weights_end_to_end(tmp_path, osie, osie_regions, osie_regions_root):
    bb = load_backbone("vgg16", weights="random", seed=0)
    ids = heldout_ids(osie, osie_regions_root, N_VGG)
    store = tmp_path / "vgg.zarr"
    t0 = time.perf_counter()
    extract_activations(osie.subset(ids), bb, VGG_LAYERS, store, batch_size=8,
                        dtype="float16", progress=False)
    t1 = time.perf_counter()
    # cache = the functional VGG-16 on the same weights, batch by batch
    sd = bb.model.state_dict()
    for start in range(0, len(ids), 6):
        batch = ids[start:start + 6]
        with torch.no_grad():
            maps, _ = vgg16_reference(sd, bb.preprocess([osie.load_image(i) for i in batch]))
        for layer in VGG_LAYERS:
            want = maps[layer].numpy()
            got = open_activations(store, layer).sel(image=batch).values.astype(np.float64)
            tol = np.finfo(np.float16).eps * np.abs(want) + 1e-5 * np.abs(want).max()
            assert np.all(np.abs(got - want) <= tol), (layer, batch)
    t2 = time.perf_counter()
    assoc = associate(store, osie, osie_regions, layers=VGG_LAYERS, image_ids=ids)
    counts = check_association(assoc, store, osie, osie_regions_root, ids, VGG_LAYERS,
                               np.random.default_rng(1), n_units=24)
    print(f"extract {t1 - t0:.1f} s, reference forward {t2 - t1:.1f} s, association "
          f"check {time.perf_counter() - t2:.1f} s, {counts}")
    assert counts["regions"] >= 50 and counts["compared"] >= 5_000
