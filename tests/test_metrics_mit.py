"""``conventions="mit"``: every map metric against a loop-style transcription of the MIT
saliency benchmark's MATLAB file (``cvzoya/saliency``, ``code_forMetrics``), written here line by
line from the ``.m`` code and not from the package: random maps of several sizes and seeds, tied
(quantised) maps, constant maps, saliency maps of another size than the fixation map (resized),
duplicate fixation points.

Where MATLAB's own behaviour is not reproducible or not defined, the transcriptions below make
the same documented choices as the package (see ``docs/metrics.md``, "Benchmark conventions"):

* ``rand`` / ``randi`` / ``randperm`` are numpy ``default_rng(seed)`` draws in the same order
  and shapes as the package's (``random(shape)``, ``integers(0, Npix, (Nsplits, Nfix))``, one
  ``permutation(numel(ind))`` per split);
* ``imresize`` is :func:`imresize_ref` (MATLAB's bicubic kernel, antialiasing, mirrored borders)
  and ``a:d:b`` is :func:`colon_ref` (MathWorks' symmetric colon algorithm);
* a min–max normalisation that divides 0 by 0 (constant map) returns NaN: MATLAB would carry
  a NaN map through ``max``, the colon and ``>=``, with a result not confirmed;
* points become a binary map at ``(round(y), round(x))`` (Python ``round``: half to even).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dissect.errors import DataError
from dissect.metrics import (
    CONVENTIONS,
    auc_borji,
    auc_judd,
    cc,
    check_conventions,
    information_gain,
    kld,
    matlab_colon,
    matlab_imresize,
    nss,
    sauc,
    sim,
)

MATLAB_EPS = 2.220446049250313e-16  # MATLAB eps = 2^-52
SEEDS = [0, 1, 2, 3]
SHAPES = [(7, 9), (12, 15), (20, 11)]


# ==================================================================== MATLAB primitives
def keys_cubic(x: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel; MATLAB's imresize uses a = -0.5."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x <= 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def mirror(p: int, n: int) -> int:
    """1-based index p folded into 1..n by reflection with the edge repeated (…, 2, 1 | 1, 2, …)."""
    while p < 1 or p > n:
        p = 1 - p if p < 1 else 2 * n + 1 - p
    return p


def resize_weights_ref(n_out: int, n_in: int) -> np.ndarray:
    scale = n_out / n_in
    antialias = scale < 1
    half = 2.0 / scale if antialias else 2.0
    w = np.zeros((n_out, n_in))
    for i in range(1, n_out + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)  # output pixel i in input coordinates (1-based)
        taps = {}
        for p in range(math.floor(u - half) - 1, math.ceil(u + half) + 2):
            taps[p] = scale * keys_cubic(scale * (u - p)) if antialias else keys_cubic(u - p)
        total = sum(taps.values())
        for p, v in taps.items():
            w[i - 1, mirror(p, n_in) - 1] += v / total
    return w


def imresize_ref(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    out = np.zeros((a.shape[0], shape[1]))
    wx = resize_weights_ref(shape[1], a.shape[1])
    for r in range(a.shape[0]):
        for c in range(shape[1]):
            out[r, c] = sum(wx[c, j] * a[r, j] for j in range(a.shape[1]))
    wy = resize_weights_ref(shape[0], a.shape[0])
    res = np.zeros(shape)
    for r in range(shape[0]):
        for c in range(shape[1]):
            res[r, c] = sum(wy[r, j] * out[j, c] for j in range(a.shape[0]))
    return res


def colon_ref(a: float, d: float, b: float) -> list[float]:
    """MATLAB a:d:b (d > 0): count the intervals with a 2·eps tolerance, then build the first
    half forwards from a and the second half backwards from the (snapped) end point."""
    if not b >= a:
        return []
    tol = 2.0 * MATLAB_EPS * max(abs(a), abs(b))
    n = math.floor((b - a) / d)
    if (a + (n + 1) * d) - b < tol:
        n = n + 1
    last = a + n * d
    if last - b > -tol:
        last = b
    v = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        v[k] = a + k * d
        v[n - k] = last - k * d
    if n % 2 == 0:
        v[n // 2] = (a + last) / 2
    return v


def trapz(x, y) -> float:
    return sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1))


def binary_map(points, shape) -> np.ndarray:
    f = np.zeros(shape)
    for x, y in points:
        f[round(y), round(x)] = 1
    return f


def col(a: np.ndarray) -> np.ndarray:
    """MATLAB ``a(:)``: column-major vector."""
    return np.asarray(a).flatten(order="F")


def maybe_resize(sal, shape):
    sal = np.asarray(sal, dtype=float)
    return sal if sal.shape == tuple(shape) else imresize_ref(sal, shape)


def minmax(m):
    lo, hi = np.min(m), np.max(m)
    if hi == lo:
        return None
    return (m - lo) / (hi - lo)


# ==================================================================== metric transcriptions
def nss_ref(sal, fixation_map):
    m = imresize_ref(sal, fixation_map.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (m - np.mean(m)) / np.std(m, ddof=1)
    return float(np.mean(m[fixation_map.astype(bool)]))


def cc_ref(sal1, sal2):
    map1 = imresize_ref(sal1, sal2.shape)
    map2 = np.asarray(sal2, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        map1 = (map1 - map1.mean()) / np.std(map1, ddof=1)
        map2 = (map2 - map2.mean()) / np.std(map2, ddof=1)
    if np.isnan(map1).any() or np.isnan(map2).any():
        return float("nan")
    return float(np.corrcoef(col(map2), col(map1))[0, 1])  # corr2


def sim_ref(sal1, sal2):
    map1 = imresize_ref(sal1, sal2.shape)
    map2 = np.asarray(sal2, dtype=float)
    out = []
    for m in (map1, map2):
        if np.any(m):  # a zero map stays a zero map
            with np.errstate(invalid="ignore", divide="ignore"):
                m = (m - m.min()) / (m.max() - m.min())
            m = m / np.sum(m)
        out.append(m)
    if np.all(np.isnan(out[0])) or np.all(np.isnan(out[1])):
        return float("nan")
    return float(np.sum(np.minimum(out[0], out[1])))


def kld_ref(sal, fix):
    # negative values from the bicubic overshoot are clipped (the package's documented choice)
    map1 = np.maximum(imresize_ref(sal, fix.shape), 0.0)
    map2 = np.asarray(fix, dtype=float)
    if np.any(map1):
        map1 = map1 / np.sum(map1)
    if np.any(map2):
        map2 = map2 / np.sum(map2)
    total = 0.0
    for p, q in zip(col(map1), col(map2), strict=True):
        total += q * math.log(MATLAB_EPS + q / (p + MATLAB_EPS))
    return total


def info_gain_ref(sal, fixation_map, baseline):
    map1 = imresize_ref(sal, fixation_map.shape)
    mapb = imresize_ref(baseline, fixation_map.shape)
    map1, mapb = minmax(col(map1)), minmax(col(mapb))
    if map1 is None or mapb is None:
        return float("nan")
    map1 = map1 / np.sum(map1)
    mapb = mapb / np.sum(mapb)
    locs = col(fixation_map) > 0
    gains = [math.log2(MATLAB_EPS + p) - math.log2(MATLAB_EPS + b)
             for p, b in zip(map1[locs], mapb[locs], strict=True)]
    return sum(gains) / len(gains)


def auc_judd_ref(sal, fixation_map, seed):
    sal = maybe_resize(sal, fixation_map.shape)
    gen = np.random.default_rng(seed)
    sal = sal + gen.random(sal.shape) / 10000000  # jitter = 1
    sal = minmax(sal)
    if sal is None:
        return float("nan")
    S, F = col(sal), col(fixation_map)
    Sth = S[F > 0]
    n_fix, n_pix = len(Sth), len(S)
    allthreshes = sorted(Sth, reverse=True)
    tp = [0.0] * (n_fix + 2)
    fp = [0.0] * (n_fix + 2)
    tp[-1] = fp[-1] = 1.0
    for i in range(1, n_fix + 1):
        thresh = allthreshes[i - 1]
        aboveth = int(np.sum(S >= thresh))
        tp[i] = i / n_fix
        fp[i] = (aboveth - i) / (n_pix - n_fix)
    return trapz(fp, tp)


def _split_auc(Sth, curfix, n_neg):
    allthreshes = colon_ref(0.0, 0.1, float(max(np.concatenate([Sth, curfix]))))[::-1]
    tp = [0.0] * (len(allthreshes) + 2)
    fp = [0.0] * (len(allthreshes) + 2)
    tp[-1] = fp[-1] = 1.0
    for i, thresh in enumerate(allthreshes, start=1):
        tp[i] = np.sum(Sth >= thresh) / len(Sth)
        fp[i] = np.sum(curfix >= thresh) / n_neg
    return trapz(fp, tp)


def auc_borji_ref(sal, fixation_map, n_splits, seed):
    sal = minmax(maybe_resize(sal, fixation_map.shape))
    if sal is None:
        return float("nan")
    S, F = col(sal), col(fixation_map)
    Sth = S[F > 0]
    n_fix, n_pix = len(Sth), len(S)
    r = np.random.default_rng(seed).integers(0, n_pix, size=(n_splits, n_fix))  # randi, 0-based
    randfix = S[r]
    aucs = [_split_auc(Sth, randfix[s], n_fix) for s in range(n_splits)]
    return float(np.mean(aucs))


def sauc_ref(sal, fixation_map, other_map, n_splits, seed):
    sal = minmax(maybe_resize(sal, fixation_map.shape))
    if sal is None:
        return float("nan")
    S, F, Oth = col(sal), col(fixation_map), col(other_map)
    Sth = S[F > 0]
    n_fix = len(Sth)
    ind = [i for i in range(len(Oth)) if Oth[i] > 0]
    n_oth = min(n_fix, len(ind))
    gen = np.random.default_rng(seed)
    randfix = np.full((n_oth, n_splits), np.nan)
    for i in range(n_splits):
        randind = [ind[j] for j in gen.permutation(len(ind))]
        randfix[:, i] = S[randind[:n_oth]]
    aucs = [_split_auc(Sth, randfix[:, s], n_oth) for s in range(n_splits)]
    return float(np.mean(aucs))


# ==================================================================== cases
def random_points(rng, shape, n, duplicates=True):
    h, w = shape
    pts = np.c_[rng.integers(0, w, n), rng.integers(0, h, n)].astype(float)
    if duplicates:
        pts = np.vstack([pts, pts[:3]])  # repeated fixations collapse in the binary map
    return pts


def cases():
    """(id, saliency map, fixation map shape, points) over seeds, sizes, ties and resizing."""
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        for shape in SHAPES:
            pts = random_points(rng, shape, 10)
            out.append((f"random-{seed}-{shape}", rng.random(shape), shape, pts))
        shape = SHAPES[seed % len(SHAPES)]
        tied = rng.integers(0, 11, shape) / 10.0  # values on the 0.1 thresholds, many ties
        tied[0, 0], tied[0, 1] = 0.0, 1.0
        out.append((f"ties-{seed}", tied, shape, random_points(rng, shape, 12)))
        out.append(
            (f"ties5-{seed}", rng.integers(0, 5, shape) * 1.0, shape, random_points(rng, shape, 9))
        )
        small = rng.random((5, 6)) + np.linspace(0, 1, 6)
        out.append((f"upsize-{seed}", small, (11, 14), random_points(rng, (11, 14), 8)))
        big = rng.random((23, 29))
        out.append((f"downsize-{seed}", big, (9, 12), random_points(rng, (9, 12), 8)))
    return out


CASES = cases()
IDS = [c[0] for c in CASES]


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(b))


# ==================================================================== primitives
@pytest.mark.parametrize(("n_out", "n_in"), [(5, 5), (11, 5), (14, 6), (9, 23), (12, 29), (3, 2)])
def test_imresize_matrix_matches_loop_reference(n_out, n_in):
    rng = np.random.default_rng(n_out * 100 + n_in)
    a = rng.random((n_in, n_in + 3))
    got = matlab_imresize(a, (n_out, n_out + 2))
    assert np.allclose(got, imresize_ref(a, (n_out, n_out + 2)), rtol=0, atol=1e-13)


def test_imresize_identity_constant_and_ramp():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7))
    assert np.array_equal(matlab_imresize(a, (6, 7)), a)
    assert np.array_equal(matlab_imresize(np.full((6, 7), 2.5), (13, 4)), np.full((13, 4), 2.5))
    # the cubic kernel reproduces a linear ramp away from the mirrored borders: output pixel i
    # (1-based) of an upsampling by 3 sits at input coordinate u = i/3 + (1 - 1/3)/2
    ramp = np.tile(np.arange(1.0, 11.0), (2, 1))
    up = matlab_imresize(ramp, (2, 30))
    u = np.arange(1, 31) / 3 + (1 - 1 / 3) / 2
    inner = (u > 3) & (u < 8)
    assert np.allclose(up[0, inner], u[inner], atol=1e-12)


def test_matlab_colon_known_values():
    # MATLAB: x = 0:0.1:0.3; y = 0:0.1:0.4; x - y(1:end-1) = [0 0 -0.2776 -0.5551]*1e-16 and
    # x(end) == 0.3
    x, y = matlab_colon(0, 0.1, 0.3), matlab_colon(0, 0.1, 0.4)
    assert x[-1] == 0.3
    assert np.array_equal(x - y[:-1], [0.0, 0.0, -2.7755575615628914e-17, -5.551115123125783e-17])
    for top in [0.0, 0.05, 0.3, 0.45, 0.7, 0.99, 1.0, 1.0 - 1e-16, 0.3 + 1e-17]:
        assert matlab_colon(0, 0.1, top).tolist() == colon_ref(0, 0.1, top)
    assert matlab_colon(0, 0.1, float("nan")).size == 0


# ==================================================================== metrics vs transcriptions
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_nss_mit(case):
    _, smap, shape, pts = case
    fmap = binary_map(pts, shape)
    want = nss_ref(smap, fmap)
    assert close(nss(smap, pts, conventions="mit", size=shape), want)
    assert close(nss(smap, fmap.astype(bool), conventions="mit"), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_auc_judd_mit(case):
    _, smap, shape, pts = case
    fmap = binary_map(pts, shape)
    for seed in (0, 7):
        want = auc_judd_ref(smap, fmap, seed)
        assert close(auc_judd(smap, pts, conventions="mit", size=shape, rng=seed), want)
    assert auc_judd(smap, fmap, conventions="mit") == auc_judd(
        smap, fmap, conventions="mit", rng=np.random.default_rng(0)
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_auc_borji_mit(case):
    _, smap, shape, pts = case
    fmap = binary_map(pts, shape)
    want = auc_borji_ref(smap, fmap, 12, 5)
    assert close(auc_borji(smap, pts, 12, 5, conventions="mit", size=shape), want)
    assert close(auc_borji(smap, fmap, n_splits=12, rng=5, conventions="mit"), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sauc_mit(case):
    _, smap, shape, pts = case
    fmap = binary_map(pts, shape)
    rng = np.random.default_rng(len(pts))
    for n_other in (4, 25):  # fewer and more other-image fixations than fixations
        others = random_points(rng, shape, n_other)
        omap = binary_map(others, shape)
        want = sauc_ref(smap, fmap, omap, 12, 3)
        got = sauc(smap, pts, others, n_splits=12, rng=3, conventions="mit", size=shape)
        assert close(got, want)
        assert close(sauc(smap, fmap, omap, n_splits=12, rng=3, conventions="mit"), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_information_gain_mit(case):
    _, smap, shape, pts = case
    fmap = binary_map(pts, shape)
    rng = np.random.default_rng(3)
    baseline = rng.random((shape[0] + 2, shape[1] - 1)) + 0.5  # another shape: resized too
    want = info_gain_ref(smap, fmap, baseline)
    assert close(information_gain(smap, baseline, pts, conventions="mit", size=shape), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cc_sim_kld_mit(case):
    _, smap, shape, _pts = case
    rng = np.random.default_rng(shape[0])
    other = rng.random(shape) ** 3
    for a, b in [(smap, other), (other if other.shape == smap.shape else smap, smap)]:
        assert close(cc(a, b, conventions="mit"), cc_ref(a, b))
        assert close(sim(a, b, conventions="mit"), sim_ref(a, b))
        assert close(kld(a, b, conventions="mit"), kld_ref(a, b))


def test_default_sized_points_and_duplicates():
    rng = np.random.default_rng(11)
    smap = rng.random((8, 10))
    pts = np.array([[1, 2], [1, 2], [1.4, 2.2], [9, 7], [9, 7], [3, 0]])  # duplicates collapse
    fmap = binary_map(pts, smap.shape)
    assert fmap.sum() == 3
    assert close(nss(smap, pts, conventions="mit"), nss_ref(smap, fmap))
    assert close(auc_judd(smap, pts, conventions="mit", rng=2), auc_judd_ref(smap, fmap, 2))
    assert close(auc_borji(smap, pts, 20, 4, conventions="mit"), auc_borji_ref(smap, fmap, 20, 4))
    assert nss(smap, pts, conventions="mit") == nss(smap, pts[[0, 3, 5]], conventions="mit")
    # with the project's conventions each point counts
    assert nss(smap, pts) != nss(smap, pts[[0, 3, 5]])


def test_default_splits_are_the_benchmark_100():
    rng = np.random.default_rng(21)
    smap = rng.random((9, 8))
    pts, others = random_points(rng, (9, 8), 7), random_points(rng, (9, 8), 15)
    fmap, omap = binary_map(pts, smap.shape), binary_map(others, smap.shape)
    assert close(auc_borji(smap, pts, conventions="mit"), auc_borji_ref(smap, fmap, 100, 0))
    assert close(sauc(smap, pts, others, conventions="mit"), sauc_ref(smap, fmap, omap, 100, 0))


# ==================================================================== constant maps
def test_constant_maps():
    """The benchmark's result where it is defined, NaN where MATLAB divides 0 by 0."""
    rng = np.random.default_rng(4)
    shape = (7, 9)
    const = np.full(shape, 3.0)
    zero = np.zeros(shape)
    good = rng.random(shape)
    pts = random_points(rng, shape, 6)
    fmap = binary_map(pts, shape)
    # NSS.m / CC.m: std 0 -> 0/0 -> NaN
    assert math.isnan(nss(const, pts, conventions="mit")) and math.isnan(nss_ref(const, fmap))
    assert math.isnan(cc(const, good, conventions="mit")) and math.isnan(cc_ref(const, good))
    assert math.isnan(cc(good, const, conventions="mit"))
    # similarity.m: a nonzero constant map -> NaN; an all-zero map stays zero -> 0
    assert math.isnan(sim(const, good, conventions="mit")) and math.isnan(sim_ref(const, good))
    assert sim(zero, good, conventions="mit") == sim_ref(zero, good) == 0.0
    assert sim(good, zero, conventions="mit") == 0.0
    # KLdiv.m: an all-zero map is left unnormalised
    assert close(kld(zero, good, conventions="mit"), kld_ref(zero, good))
    assert kld(good, zero, conventions="mit") == kld_ref(good, zero) == 0.0
    assert close(kld(const, good, conventions="mit"), kld_ref(const, good))
    # AUC_Judd.m: the jitter makes a constant map a random map, ~0.5
    judd = auc_judd(const, pts, conventions="mit", rng=9)
    assert close(judd, auc_judd_ref(const, fmap, 9)) and 0.2 < judd < 0.8
    # AUC_Borji.m / AUC_shuffled.m / InfoGain.m: min-max 0/0 -> NaN
    assert math.isnan(auc_borji(const, pts, conventions="mit"))
    assert math.isnan(auc_borji_ref(const, fmap, 5, 0))
    assert math.isnan(sauc(const, pts, pts[:3], conventions="mit"))
    assert math.isnan(information_gain(const, good, pts, conventions="mit"))
    assert math.isnan(information_gain(good, const, pts, conventions="mit"))
    assert math.isnan(info_gain_ref(const, fmap, good))
    # the project's own conventions differ here
    assert auc_borji(const, pts) == pytest.approx(0.5)
    assert sauc(const, pts, pts[:3]) == pytest.approx(0.5)


