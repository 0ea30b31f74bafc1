"""The implicit-saliency analyses: image means and paired differences (dissect.image_means), the
blur robustness (dissect.robustness, dissect.stages.robustness.robustness_table) and the
per-layer records / gradient-vs-activation table (dissect.implicit_analysis), each against an
independent reference (scipy's own filter, hand-computed means, the maps computed directly)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from dissect.errors import DataError
from dissect.image_means import mean_ci, means_table, paired_differences
from dissect.metrics import cc, nss
from dissect.robustness import (
    BlurredImages,
    blurred_records,
    gaussian_blur,
    reference_blur_sigma,
    score_nss_cc,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ image means


def test_mean_ci_skips_undefined_images_and_says_so():
    out = mean_ci([1.0, 2.0, np.nan, 6.0], n_boot=200, seed=1)
    assert out["value"] == pytest.approx(3.0) and out["n_images"] == 3
    assert out["n_undefined"] == 1
    assert out["ci_low"] < 3.0 < out["ci_high"]
    same = mean_ci([2.5, 2.5, 2.5])
    assert same["value"] == same["ci_low"] == same["ci_high"] == 2.5
    one = mean_ci([4.0])
    assert one["value"] == 4.0 and np.isnan(one["ci_low"])
    with pytest.raises(DataError, match="ci_method"):
        mean_ci([1.0, 2.0], method="student")


def test_mean_ci_percentile_interval_is_the_bootstrap_quantiles():
    """For the percentile method the interval is the quantiles of the resampled means: check
    against a plain loop over resamples drawn by numpy (a different generator, so only to the
    Monte-Carlo accuracy of 4000 resamples)."""
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 2.0, 60)
    out = mean_ci(v, n_boot=4000, seed=3, method="percentile")
    means = np.array([v[rng.integers(0, v.size, v.size)].mean() for _ in range(4000)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert out["ci_low"] == pytest.approx(lo, abs=0.08)
    assert out["ci_high"] == pytest.approx(hi, abs=0.08)


def test_means_table_and_paired_differences_by_hand():
    rec = pd.DataFrame({
        "image": ["a", "b", "c"] * 2, "method": ["x"] * 3 + ["y"] * 3,
        "layer": ["L"] * 6, "nss": [1.0, 2.0, 3.0, 0.5, 1.0, 4.5]})
    t = means_table(rec, ["layer", "method"], ["nss"], n_boot=100)
    assert list(t["method"]) == ["x", "y"]
    assert t["value"].tolist() == pytest.approx([2.0, 2.0])
    d = paired_differences(rec, ["layer"], "method", "x", "y", ["nss"], n_boot=100)
    # per image x − y: 0.5, 1.0, −1.5 → mean 0
    assert d["value"].item() == pytest.approx(0.0, abs=1e-12) and d["n_images"].item() == 3
    with pytest.raises(DataError, match="same images"):
        paired_differences(rec.iloc[:5], ["layer"], "method", "x", "y", ["nss"])
    with pytest.raises(DataError, match="scored twice"):
        means_table(pd.concat([rec, rec.iloc[:1]]), ["layer", "method"], ["nss"])


# -------------------------------------------------------------------------------- the blur


def test_reference_blur_sigma_scales_the_papers_radius():
    assert reference_blur_sigma(800) == pytest.approx(39.0625)
    assert reference_blur_sigma(1024) == 50.0
    with pytest.raises(DataError):
        reference_blur_sigma(0)


def test_gaussian_blur_against_scipy():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    out = gaussian_blur(img, 3.0)
    ref = ndimage.gaussian_filter(img.astype(np.float64), sigma=(3.0, 3.0, 0), mode="mirror",
                                  truncate=3.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    # OpenCV's uint8 kernel is truncated at 3σ like the reference and applied in fixed point:
    # equal up to that rounding
    err = np.abs(out.astype(float) - ref)
    assert err.max() <= 2.0 and err.mean() <= 0.5
    assert np.array_equal(gaussian_blur(img, 0.0), img)
    with pytest.raises(DataError, match="uint8"):
        gaussian_blur(img.astype(np.float32), 2.0)


class _Images:
    """Two 40×64 images with fixations; enough of a FixationDataset for the blur records."""

    def __init__(self):
        rng = np.random.default_rng(2)
        self.images = {i: rng.integers(0, 256, (40, 64, 3), dtype=np.uint8) for i in "ab"}
        self.ids = list(self.images)

    def __getitem__(self, i):
        return type("S", (), {"size": (40, 64)})()

    def load_image(self, i):
        return self.images[i]

    def points(self, i, drop_first=True):
        return np.array([[10.0, 5.0], [40.0, 30.0], [50.0, 12.0]])


class _MeanModel:
    name = "mean_channel"

    def saliency_map(self, image):
        return np.asarray(image.image, dtype=np.float64).mean(axis=2)


class _FixedModel:
    name = "fixed"

    def saliency_map(self, image):
        yy, xx = np.mgrid[0:40, 0:64]
        return np.exp(-((yy - 20.0) ** 2 + (xx - 32.0) ** 2) / 200.0)


def test_blurred_records_score_the_blurred_pixels():
    from dissect.data.maps import density_map

    ds = _Images()
    rec = blurred_records({"m": _MeanModel(), "f": _FixedModel()}, ds, ["a", "b"],
                          gt_sigma_px=4.0, radius=50, reference_width=1024)
    assert len(rec) == 4 and set(rec["model"]) == {"m", "f"}
    sigma = reference_blur_sigma(64)
    assert rec["sigma_px"].unique().tolist() == pytest.approx([sigma])
    pts = ds.points("a")
    dens = density_map(pts, (40, 64), sigma=4.0)
    blurred = gaussian_blur(ds.load_image("a"), sigma).astype(float).mean(axis=2)
    row = rec[(rec["model"] == "m") & (rec["image"] == "a")].iloc[0]
    assert row["nss"] == pytest.approx(nss(blurred, pts))
    assert row["cc"] == pytest.approx(cc(blurred, dens))
    assert BlurredImages(ds).sigma("a") == pytest.approx(sigma)
    with pytest.raises(DataError, match="NaN"):
        score_nss_cc(np.full((40, 64), np.nan), pts, dens)


def test_robustness_table_drop_is_paired_by_hand():
    from dissect.stages.robustness import robustness_table

    clean = pd.DataFrame({"model": ["m"] * 3 + ["f"] * 3, "image": list("abc") * 2,
                          "nss": [2.0, 1.0, 3.0, 1.0, 1.0, 1.0], "cc": [0.5, 0.4, 0.6] + [0.2] * 3})
    blurred = clean.copy()
    blurred.loc[blurred["model"] == "m", "nss"] = [1.0, 0.5, 1.5]
    t = robustness_table(clean, blurred, n_boot=200, seed=0, level=0.95,
                         method="basic").set_index("model")
    assert t.loc["m", "nss_n_images"] == 3
    assert t.loc["m", "nss_clean"] == pytest.approx(2.0)
    assert t.loc["m", "nss_blurred"] == pytest.approx(1.0)
    assert t.loc["m", "nss_drop"] == pytest.approx(1.0)  # clean − blurred
    assert t.loc["m", "nss_relative_drop"] == pytest.approx(0.5)
    assert t.loc["f", "nss_drop"] == 0.0 and t.loc["f", "cc_drop"] == 0.0
    assert t.loc["m", "nss_drop_ci_low"] <= 1.0 <= t.loc["m", "nss_drop_ci_high"]
    # an image whose blurred map is undefined leaves every column of that metric, not just one
    blurred.loc[0, "nss"] = np.nan
    t = robustness_table(clean, blurred, n_boot=200, seed=0, level=0.95,
                         method="basic").set_index("model")
    assert t.loc["m", "nss_n_images"] == 2 and t.loc["m", "nss_clean"] == pytest.approx(2.0)
    assert t.loc["m", "nss_blurred"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="different images"):
        robustness_table(clean.iloc[1:], blurred, n_boot=10, seed=0, level=0.95,
                         method="basic")


# ------------------------------------------------------------------- per-layer maps, units


def test_layer_records_score_the_maps_of_the_stores(tmp_path):
    """S_C from the gradient store equals implicit_map of the statistics computed directly;
    S_F from the activation store equals feedforward_map of the activations; Grad-CAM and
    Guided Backprop are their models' maps; every one scored with nss / cc."""
    from _helpers_cache import png_fixation_dataset
    from test_implicit import tiny_backbone, tiny_net

    from dissect.cache import extract_activations
    from dissect.data.maps import density_map
    from dissect.implicit_analysis import layer_records
    from dissect.models.implicit import (
        feedforward_map,
        gradcam_model,
        gradient_statistics,
        guided_backprop_model,
        implicit_map,
        statistics_backbone,
        upsample,
    )

    net = tiny_net().float()  # the activation cache feeds float32
    bb = tiny_backbone(net)
    ds = png_fixation_dataset(tmp_path, [(24, 32), (36, 48)], 3, seed=4)
    grads = extract_activations(ds, statistics_backbone(bb, ["mid", "last"]), None,
                                tmp_path / "g.zarr", batch_size=2, dtype="float32",
                                progress=False)
    acts = extract_activations(ds, bb, ["mid", "last"], tmp_path / "a.zarr", batch_size=2,
                               dtype="float32", progress=False)
    gradcam = {ly: gradcam_model(bb, ly) for ly in ("mid", "last")}
    guided = guided_backprop_model(bb)
    rec = layer_records(ds, ds.ids, gradient_store=grads, activation_store=acts,
                        layers=["mid", "last"], gradcam=gradcam, guided=guided,
                        gt_sigma_px=3.0, drop_first=True)
    assert len(rec) == 2 * (2 * 3 + 1)
    i = "im1"
    pixels = ds.load_image(i)
    size = pixels.shape[:2]
    pts = ds.points(i, drop_first=True)
    dens = density_map(pts, size, sigma=3.0)
    x = bb.preprocess(pixels)
    mean, var, act, _, _ = gradient_statistics(net, net[3], x)
    from captum.attr import LayerGradCam
    from test_implicit import upsample_ref

    from dissect.models.implicit import guided_backprop

    for layer, module in (("mid", net[3]), ("last", net[6])):
        row = rec[(rec["image"] == i) & (rec["layer"] == layer)].set_index("method")
        mean, var, act, _, _ = gradient_statistics(net, module, x)
        s_c = upsample(implicit_map(mean, var), size)
        s_f = upsample(feedforward_map(act), size)
        for method, smap in (("implicit S_C", s_c), ("feedforward S_F", s_f)):
            np.testing.assert_allclose(row.loc[method, "nss"], nss(smap, pts), rtol=1e-4)
            np.testing.assert_allclose(row.loc[method, "cc"], cc(smap, dens), rtol=1e-4)
        # Grad-CAM: captum called directly, for the top-1 class, upsampled by hand
        top1 = int(net(x).argmax())
        cam = LayerGradCam(net, module).attribute(x, target=top1, relu_attributions=True)
        cam = upsample_ref(cam[0, 0].detach().double().numpy(), size)
        np.testing.assert_allclose(row.loc["grad_cam", "nss"], nss(cam, pts), rtol=1e-6)
        np.testing.assert_allclose(row.loc["grad_cam", "cc"], cc(cam, dens), rtol=1e-6)
    gb = rec[(rec["image"] == i) & (rec["method"] == "guided_backprop")]
    assert gb["layer"].item() == "input"
    grad = guided_backprop(net, x, int(net(x).argmax()))[0].abs().amax(dim=0)
    gb_map = upsample_ref(grad.double().numpy(), size)
    np.testing.assert_allclose(gb["nss"].item(), nss(gb_map, pts), rtol=1e-6)
    assert rec[["nss", "cc"]].notna().to_numpy().mean() > 0.5  # mostly defined maps
    with pytest.raises(DataError, match="Grad-CAM"):
        layer_records(ds, ds.ids, gradient_store=grads, activation_store=acts,
                      layers=["mid"], gradcam={}, guided=None, gt_sigma_px=3.0)
    with pytest.raises(DataError, match="not stored"):
        layer_records(ds, [*ds.ids, "nope"], gradient_store=grads, activation_store=acts,
                      layers=["mid"], gradcam=gradcam, guided=None, gt_sigma_px=3.0)


