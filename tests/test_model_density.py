"""Saliency map → density (dissect.models.density): normalised, the fit recovers a known blur,
power and centre-bias weight, and it is the best point of its grid by a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp

from dissect.errors import DataError
from dissect.models.base import SaliencyModel
from dissect.models.density import SaliencyDensity, fit_saliency_density, map_log_density

H, W = 30, 40


def centre(shape=(H, W), s=8.0):
    y, x = np.mgrid[: shape[0], : shape[1]]
    g = -(((y - shape[0] / 2) ** 2) + ((x - shape[1] / 2) ** 2)) / (2 * s**2)
    return g - logsumexp(g)


def true_density(s, sigma, gamma, w, b):
    """The model's density written out directly (numpy, no shared code)."""
    u = (s - s.min()) / (s.max() - s.min())
    q = gaussian_filter(u, sigma, mode="nearest", truncate=4.0) ** gamma
    q = q / q.sum()
    return (1 - w) * q + w * np.exp(b)


def synthetic(n_images=40, n_fix=60, sigma=2.0, gamma=2.0, w=0.3, seed=0):
    rng = np.random.default_rng(seed)
    b = centre()
    maps, fix, cbs = {}, {}, {}
    for i in range(n_images):
        s = gaussian_filter(rng.normal(size=(H, W)), 3.0) * 10 + 5  # arbitrary scale
        p = true_density(s, sigma, gamma, w, b)
        idx = rng.choice(H * W, size=n_fix, p=p.ravel())
        ys, xs = np.divmod(idx, W)
        maps[f"i{i}"], cbs[f"i{i}"] = s, b
        fix[f"i{i}"] = np.stack([xs, ys], axis=1).astype(float)
    return maps, fix, cbs


def test_density_is_normalised_and_equals_the_direct_formula():
    rng = np.random.default_rng(1)
    s = rng.uniform(size=(H, W))
    ld = map_log_density(s, centre(), 2.0, 2.0, 0.25)
    assert np.exp(ld).sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.exp(ld), true_density(s, 2.0, 2.0, 0.25, centre()),
                               rtol=1e-10)
    # a constant map: the map part is uniform
    ld = map_log_density(np.full((H, W), 3.0), centre(), 0.0, 1.0, 0.5)
    np.testing.assert_allclose(np.exp(ld), 0.5 / (H * W) + 0.5 * np.exp(centre()), rtol=1e-12)


def test_fit_recovers_blur_power_and_weight():
    maps, fix, cbs = synthetic()
    sigma, gamma, w, table = fit_saliency_density(maps, fix, cbs, sigmas=(0.0, 2.0, 6.0),
                                                  exponents=(0.5, 1.0, 2.0, 4.0))
    assert (sigma, gamma) == (2.0, 2.0)
    assert w == pytest.approx(0.3, abs=0.08)
    assert len(table) == 12


def test_fit_is_the_best_grid_point_by_a_loop():
    maps, fix, cbs = synthetic(n_images=10, seed=3)
    sigma, gamma, w, table = fit_saliency_density(maps, fix, cbs, sigmas=(0.0, 3.0),
                                                  exponents=(1.0, 3.0))
    for _, row in table.iterrows():
        lls = []
        for i in maps:  # mean log-likelihood over all fixations, written as a loop
            p = true_density(maps[i], row.sigma, row.gamma, row.weight, cbs[i])
            lls += [np.log(p[int(round(y)), int(round(x))]) for x, y in fix[i]]
        assert row.log_likelihood == pytest.approx(np.mean(lls), rel=1e-10)
        # the weight is optimal for its (σ, γ): nearby weights do worse
        for dw in (-0.02, 0.02):
            ww = min(max(row.weight + dw, 1e-6), 1 - 1e-6)
            alt = np.mean([np.log(true_density(maps[i], row.sigma, row.gamma, ww, cbs[i])
                                  [int(round(y)), int(round(x))]) for i in maps for x, y in fix[i]])
            assert alt <= row.log_likelihood + 1e-12
    best = table.loc[table.log_likelihood.idxmax()]
    assert (sigma, gamma, w) == (best.sigma, best.gamma, best.weight)


def test_wrapper_scores_the_density_but_returns_the_raw_map():
    class Fixed(SaliencyModel):
        name = "fixed"

        def saliency_map(self, image):
            return np.arange(H * W, dtype=float).reshape(H, W)

    class Centre:
        def log_density(self, size):
            assert tuple(size) == (H, W)
            return centre()

    m = SaliencyDensity(Fixed(), Centre(), sigma=1.0, gamma=2.0, weight=0.1)
    img = np.zeros((H, W, 3), np.uint8)
    np.testing.assert_array_equal(m.saliency_map(img), Fixed().saliency_map(img))
    assert np.exp(m.log_density(img)).sum() == pytest.approx(1.0)
    assert m.name == "fixed+density"


def test_bad_inputs_are_refused():
    maps, fix, cbs = synthetic(n_images=2)
    with pytest.raises(DataError, match="non-finite"):
        fit_saliency_density({**maps, "i0": np.full((H, W), np.nan)}, fix, cbs)
    with pytest.raises(DataError, match="no fixations"):
        fit_saliency_density(maps, {"i0": fix["i0"]}, cbs)
    with pytest.raises(DataError, match="outside"):
        fit_saliency_density(maps, {**fix, "i1": np.array([[W + 5.0, 1.0]])}, cbs)
    with pytest.raises(DataError, match="weight"):
        map_log_density(maps["i0"], cbs["i0"], 1.0, 1.0, 0.0)


def test_grid_grows_while_the_optimum_sits_on_its_upper_edge():
    """Fixations drawn with γ = 8 and a grid ending at γ = 2: the fit doubles the edge until
    the optimum is inside (4, 8, then 16 evaluated), and σ's edge too while it is the best."""
    maps, fix, cbs = synthetic(n_images=40, n_fix=80, sigma=2.0, gamma=8.0, w=0.2, seed=5)
    sigma, gamma, w, table = fit_saliency_density(maps, fix, cbs, sigmas=(0.0, 2.0),
                                                  exponents=(1.0, 2.0))
    assert gamma == 8.0 and sigma == 2.0
    assert set(table["gamma"]) == {1.0, 2.0, 4.0, 8.0, 16.0}
    assert 4.0 in set(table["sigma"])  # σ = 2 was an edge optimum at first
    # capped: no extension keeps the edge optimum
    _, g0, _, t0 = fit_saliency_density(maps, fix, cbs, sigmas=(0.0, 2.0),
                                        exponents=(1.0, 2.0), max_extensions=0)
    assert g0 == 2.0 and len(t0) == 4
