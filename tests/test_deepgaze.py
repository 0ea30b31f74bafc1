"""DeepGaze I readout (dissect.models.deepgaze) against independent references: scipy's Gaussian
filter, explicit loops over pixels and fixations, hand-computed cells, and recovery of known
weights from fixations sampled from a known model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.special import logsumexp

from dissect.errors import DataError
from dissect.models.deepgaze import (
    DeepGazeI,
    FeatureNormaliser,
    fixation_cells,
    gaussian_blur,
    log_likelihood,
    log_likelihood_loss,
    train_deepgaze,
    upsample_log_density,
)

GRID = (24, 32)
IMAGE = (240, 320)


def _centre(grid: tuple[int, int] = GRID, s: float = 0.3) -> np.ndarray:
    """A log centre bias on the grid: isotropic Gaussian in unit-square coordinates."""
    ys = (np.arange(grid[0]) + 0.5) / grid[0] - 0.5
    xs = (np.arange(grid[1]) + 0.5) / grid[1] - 0.5
    g = -(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * s**2)
    return g - logsumexp(g)


def _synthetic(n_images: int = 60, n_fix: int = 40, seed: int = 1):
    """5 smooth random channels per image (unit std over the set); fixations drawn from the
    softmax of blur_σ(Σ w_c f_c) + log centre, w = [1.5, 0, 0, -1, 0], σ = 1.5 grid px."""
    rng = np.random.default_rng(seed)
    c = 5
    feats = ndimage.gaussian_filter(rng.standard_normal((n_images, c, *GRID)), (0, 0, 2, 2))
    feats /= feats.transpose(1, 0, 2, 3).reshape(c, -1).std(axis=1)[None, :, None, None]
    w_true = np.array([1.5, 0.0, 0.0, -1.0, 0.0])
    centre = _centre()
    cell_h, cell_w = IMAGE[0] // GRID[0], IMAGE[1] // GRID[1]
    features, fixations = {}, {}
    for i in range(n_images):
        o = ndimage.gaussian_filter(np.tensordot(w_true, feats[i], axes=1), 1.5,
                                    mode="nearest", truncate=3.0) + centre
        p = np.exp(o - logsumexp(o)).ravel()
        cell = rng.choice(p.size, size=n_fix, p=p)
        r, q = np.divmod(cell, GRID[1])
        x = q * cell_w + rng.integers(0, cell_w, n_fix)
        y = r * cell_h + rng.integers(0, cell_h, n_fix)
        key = f"img{i:03d}"
        features[key] = torch.tensor(feats[i], dtype=torch.float32)
        fixations[key] = (np.stack([x, y], axis=1).astype(float), IMAGE)
    return features, fixations, torch.tensor(centre, dtype=torch.float32), w_true


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


def _train(synthetic, seed: int = 0, epochs: int = 40):
    features, fixations, centre, _ = synthetic
    ids = sorted(features)
    return train_deepgaze(
        features, centre, ids[:50], ids[50:], fixations,
        epochs=epochs, lr=0.05, l1=0.003, batch_size=10, seed=seed, patience=8,
        step_size=30, gamma=0.3,
    )


# -- (1) normalisation ----------------------------------------------------------------------------


def test_log_density_integrates_to_one_on_grid_and_image():
    torch.manual_seed(0)
    model = DeepGazeI(4, torch.tensor(_centre((6, 8))), init_weight_std=1.0, init_sigma=0.8)
    model = model.double()
    x = torch.randn(3, 4, 6, 8, dtype=torch.float64)
    ld = model(x).detach()
    np.testing.assert_allclose(torch.logsumexp(ld.flatten(1), 1).numpy(), 0.0, atol=1e-12)
    ld32 = model.float()(x.float()).detach().double()  # float32, the training dtype
    np.testing.assert_allclose(torch.logsumexp(ld32.flatten(1), 1).numpy(), 0.0, atol=1e-6)
    up = model.log_density_at(x[0], (25, 37))  # sides not multiples of the grid
    assert up.shape == (25, 37) and up.dtype == torch.float64
    assert math.isclose(float(np.exp(up.numpy()).sum()), 1.0, rel_tol=1e-12)
    # the per-pixel reading of the grid density (p_cell / n_cell) sums to 1 over every pixel:
    # every pixel of the 25 x 37 image enumerated explicitly
    H, W = 25, 37
    pts = np.array([(x_, y_) for y_ in range(H) for x_ in range(W)], dtype=float)
    fc = fixation_cells(pts, (H, W), (6, 8))
    per_pixel = ld[0].flatten().numpy()[fc.flat] - fc.log_pixels
    assert math.isclose(float(np.exp(per_pixel).sum()), 1.0, rel_tol=1e-9)
    # the mean log-likelihood of all pixels, once each, is the mean of that per-pixel density
    ll = log_likelihood(ld[:1], [pts], [(H, W)])
    assert math.isclose(float(ll), float(per_pixel.mean()), rel_tol=1e-12)


def test_upsampled_log_density_interpolates_log_values():
    # constant grid log density → uniform density at any size
    up = upsample_log_density(torch.full((3, 4), -math.log(12)), (7, 9))
    np.testing.assert_allclose(up.numpy(), -math.log(63), rtol=1e-12)


# -- (2) blur --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.4, 1.7, 6.0])  # 6.0: kernel radius 18 > the 13-row map
def test_blur_equals_scipy_gaussian_filter(sigma):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((13, 17))
    got = gaussian_blur(torch.tensor(a)[None], torch.tensor(sigma, dtype=torch.float64))[0]
    ref = ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_blur_sigma_gets_a_gradient():
    a = torch.randn(1, 9, 9, dtype=torch.float64)
    a[0, 4, 4] = 10.0
    s = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    gaussian_blur(a, s)[0, 4, 4].backward()
    assert s.grad is not None and float(s.grad) < 0  # a wider blur lowers the peak


# -- (3) recovery ----------------------------------------------------------------------------------


def test_recovers_known_weights(synthetic):
    res = _train(synthetic)
    w = res.model.weights.detach().numpy()
    w_true = synthetic[3]
    corr = np.corrcoef(w, w_true)[0, 1]
    assert corr > 0.9, (w, corr)
    zero = w_true == 0
    assert np.abs(w[zero]).max() < 0.1 * np.abs(w[~zero]).max(), w
    assert np.sign(w[~zero]).tolist() == [1.0, -1.0]
    sigma, alpha = float(res.model.sigma.detach()), float(res.model.centre_weight.detach())
    assert 0.7 < sigma < 3.0, sigma  # truth 1.5
    assert 0.6 < alpha < 1.4, alpha  # truth 1.0
    # the fitted model beats the centre bias alone on the validation images
    features, fixations, centre, _ = synthetic
    val = sorted(features)[50:]
    cb = log_likelihood(centre.expand(len(val), *GRID),
                        [fixations[i][0] for i in val], [IMAGE] * len(val))
    assert res.best_val_ll > float(cb) + 0.05
    assert res.history["epoch"].iloc[-1] >= res.best_epoch >= 1
    assert res.best_val_ll == pytest.approx(
        res.history.set_index("epoch").loc[res.best_epoch, "val_ll"])


# -- (4) loss against a loop -----------------------------------------------------------------------


def test_fixation_cells_hand_computed():
    # 4 x 6 image on a 2 x 3 grid: every cell is 2 x 2 pixels
    fc = fixation_cells([[3.4, 0.6], [0.0, 3.0], [5.0, 2.49]], (4, 6), (2, 3))
    assert fc.flat.tolist() == [1, 3, 5]  # (row 1, col 3) → cell (0, 1); (3, 0) → (1, 0); …
    np.testing.assert_allclose(fc.log_pixels, math.log(4))
    # 5 rows on 2 cells: pixel centres 0.5…4.5 scaled by 2/5 → 0.2, 0.6, 1.0, 1.4, 1.8:
    # rows 0-1 in cell 0 (2 pixels), rows 2-4 in cell 1 (3 pixels); half-to-even: y 1.5 → row 2
    fc = fixation_cells([[0, 1.0], [0, 1.5], [0, 4.0]], (5, 1), (2, 1))
    assert fc.flat.tolist() == [0, 1, 1]
    np.testing.assert_allclose(fc.log_pixels, np.log([2, 3, 3]))


def test_loss_equals_loop_over_fixations():
    rng = np.random.default_rng(7)
    grid = (5, 7)
    sizes = [(23, 31), (40, 21)]
    ld = torch.tensor(rng.standard_normal((2, *grid)))
    ld = ld - torch.logsumexp(ld.flatten(1), 1).view(-1, 1, 1)
    fix = [np.column_stack([rng.uniform(-0.4, W - 0.6, n), rng.uniform(-0.4, H - 0.6, n)])
           for (H, W), n in zip(sizes, (9, 4), strict=True)]
    weights = torch.tensor([0.5, -2.0, 0.0])
    got = log_likelihood_loss(ld, fix, sizes, weights=weights, l1=0.1)
    vals = []
    for b, ((H, W), pts) in enumerate(zip(sizes, fix, strict=True)):
        for x, y in pts:
            row, col = int(np.rint(y)), int(np.rint(x))
            # cell = the grid cell whose interval contains the pixel centre; its pixel count by
            # enumerating every pixel of the image
            cr, cc = int((row + 0.5) * grid[0] / H), int((col + 0.5) * grid[1] / W)
            n = sum(1 for i in range(H) for j in range(W)
                    if int((i + 0.5) * grid[0] / H) == cr and int((j + 0.5) * grid[1] / W) == cc)
            vals.append(float(ld[b, cr, cc]) - math.log(n))
    ref = -np.mean(vals) + 0.1 * 2.5
    assert float(got) == pytest.approx(ref, rel=1e-12)


# -- (5) determinism -------------------------------------------------------------------------------


def test_same_seed_same_weights(synthetic):
    a, b, c = (_train(synthetic, seed=s, epochs=3) for s in (5, 5, 6))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    cols = [k for k in a.history.columns if k != "seconds"]
    assert a.history[cols].equals(b.history[cols])
    assert not torch.equal(a.model.weights, c.model.weights)


# -- normaliser ------------------------------------------------------------------------------------


def test_normaliser_pools_images_and_positions():
    rng = np.random.default_rng(2)
    feats = [rng.standard_normal((3, 4, 5)) * [[[1.0]], [[5.0]], [[0.0]]] + 100.0
             for _ in range(4)]
    norm = FeatureNormaliser().fit(torch.tensor(f) for f in feats)
    pooled = np.stack(feats).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(norm.std[:2].numpy(), pooled[:2].std(axis=1), rtol=1e-10)
    assert norm.constant_channels == [2]  # constant 100 → scale 0, not 1/0
    out = norm(torch.tensor(feats[0]))
    np.testing.assert_allclose(out[2].numpy(), 0.0)
    np.testing.assert_allclose(out[0].numpy(), feats[0][0] / pooled[0].std(), rtol=1e-10)


# -- (6) bad input ---------------------------------------------------------------------------------


def test_fixation_outside_image_is_an_error(synthetic):
    features, fixations, centre, _ = synthetic
    ids = sorted(features)[:4]
    bad = dict(fixations)
    pts = fixations[ids[1]][0].copy()
    pts[0] = [IMAGE[1] + 3.0, 10.0]
    bad[ids[1]] = (pts, IMAGE)
    with pytest.raises(DataError, match=rf"{ids[1]}.*outside the 240x320 image"):
        train_deepgaze(features, centre, ids[:3], ids[3:], bad, epochs=1)
    pts[0] = [np.nan, 10.0]
    with pytest.raises(DataError, match=rf"{ids[1]}.*non-finite"):
        train_deepgaze(features, centre, ids[:3], ids[3:], bad, epochs=1)
    with pytest.raises(DataError, match="outside"):
        log_likelihood(centre[None], [[[0.0, 240.0]]], [IMAGE])


def test_nan_features_are_an_error(synthetic):
    features, fixations, centre, _ = synthetic
    ids = sorted(features)[:4]
    bad = dict(features)
    bad[ids[3]] = features[ids[3]].clone()
    bad[ids[3]][2, 5, 5] = float("nan")
    with pytest.raises(DataError, match=rf"{ids[3]}.*non-finite"):  # a validation image
        train_deepgaze(bad, centre, ids[:3], ids[3:], fixations, epochs=1)
    model = DeepGazeI(5, centre)
    with pytest.raises(DataError, match="non-finite"):
        model(bad[ids[3]])


def test_other_bad_inputs(synthetic):
    features, fixations, centre, _ = synthetic
    ids = sorted(features)[:4]
    with pytest.raises(DataError, match="overlap"):
        train_deepgaze(features, centre, ids[:3], ids[2:], fixations, epochs=1)
    with pytest.raises(DataError, match=r"features must be \(2, C, 12, 16\)"):
        train_deepgaze(features, centre[::2, ::2], ids[:2], ids[2:], fixations, epochs=1,
                       batch_size=2)
    empty = dict(fixations)
    empty[ids[0]] = (np.zeros((0, 2)), IMAGE)
    with pytest.raises(DataError, match=rf"{ids[0]}.*no fixations"):
        train_deepgaze(features, centre, ids[:3], ids[3:], empty, epochs=1)
    with pytest.raises(DataError, match="centre_log_density"):
        DeepGazeI(5, torch.log(torch.zeros(3, 4)))