# ==================================================================== switch and errors
def test_dissect_equals_default_call():
    rng = np.random.default_rng(8)
    smap, other = rng.random((9, 11)), rng.random((9, 11)) + 0.1
    pts, others = random_points(rng, (9, 11), 6), random_points(rng, (9, 11), 10)
    d = {"conventions": "dissect"}
    assert nss(smap, pts, **d) == nss(smap, pts)
    assert auc_judd(smap, pts, **d) == auc_judd(smap, pts)
    assert auc_borji(smap, pts, **d) == auc_borji(smap, pts)
    assert sauc(smap, pts, others, **d) == sauc(smap, pts, others)
    assert sauc(smap, pts, others, n_splits=5, **d) == sauc(smap, pts, others, n_splits=5)
    assert cc(smap, other, **d) == cc(smap, other)
    assert sim(smap, other, **d) == sim(smap, other)
    assert kld(smap, other, **d) == kld(smap, other)
    assert information_gain(smap, other, pts, **d) == information_gain(smap, other, pts)
    assert nss(smap, pts, size=(9, 11)) == nss(smap, pts)


@pytest.mark.parametrize("bad", ["MIT", "matlab", "", None, 1])
def test_unknown_conventions_raise(bad):
    rng = np.random.default_rng(0)
    smap = rng.random((5, 6))
    pts = [[1, 1], [2, 3]]
    calls = [
        lambda: nss(smap, pts, conventions=bad),
        lambda: auc_judd(smap, pts, conventions=bad),
        lambda: auc_borji(smap, pts, conventions=bad),
        lambda: sauc(smap, pts, pts, conventions=bad),
        lambda: cc(smap, smap, conventions=bad),
        lambda: sim(smap, smap, conventions=bad),
        lambda: kld(smap, smap, conventions=bad),
        lambda: information_gain(smap, smap, pts, conventions=bad),
    ]
    for call in calls:
        with pytest.raises(DataError, match="conventions") as err:
            call()
        assert "'dissect'" in str(err.value) and "'mit'" in str(err.value)
        assert repr(bad) in str(err.value)
    assert CONVENTIONS == ("dissect", "mit")
    assert check_conventions("mit") == "mit"


