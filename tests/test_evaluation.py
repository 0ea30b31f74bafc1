"""The scorecard (dissect.evaluation) against independent references: the metric functions called
directly in a plain loop, log-likelihood / information gain summed by hand over every fixation
(Gaussian densities read pixel by pixel), IG explained = 1 for the gold standard against itself,
IG = 0 for the centre bias against itself, and bootstrap intervals recomputed by hand."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from dissect.data.maps import density_map
from dissect.data.osie import FixationDataset, Stimulus
from dissect.errors import DataError
from dissect.evaluation import (
    METRICS,
    evaluate_models,
    image_seed,
    leaderboard,
    other_fixations,
    score_image,
)
from dissect.metrics import auc_borji, auc_judd, cc, kld, nss, sauc, sim
from dissect.models.base import SaliencyModel, StimulusImage, image_size
from dissect.models.baselines import CentreBiasModel, GoldStandardModel
from dissect.models.density import SaliencyDensity

COLS = ["image", "subject", "order", "x", "y", "duration"]
SIZE = (18, 22)
GT = 2.5
TRAIN = [f"im{k}" for k in range(3)]
EVAL = [f"im{k}" for k in range(3, 9)]


def make_dataset(rows, sizes) -> FixationDataset:
    stimuli = [Stimulus(i, f"/nonexistent/{i}.png", h, w) for i, (h, w) in sizes.items()]
    fix = pd.DataFrame([(*r, 200.0) for r in rows], columns=COLS)
    return FixationDataset.from_table(stimuli, fix, "synthetic")


@pytest.fixture(scope="module")
def ds() -> FixationDataset:
    """9 images, 3 observers, an unequal number of fixations per observer and image (so a
    fixation-weighted mean differs from a mean of image means)."""
    rng = np.random.default_rng(3)
    h, w = SIZE
    rows = []
    for k in range(9):
        spots = rng.uniform([3, 3], [w - 4, h - 4], (2, 2))  # image-specific hot spots
        for s in range(3):
            for o in range(int(rng.integers(2, 9))):
                cx, cy = spots[rng.integers(0, 2)]
                rows.append((f"im{k}", s, o, float(np.clip(rng.normal(cx, 1.5), 0, w - 1)),
                             float(np.clip(rng.normal(cy, 1.5), 0, h - 1))))
    return make_dataset(rows, {f"im{k}": SIZE for k in range(9)})


class MapModel(SaliencyModel):
    """A map-only model: a smooth random map fixed per image id (any scale, some negatives)."""

    name = "map_model"

    def saliency_map(self, image):
        h, w = image_size(image)
        rng = np.random.default_rng(zlib.crc32(image.id.encode()))
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        return 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0) + rng.normal(
            0, 0.05, (h, w)) + 0.2


class WrongShape(SaliencyModel):
    name = "wrong_shape"

    def saliency_map(self, image):
        h, w = image_size(image)
        return np.ones((h + 1, w))


@pytest.fixture(scope="module")
def setup(ds):
    cb = CentreBiasModel.fit(ds, TRAIN, bandwidths=[0.1, 0.2, 0.4], refine=False)
    gold = GoldStandardModel(ds, bandwidth=2.0, mixing_weight=0.1, baseline=cb)
    dens = SaliencyDensity(MapModel(), cb, sigma=1.0, gamma=1.5, weight=0.3)
    models = {"centre_bias": cb, "gold": gold, "map": MapModel(), "density": dens}
    per_image, summary = evaluate_models(models, ds, EVAL, centre_bias=cb, gold=gold,
                                         gt_sigma_px=GT, seed=7, n_boot=300, load_images=False)
    return cb, gold, dens, models, per_image, summary


def value(summary, model, metric, col="value"):
    r = summary[(summary["model"] == model) & (summary["metric"] == metric)]
    assert len(r) == 1, (model, metric)
    return float(r[col].iloc[0])


def stim(ds, i):
    return StimulusImage(i, size=ds[i].size)


def test_per_image_metrics_equal_direct_calls(ds, setup):
    _, _, _, models, per_image, _ = setup
    got = per_image.set_index(["model", "image", "metric"])["value"]
    for label, model in models.items():
        for i in EVAL:
            pts = ds.points(i, drop_first=True)
            m = model.saliency_map(stim(ds, i))
            d = density_map(pts, SIZE, sigma=GT)
            neg = np.concatenate([ds.points(j, drop_first=True) for j in EVAL if j != i])
            want = {
                "nss": nss(m, pts), "cc": cc(m, d), "sim": sim(m, d), "kld": kld(m, d),
                "auc_judd": auc_judd(m, pts),
                "auc_borji": auc_borji(m, pts, rng=np.random.default_rng(image_seed(7, i))),
                "sauc": sauc(m, pts, neg),
            }
            for metric, v in want.items():
                assert got[(label, i, metric)] == pytest.approx(v, rel=1e-12, abs=1e-14), (
                    label, i, metric)
            n = per_image[(per_image["model"] == label) & (per_image["image"] == i)]
            assert (n["n_fixations"] == len(pts)).all()
    # the map-only model has no LL/IG rows, the probabilistic ones have them
    assert set(per_image.loc[per_image["model"] == "map", "metric"]) == set(METRICS[:7])
    assert {"log_likelihood", "information_gain"} <= set(
        per_image.loc[per_image["model"] == "density", "metric"])


def test_mit_conventions_reach_every_metric(ds, setup):
    """``conventions="mit"`` scores each map metric as the metric's own MIT variant."""
    cb, *_ = setup
    model = MapModel()
    i = EVAL[0]
    s = stim(ds, i)
    got = score_image(model, s, ds, centre_bias=cb, gt_sigma_px=GT, conventions="mit",
                      rng=np.random.default_rng(3))
    pts = ds.points(i, drop_first=True)
    m = model.saliency_map(s)
    d = density_map(pts, SIZE, sigma=GT)
    neg = other_fixations(ds, i, ds.ids, drop_first=True)
    want = {"nss": nss(m, pts, conventions="mit"), "cc": cc(m, d, conventions="mit"),
            "sim": sim(m, d, conventions="mit"), "kld": kld(m, d, conventions="mit"),
            "auc_judd": auc_judd(m, pts, conventions="mit"),
            "auc_borji": auc_borji(m, pts, rng=np.random.default_rng(3), conventions="mit"),
            "sauc": sauc(m, pts, neg, conventions="mit")}
    for metric, v in want.items():
        assert got[metric] == pytest.approx(v, rel=1e-12, abs=1e-14), metric
    plain = score_image(model, s, ds, centre_bias=cb, gt_sigma_px=GT)
    assert got["nss"] != plain["nss"]  # N−1 in the std
    with pytest.raises(DataError, match="conventions"):
        score_image(model, s, ds, centre_bias=cb, gt_sigma_px=GT, conventions="matlab")


