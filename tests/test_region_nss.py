"""Exact region NSS / NMM of upsampled maps against torch.nn.functional.interpolate + masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dissect.errors import DataError
from dissect.metrics import (
    nmm,
    nss,
    nss_at_points_torch,
    region_nss,
    unit_nmm,
    upsample_matrix,
    upsampled_moments,
)


def upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference: the maps materialised by PyTorch, float64."""
    t = torch.from_numpy(np.asarray(a, dtype=np.float64))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def region_nss_reference(a, size, pts, rid, regions):
    up = upsample(a, size)
    out = np.full((a.shape[0], len(regions)), np.nan)
    for k in range(a.shape[0]):
        for j, r in enumerate(regions):
            sel = rid == r
            if sel.any():
                out[k, j] = nss(up[k], pts[sel])
    return out


# ------------------------------------------------------------------ upsampling matrices
def test_upsample_matrix_hand_2_to_4():
    expected = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    np.testing.assert_array_equal(upsample_matrix(4, 2), expected)


def test_upsample_matrix_matches_interpolate_of_identity():
    sizes = [(n_out, n_in) for n_out in range(1, 41) for n_in in range(1, 16)]
    sizes += [(600, 14), (800, 14), (600, 7), (800, 28), (599, 13), (224, 600), (7, 600)]
    for n_out, n_in in sizes:
        eye = torch.eye(n_in, dtype=torch.float64)[None, None]
        ref = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
        u = upsample_matrix(n_out, n_in)
        assert u.shape == (n_out, n_in)
        np.testing.assert_allclose(u, ref[0, 0].numpy(), rtol=0, atol=4e-15)
        np.testing.assert_allclose(u.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    # bit-exact for the sizes the pipeline uses
    for n_out, n_in in [(600, 14), (800, 14), (600, 28), (800, 7)]:
        eye = torch.eye(n_in, dtype=torch.float64)[None, None]
        ref = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
        np.testing.assert_array_equal(upsample_matrix(n_out, n_in), ref[0, 0].numpy())


def test_upsample_matrix_cached_and_read_only():
    u = upsample_matrix(33, 5)
    assert upsample_matrix(33, 5) is u
    with pytest.raises(ValueError):
        u[0, 0] = 2.0
    with pytest.raises(DataError, match="n_in"):
        upsample_matrix(4, 0)


# ------------------------------------------------------------------ region NSS
def test_region_nss_hand_2x2_to_4x4():
    a = np.array([[[0.0, 4.0], [8.0, 12.0]]])
    up_hand = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], dtype=float)
    np.testing.assert_allclose(upsample(a, (4, 4))[0], up_hand, atol=1e-14)
    mu, sd = up_hand.mean(), up_hand.std()
    assert mu == 6.0
    pts = np.array([[3, 3], [0, 0], [1, 2], [3, 0]], dtype=float)  # (x, y)
    rid = np.array([1, 1, 2, 0])
    got = region_nss(a, (4, 4), pts, rid)
    expected = [[((12 - 6) + (0 - 6)) / 2 / sd, (7 - 6) / sd]]
    np.testing.assert_allclose(got, expected, atol=1e-13)
    m, s = upsampled_moments(a, (4, 4))
    np.testing.assert_allclose([m[0], s[0]], [mu, sd], atol=1e-13)


def test_region_nss_random_vs_interpolate():
    rng = np.random.default_rng(0)
    cases = [(14, 14, 600, 800), (7, 7, 600, 800), (5, 9, 37, 41), (3, 4, 10, 11), (1, 6, 9, 7)]
    cases += [
        tuple(int(v) for v in rng.integers(1, 16, 2))
        + tuple(int(v) for v in rng.integers(1, 90, 2))
        for _ in range(40)
    ]
    for h, w, hh, ww in cases:
        u = int(rng.integers(1, 5))
        a = rng.normal(size=(u, h, w)) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
        if rng.random() < 0.3:
            a = np.maximum(a, 0)  # post-ReLU-like, possibly all zero -> constant
        n = int(rng.integers(1, 40))
        pts = np.c_[rng.uniform(-0.49, ww - 0.51, n), rng.uniform(-0.49, hh - 0.51, n)]
        rid = rng.integers(-1, 6, n)
        regions = np.unique(rid[rid > 0])
        got = region_nss(a, (hh, ww), pts, rid)
        ref = region_nss_reference(a, (hh, ww), pts, rid, regions)
        assert got.shape == (u, regions.size)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10, equal_nan=True)


