"""Issue 12, "Bring your own network": ``backbone.name: custom`` dissects any ``torch.nn.Module``
that ``backbone.factory`` returns, through the pipeline's own code path (params → schema →
``common.backbone`` → the extraction stage's ``extract_store`` → the activation cache; the
readout trained on it). References are independent: a fresh network from the factory module,
forward hooks registered by hand, and the preprocessing written from its definition
(``tests/_reference.py``'s antialiased bilinear resize, the ImageNet constants typed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers_cache import png_fixation_dataset
from _reference import resize

from dissect.backbones import state_dict_sha256
from dissect.cache import open_activations
from dissect.capture import LayerCapture
from dissect.config import load_params
from dissect.errors import DataError
from dissect.params_schema import ParamsError
from dissect.stages import common
from dissect.stages.extract import extract_store

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "pipelines" / "params.yaml"
HERE = Path(__file__).resolve().parent
MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet, the documented default
STD = np.array([0.229, 0.224, 0.225])
LAYERS = {"r1": "relu1", "blk": "block.3", "r3": "relu3"}


@pytest.fixture(autouse=True)
def _setup(monkeypatch, one_torch_thread):
    """The factory module is importable as ``_custom_model`` (as a user's module on
    PYTHONPATH would be); tiny models gain nothing from threads on a shared machine."""
    monkeypatch.syspath_prepend(str(HERE))


def custom_params(tmp_path, **overrides):
    return load_params(PARAMS, {
        "work": str(tmp_path / "work"), "results": str(tmp_path / "results"), "progress": False,
        "device": "cpu", "backbone.name": "custom", "backbone.factory": "_custom_model:build",
        "backbone.weights": None, "backbone.layers": LAYERS, "extract.dtype": "float32",
        "extract.batch_size": 2, **overrides})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five PNG stimuli of two sizes, 3 observers × 4 fixations each (order 0 = start)."""
    sizes = [(40, 48) if k % 2 else (30, 36) for k in range(5)]
    return png_fixation_dataset(tmp_path_factory.mktemp("img"), sizes, n_subjects=3, seed=0)


def reference_maps(build, paths: dict[str, str], img: np.ndarray, *, seed: int = 0,
                   size=(224, 224), mean=MEAN, std=STD) -> dict[str, np.ndarray]:
    """Unit maps by hand: a fresh network from the factory (same seed), forward hooks on the
    module paths, the input resized and normalised from the definitions."""
    torch.manual_seed(seed)
    model = build().eval()
    x = resize(img.transpose(2, 0, 1) / 255.0, size, antialias=True)
    x = (x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    got: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, name=name: got.__setitem__(name, out.detach().clone()))
        for name, p in paths.items()]
    with torch.no_grad():
        model(torch.from_numpy(x[None]).float())
    for h in handles:
        h.remove()
    return {name: t[0].numpy() for name, t in got.items()}


# ------------------------------------------------------------------- the pipeline's code path
def test_params_to_activation_cache_match_hand_hooks(images, tmp_path):
    import _custom_model

    params = custom_params(tmp_path)
    bb = common.backbone(params)
    # an nn.Sequential: its top-level children are the trunk stages, in order
    assert bb.stage_names == ["conv1", "relu1", "block", "conv3", "relu3"]
    assert bb.layers == LAYERS and common.layer_names(params) == ["r1", "blk", "r3"]
    assert bb.name == "_custom_model:build"
    assert bb.preprocess.size == (224, 224)
    np.testing.assert_allclose(bb.preprocess.mean, MEAN)
    np.testing.assert_allclose(bb.preprocess.std, STD)
    assert not bb.model.training
    torch.manual_seed(0)
    assert bb.weights_id == state_dict_sha256(_custom_model.build())  # the weights' identity

    store = tmp_path / "act.zarr"
    extract_store(params, images, bb, common.layer_names(params), store)
    for layer in LAYERS:
        stored = open_activations(store, layer)
        assert stored.attrs["weights_id"] == bb.weights_id
        assert [str(i) for i in stored["image"].values] == images.ids
    for i in images.ids:
        want = reference_maps(_custom_model.build, LAYERS, images.load_image(i))
        for layer in LAYERS:
            got = open_activations(store, layer).sel(image=i).values
            np.testing.assert_allclose(got, want[layer], rtol=1e-4, atol=1e-5)

    # dissect.capture directly on the same backbone: the same maps
    x = bb.preprocess([images.load_image(i) for i in images.ids[:2]])
    acts = LayerCapture(bb, list(LAYERS)).attribute(x)
    for k, i in enumerate(images.ids[:2]):
        want = reference_maps(_custom_model.build, LAYERS, images.load_image(i))
        for layer in LAYERS:
            np.testing.assert_allclose(acts[layer][k].numpy(), want[layer], rtol=1e-4,
                                       atol=1e-5)