def test_dataset_values_are_image_means_and_fixation_weighted_means(ds, setup):
    cb, gold, dens, _, per_image, summary = setup
    # a hand loop over every fixation of every held-out image
    ll_d, ig_d, ig_g, ig_c = [], [], [], []
    per_image_ll = []
    for i in EVAL:
        rows = ds.fixations_of(i, drop_first=True)
        s_i = stim(ds, i)
        ld_d = dens.log_density(s_i)
        ld_c = cb.log_density(SIZE)
        mine = []
        for _, f in rows.iterrows():
            r, c = int(np.rint(f["y"])), int(np.rint(f["x"]))
            g = gold.log_density_for(i, int(f["subject"]))[r, c]  # without that observer
            ll_d.append(ld_d[r, c] / math.log(2) + math.log2(SIZE[0] * SIZE[1]))
            ig_d.append((ld_d[r, c] - ld_c[r, c]) / math.log(2))
            ig_g.append((g - ld_c[r, c]) / math.log(2))
            ig_c.append(0.0)
            mine.append(ll_d[-1])
        per_image_ll.append(np.mean(mine))
    assert value(summary, "density", "log_likelihood") == pytest.approx(np.mean(ll_d), rel=1e-12)
    assert value(summary, "density", "information_gain") == pytest.approx(np.mean(ig_d),
                                                                          rel=1e-12)
    assert value(summary, "gold", "information_gain") == pytest.approx(np.mean(ig_g), rel=1e-12)
    assert value(summary, "density", "ig_explained") == pytest.approx(
        np.mean(ig_d) / np.mean(ig_g), rel=1e-12)
    # fixation-weighted, not the mean of image means (the data make the two differ)
    assert abs(np.mean(per_image_ll) - np.mean(ll_d)) > 1e-3
    # per-image rows are per-image means; value · n recovers the sums
    p = per_image[(per_image["model"] == "density") & (per_image["metric"] == "log_likelihood")]
    assert (p["value"] * p["n_fixations"]).sum() / p["n_fixations"].sum() == pytest.approx(
        np.mean(ll_d), rel=1e-12)
    np.testing.assert_allclose(p["value"].to_numpy(), per_image_ll, rtol=1e-12)
    # map metrics: plain mean over images
    q = per_image[(per_image["model"] == "map") & (per_image["metric"] == "nss")]
    assert value(summary, "map", "nss") == pytest.approx(q["value"].mean(), rel=1e-12)
    assert value(summary, "map", "nss", "n_images") == len(EVAL)


