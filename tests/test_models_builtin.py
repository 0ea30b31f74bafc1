"""The existing models behind the shared interface: the registry builds the classical models and
a trained readout, and their maps equal what their own APIs give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect.errors import DataError
from dissect.models.base import MODEL_NAMES, SaliencyModel, StimulusImage, load_model
from dissect.models.classical import CLASSICAL_MODELS, load_classical
from dissect.readout import SaliencyReadout, save_readout


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), np.uint8)
    img[10:20, 30:40] = 255
    return img + rng.integers(0, 20, img.shape, dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(CLASSICAL_MODELS))
def test_classical_models_through_the_registry(name, image):
    model = load_model(name)
    assert isinstance(model, SaliencyModel) and model.name == name and model.layers is None
    ref = load_classical(name).saliency(image)
    np.testing.assert_array_equal(model.saliency_map(image), ref)
    # a stimulus with an id gives the same map
    np.testing.assert_array_equal(model.saliency_map(StimulusImage("x", image)), ref)
    assert name in MODEL_NAMES


def test_classical_parameters_are_passed_and_checked(image):
    with pytest.raises(DataError, match="bad parameters"):
        load_model("itti", no_such_knob=3)
    with pytest.raises(DataError, match="only a size"):
        load_model("spectral_residual").saliency_map((48, 64))


def test_readout_through_the_registry(tmp_path, image):
    from dissect.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    readout = SaliencyReadout(bb, 1)
    torch.nn.init.normal_(readout.readout.weight)
    save_readout(tmp_path / "model.pt", readout, {"k": 1})
    model = load_model("readout", checkpoint=tmp_path / "model.pt")
    assert model.name == "readout_k1"
    assert model.layers == dict(bb.layers)
    np.testing.assert_allclose(model.saliency_map(image),
                               readout.eval().predict(image).astype(np.float64), rtol=1e-6)
    with pytest.raises(DataError, match="does not exist"):
        load_model("readout", checkpoint=tmp_path / "missing.pt")
