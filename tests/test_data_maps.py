"""Fixation maps and density maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

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


def test_density_matches_osie_recipe():
    pts = np.array([[10.0, 12.0], [10.0, 12.0], [40.0, 30.0]])
    d = density_map(pts, (50, 60))
    assert d.shape == (50, 60) and d.sum() == pytest.approx(1.0)
    base = np.zeros((50, 60))
    base[12, 10] = base[30, 40] = 1.0  # binary: the duplicate counts once
    ref = gaussian_filter(base, OSIE_PX_PER_DEGREE, mode="constant", truncate=3.5)
    np.testing.assert_allclose(d, ref / ref.sum())
    # sigma in degrees and pixels agree; counting duplicates changes the weights
    np.testing.assert_allclose(density_map(pts, (50, 60), sigma_deg=0.5),
                               density_map(pts, (50, 60), sigma=12.0))
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