def test_region_nss_regions_argument_and_empty_region():
    rng = np.random.default_rng(1)
    a = rng.random((3, 5, 6))
    pts = np.array([[0, 0], [19, 14], [7, 3], [7, 3], [10, 10]], dtype=float)
    rid = np.array([2, 2, 5, 5, 0])
    got = region_nss(a, (15, 20), pts, rid, regions=[5, 9, 2])
    assert got.shape == (3, 3)
    assert np.all(np.isnan(got[:, 1]))  # region 9 has no fixation
    ref = region_nss_reference(a, (15, 20), pts, rid, [5, 2])
    np.testing.assert_allclose(got[:, [0, 2]], ref, atol=1e-12)
    # default: sorted positive ids only (0 and negatives give no column)
    np.testing.assert_allclose(region_nss(a, (15, 20), pts, rid), ref[:, ::-1], atol=1e-12)
    assert region_nss(a, (15, 20), pts, np.zeros(5, dtype=int)).shape == (3, 0)
    assert np.all(np.isnan(region_nss(a, (15, 20), pts, np.zeros(5, dtype=int), regions=[1])))
    with pytest.raises(DataError, match="regions"):
        region_nss(a, (15, 20), pts, rid, regions=[2, 2])
    with pytest.raises(DataError, match="regions"):
        region_nss(a, (15, 20), pts, rid, regions=[0, 2])


def test_region_nss_border_and_duplicate_fixations():
    rng = np.random.default_rng(2)
    a = rng.random((4, 7, 9))
    hh, ww = 31, 45
    pts = np.array(
        [[ww - 1, hh - 1], [0, 0], [0, hh - 1], [ww - 1, 0], [ww - 1, hh - 1], [12, 30]],
        dtype=float,
    )
    rid = np.array([1, 1, 2, 2, 3, 3])
    got = region_nss(a, (hh, ww), pts, rid)
    up = upsample(a, (hh, ww))
    z = (up - up.mean(axis=(1, 2), keepdims=True)) / up.std(axis=(1, 2), keepdims=True)
    corner = z[:, hh - 1, ww - 1]
    np.testing.assert_allclose(got[:, 0], (corner + z[:, 0, 0]) / 2, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], (z[:, hh - 1, 0] + z[:, 0, ww - 1]) / 2, atol=1e-12)
    np.testing.assert_allclose(got[:, 2], (corner + z[:, 30, 12]) / 2, atol=1e-12)
    # a duplicated fixation counts twice
    dup = region_nss(a, (hh, ww), pts[[0, 0, 1]], np.array([1, 1, 1]))
    np.testing.assert_allclose(dup[:, 0], (2 * corner + z[:, 0, 0]) / 3, atol=1e-12)


def test_region_nss_constant_units_nan():
    rng = np.random.default_rng(3)
    a = rng.random((4, 6, 6))
    a[1] = 0.0
    a[2] = 0.3  # mean of a constant float map is not exactly the constant
    pts = np.array([[3, 4], [10, 2]], dtype=float)
    got = region_nss(a, (20, 24), pts, np.array([1, 2]))
    assert np.all(np.isnan(got[[1, 2]]))
    assert np.all(np.isfinite(got[[0, 3]]))


def test_region_nss_torch_input_and_float32():
    rng = np.random.default_rng(4)
    a = rng.random((5, 7, 7)).astype(np.float32)
    pts = np.c_[rng.uniform(0, 99, 20), rng.uniform(0, 79, 20)]
    rid = rng.integers(1, 4, 20)
    np.testing.assert_allclose(
        region_nss(torch.from_numpy(a), (80, 100), pts, rid),
        region_nss(a, (80, 100), pts, rid),
        atol=1e-12,
    )


