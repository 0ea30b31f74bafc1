"""Issue 11, "quieter numeric traps" in the metrics: float16 maps in the differentiable NSS,
maps of huge or tiny magnitude in the scale-invariant metrics, and NaN/inf fixation coordinates
under the out-of-bounds policies. Each test compares with an independent reference (the float64
computation, the unscaled map, a hand-computed value) or asserts the clear error."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from dissect.errors import DataError
from dissect.metrics import (
    auc_borji,
    cc,
    information_gain,
    kld,
    nmm,
    nss,
    pixel_indices,
    region_nss,
    sim,
    unit_nmm,
    upsampled_moments,
)
from dissect.metrics.conventions import pixel_indices_torch, pow2_exponent

torch = pytest.importorskip("torch")
from dissect.metrics.region import nss_at_points_torch  # noqa: E402

IMAGE = (600, 800)  # OSIE's image size: H·W = 480,000 overflows float16 sums


def _maps_and_points() -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(11)
    maps = np.maximum(rng.standard_normal((3, 38, 50)) * 3.0 + 1.0, 0.0)  # ReLU-like
    pts = np.column_stack([rng.uniform(0, IMAGE[1] - 1, 40), rng.uniform(0, IMAGE[0] - 1, 40)])
    return maps, torch.tensor(pts)


def _nss_and_grad(maps: torch.Tensor, pts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = maps.detach().clone().requires_grad_(True)
    out = nss_at_points_torch(x, IMAGE, pts)
    out.sum().backward()
    return out.detach().double().numpy(), x.grad.double().numpy()


# ------------------------------------------------------------------------------------------
# 1. narrow float dtypes in nss_at_points_torch
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_maps_match_float64(dtype, rtol):
    maps, pts = _maps_and_points()
    half = torch.tensor(maps).to(dtype)
    exact = half.double()  # the very same values, in float64
    out, grad = _nss_and_grad(half, pts)
    ref_out, ref_grad = _nss_and_grad(exact, pts)
    # independent reference for the values: the numpy float64 region NSS (one region, all points)
    ref_np = region_nss(exact.numpy(), IMAGE, pts.numpy(), np.ones(len(pts), dtype=int))[:, 0]
    np.testing.assert_allclose(ref_out, ref_np, rtol=1e-10)
    assert nss_at_points_torch(half, IMAGE, pts).dtype == dtype  # callers get the maps' dtype
    assert np.all(np.abs(out) > 0.01)  # the bug: all zeros
    np.testing.assert_allclose(out, ref_np, rtol=rtol, atol=rtol * np.abs(ref_np).max())
    assert np.abs(grad).max() > 0  # the bug: zero gradient
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=rtol * np.abs(ref_grad).max())


def test_float32_maps_of_huge_magnitude_are_exact():
    """A power-of-two scale is exact: NSS must be bit for bit the same and the gradient scaled
    by exactly 2**-k (float32 sums of squares of 2**70-sized maps used to overflow)."""
    maps, pts = _maps_and_points()
    m32 = torch.tensor(maps, dtype=torch.float32)
    out, grad = _nss_and_grad(m32, pts)
    for k in (70, -70):
        out_k, grad_k = _nss_and_grad(m32 * 2.0**k, pts)
        assert np.all(np.isfinite(out_k))
        np.testing.assert_array_equal(out_k, out)
        np.testing.assert_array_equal(grad_k, grad * 2.0**-k)


# ------------------------------------------------------------------------------------------
# 2. scale invariance of the map metrics
# ------------------------------------------------------------------------------------------
def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        return fn(*args, **kwargs)


def test_hand_computed_small_case_at_1e200():
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    # mean 1.5, population std sqrt(1.25); the point (x=1, y=1) has value 3
    expected = 1.5 / np.sqrt(1.25)
    for s in (1.0, 1e200, 1e-200, 1e300):
        assert _no_warning(nss, m * s, [[1.0, 1.0]]) == pytest.approx(expected, rel=1e-12)
        assert _no_warning(cc, m * s, m) == pytest.approx(1.0, rel=1e-12)
        assert _no_warning(cc, m * s, m[::-1, ::-1]) == pytest.approx(-1.0, rel=1e-12)
        assert _no_warning(nmm, m * s, m > 1.5) == pytest.approx(
            (2.5 - 1.5) / np.sqrt(1.25), rel=1e-12
        )


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 1e-300])
def test_metrics_are_scale_invariant(scale):
    rng = np.random.default_rng(3)
    m = rng.random((30, 40))
    other = rng.random((30, 40))
    pts = np.column_stack([rng.uniform(0, 39, 25), rng.uniform(0, 29, 25)])
    mask = other > 0.7
    for fn, args in [
        (nss, (pts,)),
        (cc, (other,)),
        (sim, (other,)),
        (kld, (other,)),
        (information_gain, (other, pts)),
        (auc_borji, (pts,)),
        (nmm, (mask,)),
    ]:
        want = fn(m, *args)
        got = _no_warning(fn, m * scale, *args)
        assert np.isfinite(got) and got == pytest.approx(want, rel=1e-12, abs=1e-14), fn.__name__


def test_power_of_two_scale_is_bitwise_exact():
    """Ordinary maps: the normalisation changes nothing, bit for bit (scaling by 2**k is exact,
    so 2**600·m must give exactly the result of m)."""
    rng = np.random.default_rng(5)
    m = rng.standard_normal((25, 35)) * 7.0 + 2.0
    other = rng.random((25, 35))
    pts = np.column_stack([rng.uniform(0, 34, 20), rng.uniform(0, 24, 20)])
    for k in (600, -600):
        assert _no_warning(nss, m * 2.0**k, pts) == nss(m, pts)
        assert _no_warning(cc, m * 2.0**k, other) == cc(m, other)
    acts = np.maximum(rng.standard_normal((4, 9, 12)), 0.0)
    ids = rng.integers(0, 3, 30)
    fx = np.column_stack([rng.uniform(0, 199, 30), rng.uniform(0, 149, 30)])
    mask = np.zeros((150, 200), dtype=bool)
    mask[40:90, 50:120] = True
    mu, sd = upsampled_moments(acts, (150, 200))
    for k in (900, -900):
        big = acts * 2.0**k
        np.testing.assert_array_equal(
            _no_warning(region_nss, big, (150, 200), fx, ids), region_nss(acts, (150, 200), fx, ids)
        )
        np.testing.assert_array_equal(
            unit_nmm(big, (150, 200), mask), unit_nmm(acts, (150, 200), mask)
        )
        mu_k, sd_k = _no_warning(upsampled_moments, big, (150, 200))
        np.testing.assert_array_equal(mu_k, mu * 2.0**k)
        np.testing.assert_array_equal(sd_k, sd * 2.0**k)


def test_region_nss_at_1e200_matches_unscaled():
    rng = np.random.default_rng(8)
    acts = rng.random((3, 10, 14))
    fx = np.column_stack([rng.uniform(0, 279, 30), rng.uniform(0, 199, 30)])
    ids = rng.integers(1, 4, 30)
    want = region_nss(acts, (200, 280), fx, ids)
    got = _no_warning(region_nss, acts * 1e200, (200, 280), fx, ids)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_pow2_exponent():
    np.testing.assert_array_equal(
        pow2_exponent([0.0, 0.5, 0.75, 1.0, 3.0, 2.0**-1074]), [0, 0, 0, 1, 2, -1073]
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_values_raise(bad):
    m = np.ones((4, 5))
    m[1, 2] = bad
    m[0, 0] = 2.0
    for fn, args in [(nss, ([[1.0, 1.0]],)), (cc, (np.ones((4, 5)),)), (sim, (np.ones((4, 5)),))]:
        with pytest.raises(DataError, match=r"saliency_map|\ba\b.*(NaN|infinite)"):
            fn(m, *args)
    with pytest.raises(DataError, match="NaN/inf"):
        region_nss(m[None], (8, 10), [[1.0, 1.0]], [1])
    with pytest.raises(DataError, match="NaN/inf"):
        nss_at_points_torch(torch.tensor(m[None]), (8, 10), torch.tensor([[1, 1]]))


# ------------------------------------------------------------------------------------------
# 3. NaN / inf coordinates
# ------------------------------------------------------------------------------------------
BAD_POINTS = [[1.0, 2.0], [np.inf, 3.0], [2.0, np.nan], [-np.inf, np.inf], [0.4, 0.6]]


def test_pixel_indices_refuse_non_finite_points():
    msg = r"fixations: 3 point\(s\) have non-finite coordinates \(1 NaN, 3 infinite.*#1"
    with pytest.raises(DataError, match=msg):
        pixel_indices(BAD_POINTS, "fixations")
    with pytest.raises(DataError, match=msg):
        pixel_indices_torch(torch.tensor(BAD_POINTS), "fixations")
    # finite points: unchanged rule (round half to even)
    rows, cols = pixel_indices([[10.5, 11.5], [0.4, 0.6]])
    np.testing.assert_array_equal(rows, [12, 1])
    np.testing.assert_array_equal(cols, [10, 0])
    np.testing.assert_array_equal(
        pixel_indices_torch(torch.tensor([[10.5, 11.5], [0.4, 0.6]])), [[10, 12], [0, 1]]
    )


def test_metrics_refuse_non_finite_points():
    m = np.arange(20.0).reshape(4, 5)
    with pytest.raises(DataError, match=r"fixations.*NaN.*infinite"):
        nss(m, BAD_POINTS)
    with pytest.raises(DataError, match=r"points: 3 point\(s\) have non-finite"):
        nss_at_points_torch(torch.tensor(m[None]), (8, 10), torch.tensor(BAD_POINTS))


def test_fixation_map_refuses_inf_point():
    from dissect.data import fixation_map

    with pytest.raises(DataError, match=r"1 point\(s\) have non-finite"):
        fixation_map(np.array([[1.0, 1.0], [np.inf, 2.0]]), (10, 10))


def _osie_table(osie, ids):
    rows = pd.concat([osie.fixations_of(i) for i in ids], ignore_index=True)
    return [osie[i] for i in ids], rows


@pytest.mark.parametrize("policy", ["clip", "drop"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_fixation_is_not_clipped(osie, policy, bad):
    """An inf coordinate is refused under every out-of-bounds policy, while a finite
    out-of-bounds point next to it is still clipped / dropped as documented."""
    from dissect.data.osie import FixationDataset

    stimuli, table = _osie_table(osie, ["1001", "1002"])
    w = stimuli[0].width
    table.loc[3, "x"] = w + 40.0  # finite, outside: the policy applies
    finite_only = table.copy()
    table.loc[5, "y"] = bad
    with pytest.raises(DataError) as err:
        FixationDataset.from_table(stimuli, table, "fixations.mat", out_of_bounds=policy)
    msg = str(err.value)
    assert re.search(r"\b1 (point|fixation)\(s\)", msg), msg
    assert re.search(r"non-finite|infinite|inf\b", msg), msg
    with pytest.warns(UserWarning, match="1 out-of-bounds"):
        ok = FixationDataset.from_table(stimuli, finite_only, "fixations.mat", out_of_bounds=policy)
    n = len(osie.fixations_of("1001"))
    if policy == "clip":
        assert ok.points("1001")[3, 0] == w - 1
        assert len(ok.points("1001")) == n
    else:
        assert len(ok.points("1001")) == n - 1
