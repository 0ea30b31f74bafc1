"""Classical saliency models on simple stimuli: the odd item is the maximum; contracts; errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from dissect.errors import DataError
from dissect.models.classical import (
    BMS,
    CLASSICAL_MODELS,
    GBVS,
    IttiKoch,
    load_classical,
    stationary_distribution,
)

H, W = 240, 320
COLOUR_MODELS = ("itti", "gbvs", "bms")  # the OpenCV models work on grey levels only


def _grid_centres(rows: int = 3, cols: int = 4) -> list[tuple[int, int]]:
    return [(int((r + 0.5) * H / rows), int((c + 0.5) * W / cols))
            for r in range(rows) for c in range(cols)]


def _disks(odd: int, colour_odd, colour_rest, bg=(128, 128, 128), radius: int = 14):
    img = np.empty((H, W, 3), np.uint8)
    img[...] = bg
    yy, xx = np.mgrid[0:H, 0:W]
    mask = np.zeros((H, W), bool)
    for k, (cy, cx) in enumerate(_grid_centres()):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[disk] = colour_odd if k == odd else colour_rest
        if k == odd:
            mask = disk
    return img, mask


def _bright_square():
    img = np.full((H, W, 3), 128, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[150:180, 60:90] = True
    img[mask] = 255
    return img, mask


def _argmax_in(sal: np.ndarray, mask: np.ndarray, tol: int) -> bool:
    near = ndimage.binary_dilation(mask, iterations=tol) if tol else mask
    iy, ix = np.unravel_index(np.argmax(sal), sal.shape)
    return bool(near[iy, ix])


@pytest.fixture(scope="module", params=list(CLASSICAL_MODELS))
def model(request):
    return load_classical(request.param)


def test_registry():
    assert set(CLASSICAL_MODELS) == {"itti", "gbvs", "bms", "spectral_residual", "fine_grained"}
    for name, cls in CLASSICAL_MODELS.items():
        m = load_classical(name)
        assert isinstance(m, cls) and cls.name == name
        assert isinstance(dataclasses.asdict(m), dict)  # parameters are provenance
    assert load_classical("gbvs", map_size=16).map_size == 16
    with pytest.raises(DataError, match="unknown classical saliency model"):
        load_classical("deepgaze")
    with pytest.raises(DataError, match="bad parameters"):
        load_classical("itti", nonsense=1)


def test_bright_square_is_the_maximum(model):
    img, mask = _bright_square()
    sal = model.saliency(img)
    assert sal.shape == (H, W) and sal.dtype == np.float64
    assert np.isfinite(sal).all() and sal.std() > 0 and sal.min() >= 0 and sal.max() == 1
    z = (sal - sal.mean()) / sal.std()
    assert z[mask].mean() > 2.0, type(model).__name__
    if model.name == "spectral_residual":
        # OpenCV's spectral residual works on a 64x64 image: a lone square on a flat field gives
        # edge responses plus ringing whose peak lands ~30 px outside the square (measured), so
        # only the mean contrast above is required of it; it finds pop-out among distractors
        # (test_bright_disk_among_dim_disks)
        return
    assert _argmax_in(sal, mask, tol=6), type(model).__name__


@pytest.mark.parametrize("name", COLOUR_MODELS)
@pytest.mark.parametrize("odd", [1, 6, 10])
def test_red_disk_among_green_is_the_maximum(name, odd):
    img, mask = _disks(odd, (220, 30, 30), (30, 200, 30))
    sal = load_classical(name).saliency(img)
    assert _argmax_in(sal, mask, tol=6), (name, odd)
    # and the odd item's mean saliency beats every other disk's
    means = []
    for k, (cy, cx) in enumerate(_grid_centres()):
        yy, xx = np.mgrid[0:H, 0:W]
        means.append((sal[(yy - cy) ** 2 + (xx - cx) ** 2 <= 14**2].mean(), k))
    assert max(means)[1] == odd


@pytest.mark.parametrize("name", ["itti", "gbvs", "spectral_residual"])
def test_bright_disk_among_dim_disks(name):
    img, mask = _disks(4, (255, 255, 255), (150, 150, 150), bg=(0, 0, 0))
    sal = load_classical(name).saliency(img)
    assert _argmax_in(sal, mask, tol=6)


def test_oddity_raises_the_target_above_identical_items():
    yy, xx = np.mgrid[0:H, 0:W]
    disks = [(yy - cy) ** 2 + (xx - cx) ** 2 <= 14**2 for cy, cx in _grid_centres()]
    for name in COLOUR_MODELS:
        m = load_classical(name)
        ratios = []  # odd disk's mean saliency / the largest mean of the other disks
        for odd_colour in ((30, 200, 30), (220, 30, 30)):
            img, _ = _disks(5, odd_colour, (30, 200, 30))
            sal = m.saliency(img)
            means = np.array([sal[d].mean() for d in disks])
            ratios.append(means[5] / np.delete(means, 5).max())
        assert ratios[1] > 1.0 and ratios[1] > ratios[0] + 0.1, (name, ratios)


def test_output_size_matches_odd_input_sizes(model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8)
    sal = model.saliency(img)
    assert sal.shape == (97, 131) and np.isfinite(sal).all()


def test_blank_image_gives_a_constant_finite_map(model):
    sal = model.saliency(np.full((64, 64, 3), 90, np.uint8))
    assert sal.shape == (64, 64) and np.isfinite(sal).all()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((32, 32), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 4), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.full((32, 32, 3), np.nan), "NaN"),
        (np.zeros((8, 32, 3), np.uint8), "smaller than"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_bad_input(model, bad, match):
    with pytest.raises(DataError, match=match) as err:
        model.saliency(bad, source="stim_007.png")
    assert "stim_007.png" in str(err.value)


def test_gbvs_closed_form_equals_power_iteration():
    rng = np.random.default_rng(1)
    img, _ = _disks(3, (220, 30, 30), (30, 200, 30))
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    a = GBVS(map_size=12).saliency(img)
    b = GBVS(map_size=12, solver="power").saliency(img)
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_stationary_distribution():
    rng = np.random.default_rng(2)
    p = rng.random((6, 6))
    p /= p.sum(axis=1, keepdims=True)
    pi = stationary_distribution(p)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-12)
    assert abs(pi.sum() - 1) < 1e-12


def test_itti_normalisation_promotes_a_single_peak():
    single = np.zeros((40, 40))
    single[20, 20] = 1.0
    many = np.zeros((40, 40))
    many[5::10, 5::10] = 1.0
    n = IttiKoch().normalise
    assert n(single).max() == pytest.approx(1.0)
    assert n(many).max() == pytest.approx(0.0)
    half = many.copy()
    half[25, 25] = 2.0  # one peak twice the others: m̄ = 0.5 → factor 0.25
    assert n(half).max() == pytest.approx(0.25)


def test_bms_surroundedness():
    b = np.zeros((20, 20), bool)
    b[5:10, 5:10] = True  # surrounded
    b[0:3, 12:18] = True  # touches the border
    s = BMS.surrounded(b)
    assert s[5:10, 5:10].all() and not s[0:3, 12:18].any() and s.sum() == 25