def test_a_list_of_module_paths_names_each_layer_by_its_path(images, tmp_path):
    import _custom_model

    paths = ["relu1", "block.3"]
    params = custom_params(tmp_path, **{"backbone.layers": paths})
    bb = common.backbone(params)
    assert bb.layers == {p: p for p in paths} and common.layer_names(params) == paths
    img = images.load_image(images.ids[0])
    acts = LayerCapture(bb, paths).attribute(bb.preprocess(img))
    want = reference_maps(_custom_model.build, {p: p for p in paths}, img)
    for p in paths:
        np.testing.assert_allclose(acts[p][0].numpy(), want[p], rtol=1e-4, atol=1e-5)


def test_mean_and_std_from_params(images, tmp_path):
    import _custom_model

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    params = custom_params(tmp_path, **{"backbone.mean": mean, "backbone.std": std})
    bb = common.backbone(params)
    img = images.load_image(images.ids[1])
    acts = LayerCapture(bb, ["r3"]).attribute(bb.preprocess(img))
    want = reference_maps(_custom_model.build, LAYERS, img, mean=mean, std=std)
    np.testing.assert_allclose(acts["r3"][0].numpy(), want["r3"], rtol=1e-4, atol=1e-5)


def test_a_module_that_is_not_sequential_is_one_stage(images, tmp_path):
    import _custom_model

    layers = {"stem": "act", "branch": "branch.1", "out": "out_act"}
    params = custom_params(tmp_path, **{"backbone.factory": "_custom_model:build_twopath",
                                        "backbone.layers": layers})
    bb = common.backbone(params)
    assert bb.stage_names == ["model"]
    img = images.load_image(images.ids[2])
    acts = LayerCapture(bb, list(layers)).attribute(bb.preprocess(img))
    want = reference_maps(_custom_model.build_twopath, layers, img)
    for name in layers:
        np.testing.assert_allclose(acts[name][0].numpy(), want[name], rtol=1e-4, atol=1e-5)


def test_a_factory_may_return_a_dissect_backbone(images, tmp_path):
    import _custom_model

    params = custom_params(tmp_path, **{"backbone.factory": "_custom_model:build_backbone",
                                        "backbone.layers": ["r1", "r3"]})
    bb = common.backbone(params)
    assert bb.stage_names == ["first", "second", "third"]
    assert bb.preprocess.size == (40, 48) and bb.preprocess.mean == (0.5, 0.5, 0.5)
    torch.manual_seed(0)
    assert bb.weights_id == state_dict_sha256(_custom_model.build())  # not the factory's "ignored"
    img = images.load_image(images.ids[0])
    acts = LayerCapture(bb, ["r1", "r3"]).attribute(bb.preprocess(img))
    want = reference_maps(_custom_model.build, {"r1": "relu1", "r3": "relu3"}, img,
                          size=(40, 48), mean=(0.5,) * 3, std=(0.25,) * 3)
    for name in ("r1", "r3"):
        np.testing.assert_allclose(acts[name][0].numpy(), want[name], rtol=1e-4, atol=1e-5)
    # params mean/std replace the Backbone's (its size stays); a mapping replaces its layers
    params = custom_params(tmp_path, **{"backbone.factory": "_custom_model:build_backbone",
                                        "backbone.layers": {"deep": "relu3"},
                                        "backbone.std": [0.5, 0.5, 0.5]})
    bb = common.backbone(params)
    assert bb.layers == {"deep": "relu3"} and bb.stage_of("deep") == "third"
    assert bb.preprocess.size == (40, 48) and bb.preprocess.std == (0.5, 0.5, 0.5)


def test_checkpoint_weights_are_loaded_and_hashed(tmp_path):
    import _custom_model

    torch.manual_seed(7)
    other = _custom_model.build()
    torch.save(other.state_dict(), tmp_path / "w.pt")
    plain = common.backbone(custom_params(tmp_path))
    bb = common.backbone(custom_params(tmp_path, **{"backbone.checkpoint": str(tmp_path / "w.pt")}))
    assert bb.weights_id == state_dict_sha256(other) != plain.weights_id
    for key, value in other.state_dict().items():
        torch.testing.assert_close(bb.model.state_dict()[key], value, rtol=0, atol=0)


def test_readout_trains_on_a_custom_backbone(images, tmp_path):
    """Setup II on the custom trunk: the top stage and the readout learn, the rest stays."""
    from dissect.models.readout import SaliencyReadout
    from dissect.training import train_readout

    bb = common.backbone(custom_params(tmp_path))
    assert SaliencyReadout(bb, 2).tuned_stage_names == ["conv3", "relu3"]
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    res = train_readout(bb, images, images.ids[:4], images.ids[4:], 2, epochs=1, lr=0.05,
                        trunk_lr=0.05, optimizer="sgd", batch_size=2, lr_schedule=None,
                        patience=None, device="cpu")
    trained = res.model
    assert trained.first_tuned() == 3  # conv3 and relu3 (k = 2)
    assert np.isfinite(res.history["train_loss"]).all()
    tuned = trained.backbone.model.state_dict()
    assert not torch.equal(tuned["conv3.weight"], before["conv3.weight"])
    for key in ("conv1.weight", "block.1.weight", "block.2.running_mean"):
        assert torch.equal(tuned[key], before[key]), key
    assert {k: torch.equal(v, before[k]) for k, v in bb.model.state_dict().items()} == {
        k: True for k in before}  # the caller's backbone is untouched
    maps = trained(bb.preprocess([images.load_image(i) for i in images.ids[:2]]))
    assert maps.shape == (2, 56, 56)