def test_gold_against_itself_is_one_and_centre_bias_zero(setup):
    *_, summary = setup
    assert value(summary, "gold", "ig_explained") == pytest.approx(1.0, abs=1e-9)
    # every resample divides the same sums: the interval is degenerate at 1
    assert value(summary, "gold", "ig_explained", "ci_low") == pytest.approx(1.0, abs=1e-9)
    assert value(summary, "gold", "ig_explained", "ci_high") == pytest.approx(1.0, abs=1e-9)
    for metric in ("information_gain", "ig_explained", "ci_low", "ci_high"):
        m, col = (metric, "value") if metric.startswith(("inf", "ig")) else ("ig_explained",
                                                                            metric)
        assert value(summary, "centre_bias", m, col) == 0.0
    assert value(summary, "gold", "information_gain") > 0.1


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_gold_degenerate_interval_other_methods(ds, setup, method):
    cb, gold, *_ = setup
    _, s = evaluate_models({"gold": gold}, ds, EVAL, centre_bias=cb, gold=gold,
                           gt_sigma_px=GT, n_boot=50, ci_method=method, load_images=False)
    assert value(s, "gold", "ig_explained", "ci_low") == pytest.approx(1.0, abs=1e-9)
    assert value(s, "gold", "ig_explained", "ci_high") == pytest.approx(1.0, abs=1e-9)


def test_bootstrap_interval_by_hand_reproducible_and_chunk_independent(ds, setup):
    cb, gold, dens, models, per_image, summary = setup
    # every interval contains its estimate
    ok = summary.dropna(subset=["ci_low"])
    assert len(ok) == len(summary)
    assert ((ok["ci_low"] <= ok["value"] + 1e-12) & (ok["value"] <= ok["ci_high"] + 1e-12)).all()
    # the basic interval of the density model's IG, recomputed from scipy-style resamples
    p = per_image[(per_image["model"] == "density") & (per_image["metric"] == "information_gain")]
    s = (p["value"] * p["n_fixations"]).to_numpy()
    n = p["n_fixations"].to_numpy(float)
    idx = np.random.default_rng(7).integers(0, len(EVAL), (300, len(EVAL)))
    boot = np.array([s[k].sum() / n[k].sum() for k in idx])
    est = s.sum() / n.sum()
    q_lo, q_hi = np.quantile(boot, [0.025, 0.975])
    assert value(summary, "density", "information_gain", "ci_low") == pytest.approx(
        2 * est - q_hi, rel=1e-9)
    assert value(summary, "density", "information_gain", "ci_high") == pytest.approx(
        2 * est - q_lo, rel=1e-9)
    # same seed → same table, whatever the chunking; another seed → another interval
    pi2, s2 = evaluate_models(models, ds, EVAL, centre_bias=cb, gold=gold, gt_sigma_px=GT,
                              seed=7, n_boot=300, load_images=False, chunk_size=2)
    pd.testing.assert_frame_equal(s2, summary)
    pd.testing.assert_frame_equal(pi2, per_image)
    _, s3 = evaluate_models({"density": dens}, ds, EVAL, centre_bias=cb, gold=gold,
                            gt_sigma_px=GT, seed=8, n_boot=300, load_images=False)
    assert value(s3, "density", "nss") == value(summary, "density", "nss")
    assert value(s3, "density", "nss", "ci_low") != value(summary, "density", "nss", "ci_low")


def test_leaderboard_sorted_by_ig_explained_nan_last(setup):
    *_, summary = setup
    lb = leaderboard(summary)
    # the map model ignores the data's hot spots: worse than the centre bias here
    assert value(summary, "density", "ig_explained") < 0
    assert list(lb["model"]) == ["gold", "centre_bias", "density", "map"]
    assert len(lb) == 4 and math.isnan(lb["ig_explained"].iloc[-1])
    assert lb.loc[lb["model"] == "map", "nss"].item() == value(summary, "map", "nss")
    assert list(lb.columns) == ["model", *METRICS]


