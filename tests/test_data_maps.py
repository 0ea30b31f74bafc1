"""Fixation maps and density maps."""

from __future__ import annotations

import numpy as np
import pytest

from dissect.data import density_map, fixation_map
from dissect.data.maps import OSIE_PX_PER_DEGREE
from dissect.errors import DataError


def test_fixation_map_binary_and_rounding():
    pts = np.array([[1.0, 2.0], [1.2, 1.8], [2.5, 0.0], [3.5, 0.4]])  # 2.5 -> 2, 3.5 -> 4
    m = fixation_map(pts, (4, 6))
    assert m.dtype == np.uint8 and m.shape == (4, 6)
    expected = np.zeros((4, 6), np.uint8)
    expected[2, 1] = expected[0, 2] = expected[0, 4] = 1  # duplicate (1,2) counts once
    np.testing.assert_array_equal(m, expected)
    assert fixation_map(np.empty((0, 2)), (3, 3)).sum() == 0


def test_out_of_bounds_and_nan():
    with pytest.raises(DataError, match=r"1 of 2 point\(s\) lie outside the 4x6 image"):
        fixation_map([[0.0, 0.0], [5.6, 0.0]], (4, 6))
    with pytest.raises(DataError, match="outside"):
        density_map([[-0.6, 0.0]], (4, 6), sigma=1)
    with pytest.raises(DataError, match="NaN"):
        fixation_map([[np.nan, 0.0]], (4, 6))
    with pytest.raises(DataError, match="no fixations"):
        density_map(np.empty((0, 2)), (4, 6), sigma=1)


def density_reference(points, size, sigma, *, truncate=3.5, count_duplicates=False):
    """The documented recipe written out as an explicit sum of 2-D Gaussians.

    Each fixated pixel ``(rint(y), rint(x))`` (once, or once per fixation with
    ``count_duplicates``) puts ``exp(-(dy² + dx²) / 2σ²)`` on every image pixel within the
    kernel's square window ``|dy|, |dx| ≤ truncate·σ`` (OSIE's 7σ window); what falls outside the
    image is lost (zero padding: nothing is reflected back); the sum is normalised to 1. The
    kernel's own normalisation is common to all fixations, so it cancels."""
    h, w = size
    pts = np.asarray(points, dtype=float)
    pix = np.stack([np.rint(pts[:, 1]), np.rint(pts[:, 0])], axis=1).astype(int)
    if not count_duplicates:
        pix = np.unique(pix, axis=0)
    radius = int(np.floor(truncate * sigma))
    out = np.zeros((h, w))
    for r0, c0 in pix:  # the window, clipped to the image
        y = np.arange(max(r0 - radius, 0), min(r0 + radius, h - 1) + 1)
        x = np.arange(max(c0 - radius, 0), min(c0 + radius, w - 1) + 1)
        dy2, dx2 = (y[:, None] - r0) ** 2, (x[None, :] - c0) ** 2
        out[y[0] : y[-1] + 1, x[0] : x[-1] + 1] += np.exp(-(dy2 + dx2) / (2 * sigma**2))
    return out / out.sum()


def test_density_matches_explicit_gaussian_sum():
    pts = np.array([[10.0, 12.0], [10.0, 12.0], [40.0, 30.0]])
    d = density_map(pts, (50, 60))  # default: σ = 1° = 24 px, window ±84 px (> the image)
    assert d.shape == (50, 60) and d.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(d, density_reference(pts, (50, 60), OSIE_PX_PER_DEGREE),
                               rtol=1e-10, atol=1e-16)
    # small σ: the ±3.5σ window cuts the kernel (σ = 2 → ±7 px), points on the border lose the
    # mass that falls outside (zero padding), halves round to even (20.5 → 20, 10.5 → 10)
    pts2 = np.array([[0.0, 0.0], [39.0, 29.0], [20.5, 10.5], [28.5, 10.5], [5.2, 24.6]])
    for sigma in (2.0, 4.0):
        for dup in (False, True):
            got = density_map(pts2, (30, 40), sigma=sigma, count_duplicates=dup)
            want = density_reference(pts2, (30, 40), sigma, count_duplicates=dup)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-16)
    # hand-computed: one fixation at (x, y) = (30, 20), σ = 2; neighbours 1 and 2 px away
    one = density_map([[30.0, 20.0]], (41, 61), sigma=2.0)
    assert one[20, 31] / one[20, 30] == pytest.approx(np.exp(-1 / 8), rel=1e-12)
    assert one[22, 28] / one[20, 30] == pytest.approx(np.exp(-8 / 8), rel=1e-12)
    assert one[20, 37] > 0 and one[20, 38] == 0 and one[27, 37] > 0 and one[28, 30] == 0
    # the mass is in the window: Σ over the ±7 window of exp(−d²/8), a 1-D sum squared
    g = np.exp(-np.arange(-7, 8) ** 2 / 8)
    assert one[20, 30] == pytest.approx(1 / g.sum() ** 2, rel=1e-12)
    # a corner fixation keeps only its in-image quarter (zero padding, no reflection)
    corner = density_map([[0.0, 0.0]], (41, 61), sigma=2.0)
    assert corner[0, 0] == pytest.approx(1 / g[7:].sum() ** 2, rel=1e-12)


def test_density_options():
    pts = np.array([[10.0, 12.0], [10.0, 12.0], [40.0, 30.0]])
    # sigma in degrees and pixels agree; counting duplicates changes the weights
    np.testing.assert_allclose(density_map(pts, (50, 60), sigma_deg=0.5),
                               density_map(pts, (50, 60), sigma=12.0))
    np.testing.assert_allclose(density_map(pts, (50, 60), sigma_deg=0.5, px_per_degree=10),
                               density_map(pts, (50, 60), sigma=5.0))
    counted = density_map(pts, (50, 60), sigma=3.0, count_duplicates=True)
    single = density_map(pts, (50, 60), sigma=3.0)
    assert counted[12, 10] / counted[30, 40] == pytest.approx(2.0)
    assert single[12, 10] / single[30, 40] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        density_map(pts, (50, 60), sigma=3.0, sigma_deg=1.0)


def test_density_on_real_image(osie):
    pts = osie.points("1001")
    d = density_map(pts, osie["1001"].size)
    assert d.shape == (600, 800) and d.sum() == pytest.approx(1.0)
    assert fixation_map(pts, osie["1001"].size).sum() <= len(pts)
    np.testing.assert_allclose(d, density_reference(pts, (600, 800), OSIE_PX_PER_DEGREE),
                               rtol=1e-9, atol=1e-18)