# ------------------------------------------------------------------------------ clear errors
SCHEMA_CASES = [
    ({"backbone.factory": "no_colon"}, "backbone.factory", r"package\.module:function.*no_colon"),
    ({"backbone.factory": "a.b:"}, "backbone.factory", r"'a\.b:'"),
    ({"backbone.factory": None}, "backbone.factory", "required with backbone.name: custom"),
    ({"backbone.weights": "imagenet"}, "backbone.weights", "must be null.*custom"),
    ({"backbone.layers": {"x": "a..b"}}, "backbone.layers", "dotted module path.*'a..b'"),
    ({"backbone.layers": {"x": "relu1", "y": "relu1"}}, "backbone.layers", "same module"),
    ({"backbone.layers": {}}, "backbone.layers", "at least 1 item"),
    ({"backbone.layers": {"a/b": "relu1"}}, "backbone.layers", "without '/'.*'a/b'"),
    ({"backbone.mean": [0.5, 0.5]}, "backbone.mean", "at least 3 items"),
    ({"backbone.std": [0.5, 0.0, 0.5]}, "backbone.std[1]", "greater than 0"),
    ({"backbone.name": "vgg16", "backbone.weights": "imagenet"}, "backbone.factory",
     "must be null unless backbone.name is custom"),
    ({"backbone.name": "vgg16", "backbone.weights": "imagenet", "backbone.factory": None},
     "backbone.layers", "mapping.*for backbone.name: custom"),
    ({"backbone.name": "vgg16", "backbone.weights": "imagenet", "backbone.factory": None,
      "backbone.layers": ["conv5_3"], "backbone.mean": [0.5, 0.5, 0.5]}, "backbone.mean",
     "must be null unless backbone.name is custom"),
]


@pytest.mark.parametrize("overrides, key, words", SCHEMA_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(SCHEMA_CASES)])
def test_the_schema_refuses_a_malformed_custom_backbone(tmp_path, overrides, key, words):
    import re

    with pytest.raises(ParamsError) as info:
        custom_params(tmp_path, **overrides)
    err = info.value
    assert err.keys == [key], str(err)
    assert str(err).startswith(f"{PARAMS}: {key}: ")
    assert re.search(words, str(err)), str(err)


LOAD_CASES = [
    ({"backbone.factory": "_no_such_module_here:build"}, "backbone.factory",
     "'_no_such_module_here:build'.*cannot import module '_no_such_module_here'"),
    ({"backbone.factory": "_custom_model:biuld"}, "backbone.factory",
     "'_custom_model:biuld'.*no attribute 'biuld'; did you mean 'build'"),
    ({"backbone.factory": "_custom_model:NOT_CALLABLE"}, "backbone.factory",
     "NOT_CALLABLE is a int, not a function"),
    ({"backbone.factory": "_custom_model:returns_a_number"}, "backbone.factory",
     "'_custom_model:returns_a_number'.*returned a int, not a torch.nn.Module"),
    ({"backbone.factory": "_custom_model:raises"}, "backbone.factory",
     "raised RuntimeError: no weights here"),
    ({"backbone.layers": {"x": "block.9"}}, "backbone.layers",
     r"'x' → 'block\.9'.*no such module"),
    ({"backbone.layers": ["relu2"]}, "backbone.layers", "'relu2'.*no such module; did you mean"),
    ({"backbone.layers": ["relu3", "relu1"]}, "backbone.layers",
     r"forward order.*\['relu1', 'relu3'\]"),
    ({"backbone.factory": "_custom_model:build_shared_relu", "backbone.layers": ["relu"]},
     "backbone.layers", "'relu' runs 2 times per forward pass"),
    ({"backbone.factory": "_custom_model:build_backbone", "backbone.layers": ["nope"]},
     "backbone.layers", r"has no layer\(s\) \['nope'\]"),
]


@pytest.mark.parametrize("overrides, key, words", LOAD_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(LOAD_CASES)])
def test_building_a_bad_custom_backbone_names_the_key_and_value(tmp_path, overrides, key, words):
    import re

    params = custom_params(tmp_path, **overrides)  # well formed: the schema lets it through
    with pytest.raises(ParamsError) as info:
        common.backbone(params)
    err = info.value
    assert isinstance(err, DataError) and err.keys == [key], str(err)
    assert str(err).startswith(f"{PARAMS}: {key}: ")
    assert re.search(words, str(err)), str(err)


def test_the_factory_module_must_be_importable(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != HERE])
    sys.modules.pop("_custom_model", None)
    with pytest.raises(ParamsError, match="cannot import module '_custom_model'.*PYTHONPATH"):
        common.backbone(custom_params(tmp_path))
