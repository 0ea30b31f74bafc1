"""Model interface, baselines (uniform, centre bias, gold standard) and probabilistic scoring.

References are independent of the implementation: explicit Gaussian sums written as loops or
with ``scipy.stats.multivariate_normal`` / ``scipy.stats.gaussian_kde``, brute-force
leave-one-out loops, and hand-computed densities.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import gaussian_kde, multivariate_normal

from dissect.data.osie import FixationDataset, Stimulus
from dissect.errors import DataError
from dissect.metrics import information_gain as map_information_gain
from dissect.models.base import (
    MODEL_NAMES,
    ProbabilisticModel,
    StimulusImage,
    load_model,
    register_model,
)
from dissect.models.baselines import CentreBiasModel, GoldStandardModel, UniformModel
from dissect.scoring import (
    fixation_log_densities,
    ig_explained,
    information_gain,
    log_likelihood,
)

COLS = ["image", "subject", "order", "x", "y", "duration"]


def make_dataset(rows, sizes) -> FixationDataset:
    """Dataset of stimuli ``{id: (H, W)}`` (no files needed) and fixation rows
    ``(image, subject, order, x, y)``."""
    stimuli = [Stimulus(i, f"/nonexistent/{i}.png", h, w) for i, (h, w) in sizes.items()]
    fix = pd.DataFrame([(*r, 200.0) for r in rows], columns=COLS)
    return FixationDataset.from_table(stimuli, fix, "synthetic")


def random_dataset(n_images, n_subjects, n_fix, size, *, integer=False, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    rows = []
    for k in range(n_images):
        for s in range(n_subjects):
            for o in range(n_fix):
                x = np.clip(rng.normal(w / 2, w / 5), 0, w - 1)
                y = np.clip(rng.normal(h / 2, h / 5), 0, h - 1)
                if integer:
                    x, y = float(round(x)), float(round(y))
                rows.append((f"im{k}", s, o, x, y))
    return make_dataset(rows, {f"im{k}": size for k in range(n_images)})


def phi(d: float, h: float) -> float:
    return math.exp(-0.5 * (d / h) ** 2) / (math.sqrt(2 * math.pi) * h)


# ------------------------------------------------------------------------------- uniform
def test_uniform_density():
    ld = UniformModel().log_density((3, 5))
    assert ld.shape == (3, 5)
    np.testing.assert_allclose(ld, math.log(1 / 15), rtol=1e-15)
    img = np.zeros((4, 6, 3), np.uint8)
    assert UniformModel().saliency_map(img).sum() == pytest.approx(1.0, abs=1e-14)


# ---------------------------------------------------------------------------- centre bias
def test_centre_bias_density_equals_explicit_gaussian_sum():
    """Image = G × G with integer fixations: each fixation sits on a cell centre, so the
    binned KDE is exact; compare with a sum of isotropic 2-D normals (scipy)."""
    g = 16
    ds = random_dataset(3, 2, 4, (g, g), integer=True, seed=1)
    hist, _ = CentreBiasModel.histogram_of(ds, ds.ids, bins=g, drop_first=False)
    h, w = 0.08, 0.05
    model = CentreBiasModel(hist, h, w)
    ld = model.log_density((g, g))

    pts = np.concatenate([ds.points(i) for i in ds.ids])
    uv = (pts + 0.5) / g
    cu, cv = np.meshgrid((np.arange(g) + 0.5) / g, (np.arange(g) + 0.5) / g)
    grid = np.stack([cu, cv], axis=-1)
    dens = sum(multivariate_normal(mean=p, cov=h * h * np.eye(2)).pdf(grid) for p in uv)
    ref = (1 - w) * dens / dens.sum() + w / g**2
    np.testing.assert_allclose(np.exp(ld), ref, rtol=1e-12)
    assert np.exp(ld).sum() == pytest.approx(1.0, abs=1e-12)


def test_centre_bias_row_profile_equals_gaussian_kde():
    """All fixations on one row: the density factorises, and its profile along x is scipy's
    1-D gaussian_kde of the u coordinates with bandwidth h."""
    g = 20
    xs = [3, 4, 7, 8, 8, 12, 15]
    rows = [("a", s, 0, float(x), 10.0) for s, x in enumerate(xs)]
    ds = make_dataset(rows, {"a": (g, g)})
    hist, _ = CentreBiasModel.histogram_of(ds, ["a"], bins=g, drop_first=False)
    h = 0.07
    d = np.exp(CentreBiasModel(hist, h, 1e-9).log_density((g, g)))
    u = (np.asarray(xs, float) + 0.5) / g
    kde = gaussian_kde(u, bw_method=h / u.std(ddof=1))
    prof = kde((np.arange(g) + 0.5) / g)
    row = d[10] / d[10].sum()
    np.testing.assert_allclose(row, prof / prof.sum(), rtol=1e-7, atol=1e-9)
    # and the column profile is the 1-D Gaussian around the row v = 10.5/g
    col = d[:, 5] / d[:, 5].sum()
    ref = np.array([phi((r + 0.5) / g - 10.5 / g, h) for r in range(g)])
    np.testing.assert_allclose(col, ref / ref.sum(), rtol=1e-7, atol=1e-9)


def test_centre_bias_non_square_images_approx_explicit():
    """Off-cell fixations and other image sizes: the binning (bins=1024) is the only
    approximation; the density matches the unbinned explicit sum to 1 %."""
    ds = random_dataset(2, 3, 5, (30, 40), seed=2)
    hist, _ = CentreBiasModel.histogram_of(ds, ds.ids, bins=1024, drop_first=False)
    h, w = 0.1, 0.02
    got = np.exp(CentreBiasModel(hist, h, w).log_density((12, 21)))
    pts = np.concatenate([ds.points(i) for i in ds.ids])
    u, v = (pts[:, 0] + 0.5) / 40, (pts[:, 1] + 0.5) / 30
    ref = np.zeros((12, 21))
    for r in range(12):
        for c in range(21):
            pu, pv = (c + 0.5) / 21, (r + 0.5) / 12
            ref[r, c] = sum(phi(pu - a, h) * phi(pv - b, h) for a, b in zip(u, v, strict=True))
    ref = (1 - w) * ref / ref.sum() + w / ref.size
    np.testing.assert_allclose(got, ref, rtol=1e-2)


def _brute_loo_centre_bias(ds, ids, g, h, w):
    """Leave-one-image-out bits/fixation over uniform, by explicit loops (images G × G,
    integer fixations, so pixels = cells)."""
    total, n = 0.0, 0
    for i in ids:
        others = [p for j in ids if j != i for p in ds.points(j)]
        dens = np.zeros((g, g))
        for r in range(g):
            for c in range(g):
                dens[r, c] = sum(phi(c - px, h * g) * phi(r - py, h * g) for px, py in others)
        dens = (1 - w) * dens / dens.sum() + w / g**2
        for px, py in ds.points(i):
            total += math.log2(dens[int(py), int(px)] * g * g)
            n += 1
    return total / n


def test_centre_bias_loo_selection_matches_brute_force():
    g = 10
    ds = random_dataset(4, 2, 3, (g, g), integer=True, seed=3)
    hs, ws = [0.05, 0.1, 0.2, 0.4], [0.01, 0.1, 0.4]
    model = CentreBiasModel.fit(ds, ds.ids, drop_first=False, bins=g, bandwidths=hs,
                                mixing_weights=ws, refine=False)
    brute = {(h, w): _brute_loo_centre_bias(ds, ds.ids, g, h, w) for h in hs for w in ws}
    best = max(brute, key=brute.get)
    assert (model.bandwidth, model.mixing_weight) == best
    assert model.loo_log_likelihood_ == pytest.approx(brute[best], abs=1e-10)
    for _, row in model.cv_.iterrows():
        assert row.loo_bits == pytest.approx(max(brute[(row.bandwidth, w)] for w in ws),
                                             abs=1e-10)
    # continuous weight and refined bandwidth: at least as good as any grid point
    free = CentreBiasModel.fit(ds, ds.ids, drop_first=False, bins=g, bandwidths=hs)
    assert free.loo_log_likelihood_ >= brute[best] - 1e-9
    fine = max(_brute_loo_centre_bias(ds, ds.ids, g, free.bandwidth, w)
               for w in np.linspace(0.01, 0.99, 50))
    assert free.loo_log_likelihood_ >= fine - 1e-9
    assert free.loo_log_likelihood_ == pytest.approx(
        _brute_loo_centre_bias(ds, ds.ids, g, free.bandwidth, free.mixing_weight), abs=1e-9)


def test_centre_bias_drop_first_and_errors():
    rows = [("a", 0, 0, 5.0, 5.0), ("a", 0, 1, 1.0, 1.0), ("b", 0, 0, 5.0, 5.0),
            ("b", 0, 1, 8.0, 2.0)]
    ds = make_dataset(rows, {"a": (10, 10), "b": (10, 10)})
    hist, _ = CentreBiasModel.histogram_of(ds, ds.ids, bins=10, drop_first=True)
    assert hist.sum() == 2 and hist[1, 1] == 1 and hist[2, 8] == 1
    with pytest.raises(DataError, match="at least 2 training images"):
        CentreBiasModel.fit(ds, ["a"])
    with pytest.raises(DataError, match="not in the dataset"):
        CentreBiasModel.fit(ds, ["a", "zz"])
    with pytest.raises(DataError, match="bandwidth"):
        CentreBiasModel(hist, -1.0, 0.1)
    with pytest.raises(DataError, match="mixing_weight"):
        CentreBiasModel(hist, 0.1, 1.0)


# ------------------------------------------------------------------------- gold standard
def _explicit_gold(points, size, h, w, base):
    hh, ww = size
    k = np.zeros(size)
    for r in range(hh):
        for c in range(ww):
            k[r, c] = sum(phi(c - x, h) * phi(r - y, h) for x, y in points)
    return (1 - w) * k / k.sum() + w * base


def test_gold_standard_leave_one_subject_out_excludes_the_subject():
    # subject 0 looks only at the top-left corner, subjects 1 and 2 at the bottom right
    rows = [("a", 0, o, 1.0 + o, 1.0) for o in range(3)]
    rows += [("a", s, o, 14.0 - o, 9.0 - s) for s in (1, 2) for o in range(3)]
    size = (12, 16)
    ds = make_dataset(rows, {"a": size})
    gs = GoldStandardModel(ds, bandwidth=1.5, mixing_weight=0.1, drop_first=False)
    held = np.exp(gs.log_density_for("a", held_out_subject=0))
    others = [(x, y) for (_, s, _, x, y) in rows if s != 0]
    ref = _explicit_gold(others, size, 1.5, 0.1, 1 / (12 * 16))
    np.testing.assert_allclose(held, ref, rtol=1e-12)
    # the same as a gold standard built without subject 0 at all
    ds_wo = make_dataset([r for r in rows if r[1] != 0], {"a": size})
    alone = GoldStandardModel(ds_wo, bandwidth=1.5, mixing_weight=0.1, drop_first=False)
    np.testing.assert_allclose(held, np.exp(alone.log_density_for("a")), rtol=1e-12)
    # subject 0's corner gets (nearly) only the mixture's share; with all subjects, much more
    full = np.exp(gs.log_density_for("a"))
    assert held[1, 2] < 1.01 * 0.1 / (12 * 16) < full[1, 2] / 10
    # through the interface: held out = log_density_held_out; all observers = log_density
    st = StimulusImage("a", np.zeros((*size, 3), np.uint8))
    np.testing.assert_array_equal(np.exp(gs.log_density_held_out(st, 0)), held)
    np.testing.assert_array_equal(np.exp(gs.log_density(st)), full)
    assert gs.saliency_map(st).sum() == pytest.approx(1.0, abs=1e-12)


def _brute_loso(ds, ids, h, w):
    total, n = 0.0, 0
    for i in ids:
        size = ds[i].size
        rows = ds.fixations_of(i)
        for s in rows.subject.unique():
            others = rows[rows.subject != s][["x", "y"]].to_numpy()
            dens = _explicit_gold(others, size, h, w, 1 / (size[0] * size[1]))
            for x, y in rows[rows.subject == s][["x", "y"]].to_numpy():
                total += math.log2(dens[int(np.rint(y)), int(np.rint(x))] * size[0] * size[1])
                n += 1
    return total / n


def test_gold_standard_fit_matches_brute_force():
    ds = random_dataset(3, 3, 3, (9, 11), seed=4)
    hs, ws = [0.7, 1.5, 3.0], [0.05, 0.3]
    gs = GoldStandardModel(ds, drop_first=False).fit(
        ds.ids, bandwidths=hs, mixing_weights=ws, refine=False)
    brute = {(h, w): _brute_loso(ds, ds.ids, h, w) for h in hs for w in ws}
    best = max(brute, key=brute.get)
    assert (gs.bandwidth, gs.mixing_weight) == best
    assert gs.loo_log_likelihood_ == pytest.approx(brute[best], abs=1e-10)


def test_gold_standard_with_centre_bias_baseline():
    ds = random_dataset(4, 3, 4, (12, 12), integer=True, seed=5)
    cb = CentreBiasModel.fit(ds, ds.ids, bins=12)
    gs = GoldStandardModel(ds, bandwidth=2.0, mixing_weight=0.3, baseline=cb)
    rows = ds.fixations_of("im1", drop_first=True)
    others = rows[rows.subject != 2][["x", "y"]].to_numpy()
    ref = _explicit_gold(others, (12, 12), 2.0, 0.3, np.exp(cb.log_density((12, 12))))
    np.testing.assert_allclose(np.exp(gs.log_density_for("im1", 2)), ref, rtol=1e-12)


def test_gold_standard_bad_inputs():
    rows = [("solo", 0, o, 2.0 + o, 3.0) for o in range(4)]
    rows += [("pair", s, o, 2.0 + o, 3.0 + s) for s in range(2) for o in range(3)]
    ds = make_dataset(rows, {"solo": (8, 8), "pair": (8, 8)})
    gs = GoldStandardModel(ds, bandwidth=1.0, mixing_weight=0.1)
    with pytest.raises(DataError, match="solo.*no other observer"):
        gs.log_density_for("solo", held_out_subject=0)
    with pytest.raises(DataError, match="solo.*1 observer"):
        GoldStandardModel(ds).fit(["solo", "pair"])
    with pytest.raises(DataError, match="subject 7 has no fixations"):
        gs.log_density_for("pair", held_out_subject=7)
    with pytest.raises(DataError, match="dataset id"):
        gs.log_density(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="differs"):
        gs.log_density(StimulusImage("pair", size=(9, 8)))
    with pytest.raises(DataError, match="not set"):
        GoldStandardModel(ds).log_density_for("pair")
    # after dropping the first fixation, an observer with a single fixation disappears
    rows2 = [("x", 0, 0, 1.0, 1.0), ("x", 1, 0, 2.0, 2.0), ("x", 1, 1, 3.0, 3.0)]
    ds2 = make_dataset(rows2, {"x": (6, 6)})
    g2 = GoldStandardModel(ds2, bandwidth=1.0, mixing_weight=0.1, drop_first=True)
    with pytest.raises(DataError, match="no other observer"):
        g2.log_density_for("x", held_out_subject=1)


# ------------------------------------------------------------------------------- scoring
def test_information_gain_hand_computed():
    p = np.log([[0.75, 0.25]])
    b = np.log([[0.5, 0.5]])
    fix = [(0.0, 0.0), (0.2, 0.1), (1.0, 0.0)]  # pixel 0 twice, pixel 1 once
    expected = (2 * math.log2(1.5) + math.log2(0.5)) / 3
    assert information_gain(p, b, fix) == pytest.approx(expected, abs=1e-15)
    assert log_likelihood(p, fix) == pytest.approx(expected, abs=1e-15)  # over uniform
    raw = (2 * math.log2(0.75) + math.log2(0.25)) / 3
    assert log_likelihood(p, fix, reference=None) == pytest.approx(raw, abs=1e-15)
    # agrees with the saliency-map IG (MIT style) on positive normalised densities
    assert map_information_gain(np.exp(p), np.exp(b), fix) == pytest.approx(expected, abs=1e-12)


def test_scoring_bad_densities():
    fix = [(0.0, 0.0), (1.0, 0.0)]
    zero = np.array([[0.0, -np.inf]])  # density 1 and 0: -inf at the second fixation
    with pytest.raises(DataError, match="img7.*zero.*1 of 2"):
        log_likelihood(zero, fix, image="img7")
    with pytest.raises(DataError, match="zero"):
        information_gain(np.log([[0.5, 0.5]]), zero, fix)
    with pytest.raises(DataError, match="NaN"):
        log_likelihood(np.array([[np.nan, 0.0]]), fix)
    with pytest.raises(DataError, match="not normalised"):
        log_likelihood(np.log([[0.5, 0.6]]), fix)
    with pytest.raises(DataError, match="outside"):
        log_likelihood(np.log([[0.5, 0.5]]), [(2.0, 0.0)])
    with pytest.raises(DataError, match="no fixation"):
        log_likelihood(np.log([[0.5, 0.5]]), np.empty((0, 2)))
    with pytest.raises(DataError, match="shape"):
        information_gain(np.log([[0.5, 0.5]]), np.log([[0.5], [0.5]]), fix)
    # -inf away from the fixations is fine
    assert log_likelihood(zero, [(0.0, 0.0)]) == pytest.approx(1.0)


def test_ig_explained():
    assert ig_explained(0.5, 2.0) == 0.25
    with pytest.raises(DataError, match="undefined"):
        ig_explained(0.5, 0.0)
    with pytest.raises(DataError, match="non-finite"):
        ig_explained(float("nan"), 1.0)


def test_ig_explained_of_gold_standard_against_itself_is_one():
    """IG(gold | centre bias) through the generic scorer (held out per subject) equals an
    explicit per-subject loop, and IG explained of the gold standard is 1."""
    ds = random_dataset(6, 3, 4, (14, 18), seed=6)
    train, test = ds.ids[:4], ds.ids[4:]
    cb = CentreBiasModel.fit(ds, train, bins=32)
    gs = GoldStandardModel(ds, baseline=cb).fit(train)
    gen_gold, gen_cb, loop_num, n = [], [], 0.0, 0
    for i in test:
        st = StimulusImage(i, size=ds[i].size)
        rows = ds.fixations_of(i, drop_first=True)
        gen_gold.append(fixation_log_densities(gs, st, rows))
        gen_cb.append(fixation_log_densities(cb, st, rows))
        for s in rows.subject.unique():
            pts = rows[rows.subject == s][["x", "y"]].to_numpy()
            ig = information_gain(gs.log_density_for(i, s), cb.log_density(ds[i].size), pts)
            loop_num += ig * len(pts)
            n += len(pts)
    ig_generic = float(np.mean(np.concatenate(gen_gold) - np.concatenate(gen_cb))) / math.log(2)
    ig_loop = loop_num / n
    assert ig_generic == pytest.approx(ig_loop, abs=1e-12)
    assert ig_explained(ig_generic, ig_loop) == pytest.approx(1.0, abs=1e-12)


def test_densities_sum_to_one():
    ds = random_dataset(3, 3, 4, (13, 17), seed=7)
    cb = CentreBiasModel.fit(ds, ds.ids, bins=64)
    gs = GoldStandardModel(ds, baseline=cb).fit(ds.ids)
    for size in [(13, 17), (5, 31), (40, 9)]:
        assert np.exp(cb.log_density(size)).sum() == pytest.approx(1.0, abs=1e-12)
        assert np.exp(UniformModel().log_density(size)).sum() == pytest.approx(1.0, abs=1e-12)
    for i in ds.ids:
        for s in (None, 0, 2):
            assert np.exp(gs.log_density_for(i, s)).sum() == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------ registry
def test_registry():
    assert isinstance(load_model("uniform"), UniformModel)
    assert {"uniform", "centre_bias", "gold_standard"} <= set(MODEL_NAMES)
    ds = random_dataset(3, 2, 3, (10, 10), seed=8)
    cb = load_model("centre_bias", dataset=ds, train_ids=ds.ids, bins=16)
    assert isinstance(cb, CentreBiasModel) and cb.bandwidth > 0
    gs = load_model("gold_standard", dataset=ds, train_ids=ds.ids, baseline=cb)
    assert isinstance(gs, GoldStandardModel) and gs.bandwidth > 0
    with pytest.raises(DataError, match="unknown saliency model"):
        load_model("nope")
    with pytest.raises(DataError, match="bad parameters"):
        load_model("uniform", sigma=3)

    @register_model("test_constant_density")
    class Const(ProbabilisticModel):
        name = "const"

        def log_density(self, image):
            return UniformModel().log_density(image)

    assert "test_constant_density" in MODEL_NAMES
    assert isinstance(load_model("test_constant_density"), Const)
    with pytest.raises(ValueError, match="already registered"):
        register_model("uniform")(Const)


# -------------------------------------------------------------------------------- OSIE
@pytest.mark.osie
def test_osie_centre_bias_and_gold_standard(osie):
    from dissect.data.splits import load_split

    split = load_split(Path(__file__).resolve().parents[1] / "annotations/splits/osie.csv")
    train = split.loc[split.split == "train", "image"].tolist()[:50]
    held = split.loc[split.split == "heldout", "image"].tolist()[:4]
    cb = CentreBiasModel.fit(osie, train)
    assert 0.01 < cb.bandwidth < 0.2
    gs = GoldStandardModel(osie, baseline=cb).fit(train[:15])
    assert 5 < gs.bandwidth < 150  # pixels
    ll_gold, ll_cb = [], []
    for i in held:
        st = StimulusImage(i, size=osie[i].size)
        rows = osie.fixations_of(i, drop_first=True)
        ll_gold.append(fixation_log_densities(gs, st, rows))
        ll_cb.append(fixation_log_densities(cb, st, rows))
    gain = float(np.mean(np.concatenate(ll_gold) - np.concatenate(ll_cb))) / math.log(2)
    assert gain > 0.3, gain  # bits/fixation of the gold standard over the centre bias