def test_wrong_shape_names_model_and_image(ds, setup):
    cb, gold, *_ = setup
    with pytest.raises(DataError, match=r"wrong_shape.*im3.*shape \(19, 22\)"):
        evaluate_models({"wrong_shape": WrongShape()}, ds, EVAL, centre_bias=cb, gold=gold,
                        gt_sigma_px=GT, load_images=False)


def test_image_without_fixations_is_named(setup):
    cb, *_ = setup
    rows = [("a", 0, 0, 3.0, 4.0), ("a", 0, 1, 5.0, 6.0), ("b", 0, 0, 3.0, 4.0),
            ("b", 1, 0, 7.0, 2.0)]  # "b": only starting fixations
    d = make_dataset(rows, {"a": SIZE, "b": SIZE})
    with pytest.raises(DataError, match=r"b: no fixations after dropping"):
        evaluate_models({"map": MapModel()}, d, ["a", "b"], centre_bias=cb, gold=None,
                        gt_sigma_px=GT, load_images=False)
    with pytest.raises(DataError, match=r"b: no fixations"):
        score_image(MapModel(), StimulusImage("b", size=SIZE), d, centre_bias=cb,
                    gt_sigma_px=GT)


def test_kld_of_a_map_with_negative_values_is_that_of_the_shifted_map(ds, setup):
    """A linear readout's map has negative values: KLD scores it shifted to minimum 0 (the
    other metrics are invariant to the shift); a map that is all zero after the shift has no
    mass, and the refusal names the model and the image."""
    from dissect.data.maps import density_map
    from dissect.metrics import kld

    cb, *_ = setup

    class Negative(MapModel):
        name = "negative"

        def saliency_map(self, image):
            return super().saliency_map(image) - 10.0

    s = stim(ds, "im3")
    got = score_image(Negative(), s, ds, centre_bias=cb, gt_sigma_px=GT)
    plain = score_image(MapModel(), s, ds, centre_bias=cb, gt_sigma_px=GT)
    raw = Negative().saliency_map(s)
    dens = density_map(ds.points("im3", drop_first=True), ds["im3"].size, sigma=GT)
    assert got["kld"] == pytest.approx(kld(raw - raw.min(), dens))
    for m in ("nss", "cc", "auc_judd"):
        assert got[m] == pytest.approx(plain[m])

    class Flat(MapModel):
        name = "flat"

        def saliency_map(self, image):
            return np.full(super().saliency_map(image).shape, -1.0)

    with pytest.raises(DataError, match=r"flat on image im3: kld"):
        score_image(Flat(), s, ds, centre_bias=cb, gt_sigma_px=GT)


def test_sauc_negatives_of_other_sizes_map_through_the_unit_square():
    rows = [("a", 0, 0, 1.0, 1.0), ("b", 0, 0, 0.0, 0.0), ("b", 0, 1, 19.0, 9.0)]
    d = make_dataset(rows, {"a": (20, 40), "b": (10, 20)})
    neg = other_fixations(d, "a", ["a", "b"], drop_first=False)
    # x' = (x + 1/2)/20 · 40 − 1/2, y' = (y + 1/2)/10 · 20 − 1/2
    np.testing.assert_allclose(neg, [[0.5, 0.5], [38.5, 18.5]])


def test_a_map_only_model_runs_once_per_image_and_its_density_is_unchanged(ds, setup):
    """The scorecard scores the map and the density of a map-only model from one call of its
    ``saliency_map`` per image (the map is the expensive part: a network's forward pass); the
    log-likelihood is that of ``log_density`` computed on its own."""
    from dissect.evaluation import score_image
    from dissect.scoring import fixation_log_densities

    cb, gold, dens, *_ = setup
    calls: list[str] = []

    class Counting(MapModel):
        def saliency_map(self, image):
            calls.append(image.id)
            return super().saliency_map(image)

    counted = SaliencyDensity(Counting(), cb, dens.sigma, dens.gamma, dens.weight)
    for i in EVAL[:3]:
        calls.clear()
        row = score_image(counted, stim(ds, i), ds, centre_bias=cb, gt_sigma_px=GT, rng=0)
        assert calls == [i]
        rows = ds.fixations_of(i, drop_first=True)
        ll = fixation_log_densities(dens, stim(ds, i), rows) / math.log(2)
        h, w = SIZE
        assert row["ll_sum"] == pytest.approx(float(np.sum(ll + np.log2(h * w))), rel=1e-12)
    with pytest.raises(ValueError, match="observer-dependent"):
        fixation_log_densities(gold, stim(ds, EVAL[0]), ds.fixations_of(EVAL[0]),
                               np.zeros(SIZE))