def test_gradient_vs_activation_by_hand():
    from dissect.implicit_analysis import gradient_vs_activation

    def stats(values, excess):
        return pd.DataFrame({
            "layer": ["L1", "L1", "L2"], "category": ["face", "text", "face"],
            "stat": ["top10_mean"] * 3, "value": values, "excess": excess,
            "excess_ci_low": np.subtract(excess, 0.1), "excess_ci_high": np.add(excess, 0.1),
            "p_value": [0.01, 0.5, 0.02]})

    act = stats([2.0, 1.0, 3.0], [0.5, 0.0, 1.0])
    grad = stats([2.5, 0.8, 2.0], [1.5, -0.2, 0.25])
    grad = grad[grad["layer"] == "L1"]  # a layer only one side holds is left out
    t = gradient_vs_activation(grad, act, "top10_mean")
    assert list(zip(t["layer"], t["category"], strict=True)) == [("L1", "face"), ("L1", "text")]
    assert t["excess_difference"].tolist() == pytest.approx([1.0, -0.2])
    with pytest.raises(DataError, match="repeated"):
        gradient_vs_activation(pd.concat([grad, grad]), act, "top10_mean")
    with pytest.raises(DataError, match="share no"):
        gradient_vs_activation(grad, act[act["layer"] == "L2"], "top10_mean")


