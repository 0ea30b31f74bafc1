"""DeepGaze I as a model of the shared interface (dissect.models.deepgaze.DeepGazeModel): the
features it computes from pixels against forward hooks on the trunk, its density at the image's
size, the checkpoint round trip through the registry, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp

from dissect.backbones import load_backbone
from dissect.errors import DataError
from dissect.models.base import ProbabilisticModel, StimulusImage, load_model
from dissect.models.baselines import CentreBiasModel
from dissect.models.deepgaze import (
    DeepGazeI,
    DeepGazeModel,
    grid_size,
    input_size,
    save_deepgaze,
)

LAYERS = ["block15", "head"]


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def prior():
    rng = np.random.default_rng(0)
    hist = rng.random((16, 16)) + np.outer(np.hanning(16), np.hanning(16)) * 10
    return CentreBiasModel(hist, bandwidth=0.1, mixing_weight=0.05)


def _readout(grid, n_channels=1152 + 1280, seed=0):
    torch.manual_seed(seed)
    m = DeepGazeI(n_channels, torch.zeros(grid), init_sigma=1.5, init_weight_std=0.05)
    with torch.no_grad():
        m.feature_scale.uniform_(0.5, 2.0)
        m.centre_weight.fill_(0.7)
    return m.eval()


def _hooked_features(bb, image: np.ndarray, scale: float, grid) -> torch.Tensor:
    """Reference: the trunk's full forward with plain forward hooks (not dissect.capture), the
    image resized by torch directly, maps resized to the grid by F.interpolate."""
    h, w = input_size(image.shape[:2], scale)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(bb.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.preprocess.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    got = {}
    hooks = [bb.module(n).register_forward_hook(
        lambda _m, _i, out, n=n: got.__setitem__(n, out.detach().clone())) for n in LAYERS]
    try:
        with torch.no_grad():
            bb.model(x)
    finally:
        for hk in hooks:
            hk.remove()
    return torch.cat([F.interpolate(got[n], size=grid, mode="bilinear", align_corners=False,
                                    antialias=True) for n in LAYERS], dim=1)[0]


def test_density_at_image_size_equals_the_hooked_reference(lite0, prior):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    grid = grid_size(image.shape[:2], 0.5, 16)
    assert grid == (3, 4)
    readout = _readout(grid)
    model = DeepGazeModel(readout, lite0, LAYERS, prior=prior)
    assert isinstance(model, ProbabilisticModel)
    assert model.layers == {n: lite0.layers[n] for n in LAYERS}
    assert model.layer_module("head") is lite0.module("head")  # what a dissection hooks
    feats = _hooked_features(lite0, image, 0.5, grid)
    torch.testing.assert_close(model.features(image), feats, rtol=1e-4, atol=1e-5)
    # the density by hand: Σ w_c s_c f_c, blur, + α log prior, log-softmax, bilinear in log space
    ld = model.log_density(StimulusImage("x", image))
    assert ld.shape == (96, 128) and ld.dtype == np.float64
    assert logsumexp(ld) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        r = (readout.weights * readout.feature_scale) @ feats.reshape(feats.shape[0], -1)
        from scipy.ndimage import gaussian_filter

        o = gaussian_filter(r.reshape(grid).double().numpy(), float(readout.sigma),
                            mode="nearest", truncate=3.0)
    o = o + 0.7 * prior.log_density(grid)
    o = o - logsumexp(o)
    up = F.interpolate(torch.from_numpy(o)[None, None], size=(96, 128), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ld, up - logsumexp(up), atol=2e-4)
    np.testing.assert_allclose(model.saliency_map(image), np.exp(ld))


def test_checkpoint_round_trip_through_the_registry(lite0, prior, tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    grid = grid_size(image.shape[:2], 0.5, 16)
    readout = _readout(grid, seed=3)
    path = save_deepgaze(readout, tmp_path / "dg.pt", feature_layers=LAYERS,
                         layer_units={"block15": 1152, "head": 1280},
                         meta={"weights_id": lite0.weights_id, "input_scale": 0.5,
                               "grid_stride": 16})
    direct = DeepGazeModel(readout, lite0, LAYERS, prior=prior)
    loaded = load_model("deepgaze", checkpoint=path, backbone=lite0, prior=prior)
    np.testing.assert_array_equal(loaded.log_density(image), direct.log_density(image))
    # a uniform prior (pop-out arrays): the centre term is zero, on an image of another size
    other = rng.integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    uni = load_model("deepgaze", checkpoint=path, backbone=lite0, uniform_prior=True)
    ld = uni.log_density(other)
    assert ld.shape == (120, 100) and logsumexp(ld) == pytest.approx(0.0, abs=1e-9)
    assert not np.allclose(ld, DeepGazeModel(readout, lite0, LAYERS, prior=prior)
                           .log_density(other))
    with pytest.raises(DataError, match="prior"):
        load_model("deepgaze", checkpoint=path, backbone=lite0)
    with pytest.raises(DataError, match="trained on trunk weights"):
        load_model("deepgaze", checkpoint=path, backbone=load_backbone(
            "efficientnet_lite0", weights="random"), prior=prior)
    with pytest.raises(DataError, match="checkpoint missing"):
        load_model("deepgaze", checkpoint=tmp_path / "none.pt", backbone=lite0, prior=prior)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a DeepGaze I checkpoint"):
        load_model("deepgaze", checkpoint=tmp_path / "bad.pt", backbone=lite0, prior=prior)


def test_unknown_feature_layer_is_named(lite0):
    with pytest.raises(DataError, match="no layer"):
        DeepGazeModel(_readout((3, 4), n_channels=4), lite0, ["block99"])
