"""Saliency metrics: hand-computed cases, randomised comparison with straightforward reference
implementations (loops written after the benchmark's MATLAB code), edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dissect.errors import DataError
from dissect.metrics import (
    EPS,
    auc_borji,
    auc_judd,
    cc,
    fixation_pixels,
    information_gain,
    kld,
    nmm,
    nss,
    sauc,
    sim,
)

RNG = np.random.default_rng(1234)


def random_case(rng: np.random.Generator, h: int = 13, w: int = 17, n: int = 9):
    smap = rng.random((h, w))
    pts = np.c_[rng.integers(0, w, n), rng.integers(0, h, n)].astype(float)
    return smap, pts


# ------------------------------------------------------------------ fixation handling
def test_points_rounding_half_to_even_and_borders():
    rows, cols = fixation_pixels(np.array([[0.5, 1.5], [2.4, 0.0], [4.0, 2.0]]), (3, 5))
    # rint: 0.5 -> 0, 1.5 -> 2, 2.4 -> 2
    assert rows.tolist() == [2, 0, 2]
    assert cols.tolist() == [0, 2, 4]


@pytest.mark.parametrize(
    "pts", [[[5.0, 0.0]], [[0.0, 3.0]], [[-0.6, 0.0]], [[4.6, 1.0]], [[0.0, -1.0]]]
)
def test_points_out_of_bounds(pts):
    with pytest.raises(DataError, match="fixations.*outside"):
        nss(np.arange(15.0).reshape(3, 5), np.array(pts))


def test_points_slightly_outside_round_inside():
    smap = np.arange(15.0).reshape(3, 5)
    # -0.4 rounds to 0 and 4.4 to 4: inside
    assert nss(smap, [[-0.4, 2.4]]) == pytest.approx(nss(smap, [[0, 2]]))
    assert nss(smap, [[4.4, 0]]) == pytest.approx(nss(smap, [[4, 0]]))


def test_nan_inputs_name_the_argument():
    smap = np.ones((4, 4))
    smap[1, 2] = np.nan
    with pytest.raises(DataError, match="saliency_map"):
        nss(smap, [[0, 0]])
    with pytest.raises(DataError, match="fixations"):
        nss(np.random.rand(4, 4), [[np.nan, 0]])
    with pytest.raises(DataError, match="^b: "):
        cc(np.random.rand(4, 4), smap)
    with pytest.raises(DataError, match="^prediction: "):
        kld(smap, np.random.rand(4, 4))
    with pytest.raises(DataError, match="^reference: "):
        kld(np.random.rand(4, 4), smap)
    with pytest.raises(DataError, match="baseline_density"):
        information_gain(np.random.rand(4, 4), smap, [[0, 0]])
    with pytest.raises(DataError, match="nonfixations"):
        sauc(np.random.rand(4, 4), [[0, 0]], [[np.nan, 1]])


def test_shape_mismatches():
    with pytest.raises(DataError, match="shape"):
        cc(np.random.rand(4, 4), np.random.rand(4, 5))
    with pytest.raises(DataError, match="shape"):
        sim(np.random.rand(4, 4), np.random.rand(5, 4))
    with pytest.raises(DataError, match="shape"):
        kld(np.random.rand(4, 4), np.random.rand(3, 4))
    with pytest.raises(DataError, match="fixations"):
        nss(np.random.rand(4, 4), np.zeros((5, 5), dtype=bool))
    with pytest.raises(DataError, match="mask"):
        nmm(np.random.rand(4, 4), np.ones((4, 3), dtype=bool))
    with pytest.raises(DataError, match="saliency_map"):
        nss(np.random.rand(4), [[0, 0]])


def test_binary_map_must_be_binary():
    f = np.zeros((4, 4))
    f[1, 1] = 2
    with pytest.raises(DataError, match="binary"):
        nss(np.random.rand(4, 4), f)


def test_no_fixation():
    with pytest.raises(DataError, match="no fixation"):
        nss(np.random.rand(4, 4), np.zeros((4, 4), dtype=bool))
    with pytest.raises(DataError, match="no fixation"):
        nss(np.random.rand(4, 4), np.zeros((0, 2)))


# ------------------------------------------------------------------ NSS
def test_nss_hand_computed():
    smap = np.array([[0.0, 1.0], [2.0, 3.0]])
    sd = math.sqrt(1.25)  # population std of 0,1,2,3
    assert nss(smap, [[1, 1]]) == pytest.approx(1.5 / sd)
    assert nss(smap, [[0, 0], [1, 1]]) == pytest.approx(0.0)
    # duplicates count twice as points ...
    assert nss(smap, [[0, 0], [1, 1], [1, 1]]) == pytest.approx((-1.5 + 3.0) / 3 / sd)
    # ... but a binary map counts each fixated pixel once
    fmap = np.array([[1, 0], [0, 1]])
    assert nss(smap, fmap) == pytest.approx(0.0)
    assert nss(smap, fmap.astype(bool)) == pytest.approx(0.0)


def test_nss_random_vs_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        smap, pts = random_case(rng, rng.integers(2, 30), rng.integers(3, 30), rng.integers(1, 20))
        z = (smap - smap.mean()) / smap.std(ddof=0)
        ref = np.mean([z[int(y), int(x)] for x, y in pts])
        assert nss(smap, pts) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e6])
def test_constant_maps_nan(value):
    smap = np.full((7, 9), value)
    assert math.isnan(nss(smap, [[1, 1]]))
    assert math.isnan(cc(smap, np.random.rand(7, 9)))
    assert math.isnan(sim(smap, np.random.rand(7, 9)))
    assert math.isnan(nmm(smap, np.eye(7, 9, dtype=bool)))


# ------------------------------------------------------------------ NMM
def test_nmm_is_nss_over_mask():
    rng = np.random.default_rng(3)
    smap = rng.random((12, 10))
    mask = rng.random((12, 10)) < 0.2
    z = (smap - smap.mean()) / smap.std()
    assert nmm(smap, mask) == pytest.approx(z[mask].mean(), abs=1e-12)
    assert nmm(smap, mask) == pytest.approx(nss(smap, mask), abs=1e-12)
    assert nmm(smap, mask.astype(np.uint8)) == pytest.approx(z[mask].mean(), abs=1e-12)


def test_nmm_hand_and_empty():
    smap = np.array([[0.0, 1.0], [2.0, 3.0]])
    mask = np.array([[False, False], [True, True]])
    assert nmm(smap, mask) == pytest.approx(1.0 / math.sqrt(1.25))
    with pytest.raises(DataError, match="mask.*empty"):
        nmm(smap, np.zeros((2, 2), dtype=bool))


# ------------------------------------------------------------------ CC / SIM / KLD
def test_cc_vs_corrcoef():
    rng = np.random.default_rng(4)
    for _ in range(10):
        a, b = rng.random((9, 11)), rng.random((9, 11))
        b = b + 0.5 * a
        assert cc(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert cc(a, 3 * a + 1) == pytest.approx(1.0)
    assert cc(a, -a) == pytest.approx(-1.0)


def sim_reference(a, b):
    out = 0.0
    pa = (a - a.min()) / (a.max() - a.min())
    pa = pa / pa.sum()
    pb = (b - b.min()) / (b.max() - b.min())
    pb = pb / pb.sum()
    for x, y in zip(pa.ravel(), pb.ravel(), strict=True):
        out += min(x, y)
    return out


def test_sim_hand_and_reference():
    a = np.array([[0.0, 1.0], [1.0, 2.0]])  # -> [0, .5, .5, 1] / 2
    b = np.array([[2.0, 1.0], [1.0, 0.0]])  # -> [1, .5, .5, 0] / 2
    assert sim(a, b) == pytest.approx((0 + 0.25 + 0.25 + 0) / 1.0)
    assert sim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    for _ in range(10):
        a, b = rng.random((8, 6)), rng.normal(size=(8, 6))
        assert sim(a, b) == pytest.approx(sim_reference(a, b), abs=1e-12)


def kld_reference(saliency_map, fixation_map):
    """Transcription of the MIT benchmark's ``KLdiv(saliencyMap, fixationMap)``: the
    prediction first, KL(fixation ‖ saliency)."""
    q = saliency_map / saliency_map.sum()
    p = fixation_map / fixation_map.sum()
    eps = 2.220446049250313e-16
    pairs = zip(p.ravel(), q.ravel(), strict=True)
    return sum(pi * math.log(eps + pi / (qi + eps)) for pi, qi in pairs)


def test_kld_reference_and_properties():
    assert EPS == 2.220446049250313e-16
    rng = np.random.default_rng(6)
    for _ in range(10):
        p, q = rng.random((7, 9)), rng.random((7, 9))
        p[0, 0] = 0.0  # zeros are fine
        assert kld(p, q) == pytest.approx(kld_reference(p, q), rel=1e-12)
    assert kld(p, 5 * p) == pytest.approx(0.0, abs=1e-12)
    # hand case: reference [1, 0], prediction [.5, .5]: KL(ref ‖ pred) = ln 2; the other order
    # would be KL([.5, .5] ‖ [1, 0]) ≈ 0.5·ln(0.5/eps): the argument order matters
    flat, peaked = np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])
    assert kld(flat, peaked) == pytest.approx(math.log(2))
    assert kld(peaked, flat) > 10
    with pytest.raises(DataError, match="prediction: .*negative"):
        kld(q - 0.5, p)
    with pytest.raises(DataError, match="reference: .*sums to 0"):
        kld(q, np.zeros((7, 9)))


# ------------------------------------------------------------------ information gain
def test_information_gain():
    rng = np.random.default_rng(7)
    for _ in range(10):
        p, b = rng.random((6, 8)), rng.random((6, 8))
        smap_pts = np.c_[rng.integers(0, 8, 5), rng.integers(0, 6, 5)]
        pn, bn = p / p.sum(), b / b.sum()
        ref = np.mean([math.log2(pn[y, x] + EPS) - math.log2(bn[y, x] + EPS) for x, y in smap_pts])
        assert information_gain(p, b, smap_pts) == pytest.approx(ref, abs=1e-12)
        assert information_gain(p, 3 * p, smap_pts) == pytest.approx(0.0, abs=1e-12)
    # hand case: density twice the uniform baseline at the fixation -> 1 bit
    dens = np.array([[2.0, 1.0, 1.0, 0.0]])
    assert information_gain(dens, np.ones((1, 4)), [[0, 0]]) == pytest.approx(1.0)


# ------------------------------------------------------------------ AUCs
def auc_judd_reference(smap, pts):
    """Loop transcription of the benchmark's AUC_Judd.m (no jitter, distinct pixels)."""
    s = (smap - smap.min()) / (smap.max() - smap.min())
    fix = np.array([s[int(y), int(x)] for x, y in pts])
    n_fix, n_pix = fix.size, s.size
    thresholds = sorted(fix, reverse=True)
    tp, fp = [0.0], [0.0]
    for i, t in enumerate(thresholds, start=1):
        above = int((s >= t).sum())
        tp.append(i / n_fix)
        fp.append((above - i) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return float(np.trapezoid(tp, fp))


def test_auc_judd_hand_cases():
    smap = np.array([[0.1, 0.4, 0.35, 0.8]])
    assert auc_judd(smap, [[3, 0], [1, 0]]) == pytest.approx(1.0)
    # positives .8, .35; negatives .1, .4: ROC (0,0) (0,.5) (.5,1) (1,1) -> .875
    assert auc_judd(smap, [[3, 0], [2, 0]]) == pytest.approx(0.875)
    assert auc_judd(np.full((3, 3), 2.0), [[1, 1]]) == pytest.approx(0.5)
    assert math.isnan(auc_judd(smap, np.ones((1, 4), dtype=bool)))


def test_auc_judd_random_vs_reference():
    rng = np.random.default_rng(8)
    for _ in range(15):
        h, w = rng.integers(3, 20, 2)
        smap = rng.random((h, w))  # continuous: no ties
        flat = rng.choice(h * w, size=rng.integers(1, min(15, h * w - 1)), replace=False)
        pts = np.c_[flat % w, flat // w]
        assert auc_judd(smap, pts) == pytest.approx(auc_judd_reference(smap, pts), abs=1e-12)


def auc_steps_reference(pos, neg):
    thresholds = [k / 10 for k in range(10, -1, -1)]
    tp = [0.0] + [float(np.mean(pos >= t)) for t in thresholds] + [1.0]
    fp = [0.0] + [float(np.mean(neg >= t)) for t in thresholds] + [1.0]
    return float(np.trapezoid(tp, fp))


def test_auc_borji_vs_reference():
    rng = np.random.default_rng(9)
    smap, pts = random_case(rng, 15, 12, 10)
    s = (smap - smap.min()) / (smap.max() - smap.min())
    pos = np.array([s[int(y), int(x)] for x, y in pts])
    idx = np.random.default_rng(42).integers(0, s.size, size=(7, pos.size))
    ref = np.mean([auc_steps_reference(pos, s.ravel()[row]) for row in idx])
    assert auc_borji(smap, pts, n_splits=7, rng=42) == pytest.approx(ref, abs=1e-12)
    # reproducible by default, sensitive to the seed
    assert auc_borji(smap, pts) == auc_borji(smap, pts)
    assert auc_borji(smap, pts, rng=1) != auc_borji(smap, pts, rng=2)
    assert auc_borji(np.ones((5, 5)), [[1, 1]]) == pytest.approx(0.5)


def test_auc_borji_good_map_scores_high():
    yy, xx = np.mgrid[:40, :50]
    smap = np.exp(-((yy - 20) ** 2 + (xx - 25) ** 2) / 50.0)
    pts = np.array([[25, 20], [24, 21], [26, 19]])
    assert auc_borji(smap, pts) > 0.9
    assert auc_borji(-smap, pts) < 0.1


def test_sauc_exact_vs_sklearn():
    rng = np.random.default_rng(10)
    for _ in range(10):
        smap = np.round(rng.random((10, 14)), 1)  # many ties
        pos_pts = np.c_[rng.integers(0, 14, 8), rng.integers(0, 10, 8)]
        neg_pts = np.c_[rng.integers(0, 14, 30), rng.integers(0, 10, 30)]
        pos = smap[pos_pts[:, 1], pos_pts[:, 0]]
        neg = smap[neg_pts[:, 1], neg_pts[:, 0]]
        labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        ref = roc_auc_score(labels, np.r_[pos, neg])
        assert sauc(smap, pos_pts, neg_pts) == pytest.approx(ref, abs=1e-12)
    # a binary non-fixation map: each pixel once
    nonfix = np.zeros((10, 14), dtype=bool)
    nonfix[neg_pts[:, 1], neg_pts[:, 0]] = True
    neg_once = smap[nonfix]
    ref = roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg_once.size)], np.r_[pos, neg_once])
    assert sauc(smap, pos_pts, nonfix) == pytest.approx(ref, abs=1e-12)


def test_sauc_splits_vs_reference():
    rng = np.random.default_rng(11)
    smap, pts = random_case(rng, 10, 12, 12)
    nonfix = np.c_[rng.integers(0, 12, 5), rng.integers(0, 10, 5)]  # fewer than fixations
    s = (smap - smap.min()) / (smap.max() - smap.min())
    pos = s[pts[:, 1].astype(int), pts[:, 0].astype(int)]
    neg = s[nonfix[:, 1], nonfix[:, 0]]  # all of them in every split (order irrelevant)
    ref = auc_steps_reference(pos, neg)
    assert sauc(smap, pts, nonfix, n_splits=5, rng=3) == pytest.approx(ref, abs=1e-12)


def test_nmm_takes_a_stack_of_masks():
    from dissect.metrics import nmm

    rng = np.random.default_rng(3)
    s = rng.random((30, 40))
    masks = rng.random((3, 30, 40)) > 0.7
    np.testing.assert_array_equal(nmm(s, masks), [nmm(s, m) for m in masks])
    assert np.isnan(nmm(np.ones((30, 40)), masks)).all()