def test_nss_ratio_is_sample_over_population_std():
    rng = np.random.default_rng(17)
    smap = rng.random((13, 17))
    fmap = np.zeros(smap.shape, dtype=bool)
    fmap[rng.integers(0, 13, 9), rng.integers(0, 17, 9)] = True
    n = smap.size
    ratio = nss(smap, fmap, conventions="mit") / nss(smap, fmap)
    assert ratio == pytest.approx(math.sqrt((n - 1) / n), rel=1e-12)


def test_shape_mismatch_and_size_errors():
    rng = np.random.default_rng(2)
    smap = rng.random((6, 8))
    fmap = np.zeros((12, 16), dtype=bool)
    fmap[3, 4] = fmap[7, 9] = True
    # the project's conventions never resize
    with pytest.raises(DataError, match="fixations"):
        nss(smap, fmap)
    with pytest.raises(DataError, match="b"):
        cc(smap, rng.random((12, 16)))
    with pytest.raises(DataError, match="size"):
        nss(smap, [[1, 1]], size=(12, 16))
    # mit resizes; a binary map must agree with an explicit size
    assert math.isfinite(nss(smap, fmap, conventions="mit"))
    assert math.isfinite(cc(smap, rng.random((12, 16)), conventions="mit"))
    with pytest.raises(DataError, match="fixations"):
        nss(smap, fmap, conventions="mit", size=(6, 8))
    with pytest.raises(DataError, match="size"):
        nss(smap, [[1, 1]], conventions="mit", size=(0, 3))
    with pytest.raises(DataError, match="fixations"):  # outside the given fixation-map size
        nss(smap, [[20, 1]], conventions="mit", size=(12, 16))
    with pytest.raises(DataError, match="nonfixations"):
        sauc(smap, fmap, np.ones((6, 8), dtype=bool), conventions="mit")
    with pytest.raises(DataError, match="fixations"):
        auc_judd(smap, np.zeros((6, 8), dtype=bool), conventions="mit")
    with pytest.raises(DataError, match="prediction"):
        kld(smap - 0.5, smap, conventions="mit")
    with pytest.raises(DataError, match="saliency_map"):
        nss(np.full((4, 4), np.nan), [[1, 1]], conventions="mit")