def test_region_nss_bad_input():
    a = np.random.rand(2, 4, 4)
    pts = np.array([[1.0, 1.0], [2.0, 2.0]])
    rid = np.array([1, 1])
    bad = a.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(DataError, match="activations.*unit 1"):
        region_nss(bad, (10, 10), pts, rid)
    with pytest.raises(DataError, match="fixations.*outside"):
        region_nss(a, (10, 10), np.array([[1.0, 1.0], [10.0, 2.0]]), rid)
    with pytest.raises(DataError, match="fixations.*outside"):
        region_nss(a, (10, 10), np.array([[1.0, -0.6], [2.0, 2.0]]), rid)
    with pytest.raises(DataError, match="region_ids"):
        region_nss(a, (10, 10), pts, np.array([1]))
    with pytest.raises(DataError, match="region_ids"):
        region_nss(a, (10, 10), pts, np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="activations"):
        region_nss(a[0], (10, 10), pts, rid)
    with pytest.raises(DataError, match="image_size"):
        region_nss(a, (10, 0), pts, rid)


# ------------------------------------------------------------------ NMM of unit maps
def test_unit_nmm_vs_brute_force():
    rng = np.random.default_rng(5)
    for h, w, hh, ww in [(14, 14, 60, 80), (3, 5, 17, 23), (7, 4, 7, 4), (5, 5, 3, 2)]:
        a = rng.normal(size=(3, h, w))
        mask = rng.random((hh, ww)) < 0.3
        mask[0, 0] = True
        up = upsample(a, (hh, ww))
        ref = [nmm(up[k], mask) for k in range(3)]
        np.testing.assert_allclose(unit_nmm(a, (hh, ww), mask), ref, atol=1e-11)
    a[1] = 2.0
    assert math.isnan(unit_nmm(a, (hh, ww), mask)[1])
    with pytest.raises(DataError, match="mask.*empty"):
        unit_nmm(a, (hh, ww), np.zeros((hh, ww), dtype=bool))
    with pytest.raises(DataError, match="mask"):
        unit_nmm(a, (hh, ww), np.ones((hh + 1, ww), dtype=bool))


# ------------------------------------------------------------------ differentiable torch version
def test_nss_at_points_torch_matches_numpy():
    rng = np.random.default_rng(6)
    a = rng.random((6, 9, 11))
    pts = np.c_[rng.uniform(0, 49, 25), rng.uniform(0, 39, 25)]
    ref = region_nss(a, (40, 50), pts, np.ones(25, dtype=int))[:, 0]
    got64 = nss_at_points_torch(torch.from_numpy(a), (40, 50), torch.from_numpy(pts))
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), ref, atol=1e-12)
    got32 = nss_at_points_torch(
        torch.from_numpy(a).float(), (40, 50), torch.from_numpy(np.rint(pts)).long()
    )
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, atol=1e-5)


def test_nss_at_points_torch_gradcheck():
    rng = np.random.default_rng(7)
    maps = torch.tensor(rng.random((2, 3, 4)), dtype=torch.float64, requires_grad=True)
    pts = torch.tensor([[0, 0], [6, 4], [3, 2], [3, 2]])

    def fn(m):
        return nss_at_points_torch(m, (5, 7), pts)

    assert torch.autograd.gradcheck(fn, (maps,), eps=1e-6, atol=1e-6)


def test_nss_at_points_torch_constant_map():
    maps = torch.rand(3, 4, 4, dtype=torch.float64)
    maps[1] = 0.7
    maps.requires_grad_(True)
    out = nss_at_points_torch(maps, (8, 8), torch.tensor([[1, 1], [5, 6]]))
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    out[[0, 2]].sum().backward()
    assert torch.isfinite(maps.grad).all()
    with pytest.raises(DataError, match="points.*outside"):
        nss_at_points_torch(maps, (8, 8), torch.tensor([[8, 1]]))


def test_nss_at_points_torch_float32_constant_and_nan():
    maps = torch.rand(3, 5, 6)
    maps[0] = 0.3
    maps[2] = 0.0
    out = nss_at_points_torch(maps, (20, 30), torch.tensor([[1.0, 1.0], [25.4, 17.6]]))
    assert torch.isnan(out[[0, 2]]).all() and torch.isfinite(out[1])
    maps[1, 2, 2] = float("nan")
    with pytest.raises(DataError, match="maps"):
        nss_at_points_torch(maps, (20, 30), torch.tensor([[1, 1]]))