def test_gain_figure_draws_every_method_and_the_gain(tmp_path):
    from dissect.figures import implicit_gain_figure, save_figure

    layers = ["L1", "L2"]
    rows = [{"layer": ly, "method": m, "metric": metric, "value": v, "ci_low": v - 0.1,
             "ci_high": v + 0.1}
            for metric in ("nss", "cc")
            for m, v in (("implicit S_C", 1.0), ("feedforward S_F", 0.5), ("grad_cam", 0.7))
            for ly in layers]
    rows += [{"layer": "input", "method": "guided_backprop", "metric": metric, "value": 0.3,
              "ci_low": 0.2, "ci_high": 0.4} for metric in ("nss", "cc")]
    gain = pd.DataFrame([{"layer": ly, "metric": metric, "value": 0.5, "ci_low": 0.4,
                          "ci_high": 0.6} for metric in ("nss", "cc") for ly in layers])
    fig = implicit_gain_figure(pd.DataFrame(rows), gain, layers)
    left = fig.axes[0]
    assert len(left.lines) >= 3  # three methods along the layers + Guided Backprop's line
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert "guided_backprop (input)" in labels and "implicit S_C" in labels
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == pytest.approx([0.5, 0.5])
    assert save_figure(fig, tmp_path / "g.png").stat().st_size > 0
    with pytest.raises(DataError, match="missing columns"):
        implicit_gain_figure(pd.DataFrame(rows).drop(columns="ci_low"), gain, layers)
