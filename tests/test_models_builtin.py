"""The existing models behind the shared interface: the registry builds the classical models, a
trained readout and a trained scene classifier; their maps (class probabilities) equal what their
own APIs (an independent forward) give, and ``module`` / ``layers`` hook the right units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers_cache import tiny_backbone
from scipy.special import softmax

import dissect.models.base as base
from dissect.capture import LayerCapture
from dissect.errors import DataError
from dissect.models.base import (
    MODEL_NAMES,
    DissectableModel,
    SaliencyModel,
    StimulusImage,
    load_model,
)
from dissect.models.classical import CLASSICAL_MODELS, load_classical
from dissect.models.readout import SaliencyReadout, load_readout, save_readout


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
    assert model.module is None
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


def _hooked(module: torch.nn.Module, run) -> torch.Tensor:
    """The output of ``module`` during ``run()``, caught by a plain forward hook."""
    out = []
    handle = module.register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    assert len(out) == 1
    return out[0]


def test_readout_from_a_built_backbone_and_its_hookable_layers(tmp_path, image, monkeypatch):
    """``backbone=`` a Backbone object: no trunk is loaded again, the map is load_readout's, and
    hooking ``layer_module(layer)`` while the readout runs gives the fine-tuned trunk's units
    (LayerCapture on the exported trunk, an independent path)."""
    from dissect.task_compare import finetuned_trunk

    bb = tiny_backbone()
    torch.manual_seed(1)
    readout = SaliencyReadout(bb, 1)
    with torch.no_grad():  # a fine-tuned trunk: the tuned stage differs from the pretrained one
        for p in readout.stages[-1].parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.nn.init.normal_(readout.readout.weight)
    save_readout(tmp_path / "model.pt", readout, {"k": 1})

    def no_loading(*a, **k):
        raise AssertionError("the backbone was loaded again")

    monkeypatch.setattr("dissect.backbones.load_backbone", no_loading)
    model = load_model("readout", checkpoint=tmp_path / "model.pt", backbone=bb)
    assert model.name == "readout_k1" and model.layers == dict(bb.layers)
    # the factory's own ``name`` (a table label) is not the registry name
    assert load_model("readout", checkpoint=tmp_path / "model.pt", backbone=bb,
                      name="readout_k1_s0").name == "readout_k1_s0"
    ref, _ = load_readout(tmp_path / "model.pt", bb)
    np.testing.assert_array_equal(model.saliency_map(image),
                                  ref.eval().predict(image).astype(np.float64))
    assert model.module is model.readout.backbone.model
    x = bb.preprocess(image)
    trunk = finetuned_trunk(model.readout, "k1")
    for layer, path in bb.layers.items():
        assert model.layer_module(layer) is model.module.get_submodule(path)
        got = _hooked(model.layer_module(layer), lambda: model.readout(x))
        with LayerCapture(trunk, [layer]) as cap:
            want = cap.attribute(x)[layer]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the last layer is fine-tuned: the pretrained trunk's units differ
    with LayerCapture(bb, [layer]) as cap:
        assert not torch.equal(cap.attribute(x)[layer], got)
    with pytest.raises(DataError, match="already built Backbone"):
        load_model("readout", checkpoint=tmp_path / "model.pt", backbone=bb,
                   backbone_checkpoint=tmp_path / "weights.pt")
    with pytest.raises(KeyError, match="no layer"):
        model.layer_module("conv9")


def test_scene_classifier_through_the_registry(tmp_path, image):
    """The scene classifier is a DissectableModel (no saliency map): its class probabilities are
    the softmax of an independent forward (the trunk's stages, global average pooling, the head),
    and its layers hook the classifier's own trunk."""
    from dissect.scene import SceneClassifier, save_scene_model

    bb = tiny_backbone()
    clf = SceneClassifier(bb, ["beach", "kitchen", "street"], hidden=(8, 4), dropout=0.5, seed=3)
    with torch.no_grad():
        for p in clf.tuned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = save_scene_model(clf, tmp_path / "scene.pt")
    model = load_model("scene_classifier", checkpoint=path, backbone=bb)
    assert isinstance(model, DissectableModel) and not isinstance(model, SaliencyModel)
    assert model.name == "scene_classifier" and "scene_classifier" in MODEL_NAMES
    assert model.classes == ["beach", "kitchen", "street"]
    assert model.layers == dict(bb.layers)
    assert model.module is model.classifier.backbone.model
    # independent reference: stage by stage, GAP, head (eval: dropout off), softmax in float64
    clf.eval()
    x = bb.preprocess(image)
    with torch.no_grad():
        h = x
        for _, stage in clf.backbone.stages:
            h = stage(h)
        logits = clf.head(h.mean(dim=(2, 3)))[0].double().numpy()
    want = softmax(logits)
    got = model.class_probabilities(image)
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(model.class_probabilities(StimulusImage("x", image)), got)
    # the layers resolve in the classifier's trunk: a hook sees them during its forward
    last = list(bb.layers)[-1]
    seen = _hooked(model.layer_module(last), lambda: model.classifier(x))
    with LayerCapture(model.classifier.trunk_backbone(), [last]) as cap:
        torch.testing.assert_close(seen, cap.attribute(x)[last], rtol=0, atol=0)
    with pytest.raises(DataError, match="not found"):
        load_model("scene_classifier", checkpoint=tmp_path / "missing.pt", backbone=bb)


def test_load_model_takes_any_dissectable_model(monkeypatch):
    """The registry returns any DissectableModel and refuses other objects; a model that names
    layers without a module says so."""

    class Bare(DissectableModel):
        name = "bare"
        layers = {"l": "0"}

    monkeypatch.setitem(base._REGISTRY, "test_bare", Bare)
    monkeypatch.setitem(base._REGISTRY, "test_plain", lambda: object())
    model = load_model("test_bare")
    assert isinstance(model, Bare) and model.module is None
    with pytest.raises(DataError, match="exposes no module"):
        model.layer_module("l")
    with pytest.raises(DataError, match="not a DissectableModel"):
        load_model("test_plain")


def test_every_registering_module_is_a_builtin():
    """A module that registers models with ``@register_model`` is listed in BUILTIN_MODULES, so
    ``load_model`` finds its models without the caller importing it first."""
    import ast
    from pathlib import Path

    root = Path(base.__file__).resolve().parents[2]
    registering = set()
    for f in sorted((root / "dissect").rglob("*.py")):
        if f.name == "base.py" and f.parent.name == "models":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "register_model"
               for n in ast.walk(tree)):
            registering.add(".".join(f.relative_to(root).with_suffix("").parts))
    assert registering == set(base.BUILTIN_MODULES)
