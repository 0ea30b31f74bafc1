"""Scene classifier: stages tuned, class weights, training, caching, evaluation, trunk export.

Most tests use a tiny synthetic trunk with the Backbone interface (fast); the real-data test
fine-tunes EfficientNet-Lite0's head stage on 20 OSIE images (skipped, with the reason, where
OSIE is absent; the Lite0 weights ship with a pinned dependency, so a failure to load them fails).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from dissect.data.scenes import load_scenes
from dissect.errors import DataError
from dissect.scene import (
    SceneClassifier,
    class_weights,
    evaluate_scene_model,
    load_scene_model,
    prefix_features,
    resolve_tune_stages,
    save_scene_model,
    train_scene_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- a tiny Backbone-like trunk -----------------------------------------------------------------
@dataclass
class TinyBackbone:
    model: nn.Module
    stages: list
    layers: dict
    weights_id: str = "tiny-seed0"
    name: str = "tiny"
    preprocess: object = field(default=None)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0 - 0.5


def tiny_backbone(seed: int = 0) -> TinyBackbone:
    torch.manual_seed(seed)

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    model = nn.Module()
    model.features = nn.Sequential(block(3, 8), nn.MaxPool2d(2), block(8, 16), block(16, 16))
    stages = [
        ("conv1", nn.Sequential(model.features[0], model.features[1])),
        ("conv2", model.features[2]),
        ("conv3", model.features[3]),
    ]
    layers = {"conv1": "features.0.2", "conv2": "features.2.2", "conv3": "features.3.2"}
    return TinyBackbone(model.eval(), stages, layers, preprocess=_to_tensor)


class ToyScenes:
    """Images whose colour (red / green / blue dominant) is the scene; plus noise."""

    def __init__(self, n: int, seed: int = 0, size: int = 16):
        rng = np.random.default_rng(seed)
        self.ids = [f"im{i:03d}" for i in range(n)]
        self.scene = {i: ["red", "green", "blue"][k % 3] for k, i in enumerate(self.ids)}
        self._img = {}
        for i in self.ids:
            img = rng.integers(0, 120, (size, size, 3))
            img[..., ["red", "green", "blue"].index(self.scene[i])] += 120
            self._img[i] = img.astype(np.uint8)

    def load_image(self, i: str) -> np.ndarray:
        return self._img[i]

    def __getitem__(self, i: str) -> SimpleNamespace:  # Stimulus-like (no file on disk)
        h, w = self._img[i].shape[:2]
        return SimpleNamespace(id=i, file=f"{i}.png", height=h, width=w)

    def write_labels(self, path: Path) -> Path:
        pd.DataFrame({"image": self.ids, "scene": [self.scene[i] for i in self.ids]}).to_csv(
            path, index=False
        )
        return path


@pytest.fixture
def toy(tmp_path):
    ds = ToyScenes(48)
    labels = load_scenes(ds.write_labels(tmp_path / "scenes.csv"), min_images=1)
    return ds, labels


# -- unit tests ---------------------------------------------------------------------------------
def test_class_weights_inverse_frequency():
    y = np.array([0, 0, 0, 1, 2, 2])
    w = class_weights(y, 3)
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 6 / 6])
    np.testing.assert_allclose(w[y].mean(), 1.0)  # mean weight over images is 1
    # every class has the same total weight
    np.testing.assert_allclose(np.bincount(y, weights=w[y]), [2, 2, 2])
    with pytest.raises(DataError, match=r"\['c'\]"):
        class_weights(np.array([0, 1]), 3, ["a", "b", "c"])


def test_resolve_tune_stages():
    names = ["a", "b", "c", "d"]
    assert resolve_tune_stages(names, 1) == ["d"]
    assert resolve_tune_stages(names, 0) == []
    assert resolve_tune_stages(names, ["d", "c"]) == ["c", "d"]
    assert resolve_tune_stages(names, "d") == ["d"]
    assert resolve_tune_stages(names, "all") == names  # as the saliency readout's k = "all"
    with pytest.raises(ValueError, match="last stages"):
        resolve_tune_stages(names, ["b"])
    with pytest.raises(ValueError, match="unknown"):
        resolve_tune_stages(names, ["x"])
    with pytest.raises(ValueError):
        resolve_tune_stages(names, 5)


@pytest.mark.parametrize("tune", [1, ["conv2", "conv3"], "all"])
def test_only_intended_stages_get_gradients(tune):
    bb = tiny_backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    m = SceneClassifier(bb, ["a", "b", "c"], tune_stages=tune)
    assert m.in_channels == 16
    m.train()
    x = torch.randn(4, 3, 16, 16)
    loss = nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    tuned_names = {"1": ["conv3"], "all": ["conv1", "conv2", "conv3"]}.get(
        str(tune), ["conv2", "conv3"]
    )
    assert m.tune_stage_names == tuned_names
    stage_mods = dict(m.backbone.stages)
    for name, mod in stage_mods.items():
        for p in mod.parameters():
            if name in tuned_names:
                assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
            else:
                assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None for p in m.head.parameters())
    # the optimiser sees exactly the tuned stages + head
    n_expected = sum(p.numel() for n in tuned_names for p in stage_mods[n].parameters())
    n_expected += sum(p.numel() for p in m.head.parameters())
    assert sum(p.numel() for p in m.trainable_parameters()) == n_expected
    # the prefix is in eval mode and BN of tuned stages keeps running stats when training
    assert not m.prefix.training
    bn = [mod for mod in m.tuned.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bn and not any(b.training for b in bn)
    assert m.head.training
    # the caller's backbone is untouched
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in bb.model.parameters())


def test_head_architecture():
    m = SceneClassifier(tiny_backbone(), ["a", "b"], hidden=(32, 8), dropout=0.3)
    kinds = [type(x).__name__ for x in m.head]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.head[i].out_features for i in (0, 3, 6)] == [32, 8, 2]
    assert m.head[0].in_features == 16 and m.head[2].p == 0.3


def test_training_learns_and_is_deterministic(toy, tmp_path, caplog):
    ds, labels = toy
    train, val = labels.ids[:36], labels.ids[36:]
    kw = dict(epochs=10, lr=1e-2, batch_size=8, seed=3, patience=100, hidden=(32, 16), dropout=0.1)
    r1 = train_scene_model(
        tiny_backbone(), ds, labels, train, val, **kw, log_path=tmp_path / "h.csv"
    )
    r2 = train_scene_model(tiny_backbone(), ds, labels, train, val, **kw)
    h = r1.history
    assert list(h.columns[:7]) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
        "seconds",
    ]
    assert len(h) == 10 and h["best"].sum() == 1
    assert h["train_loss"].iloc[-3:].mean() < 0.6 * h["train_loss"].iloc[0]
    assert h["val_accuracy"].max() > 0.7  # colour is easy
    cols = ["train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(h[cols], r2.history[cols])
    logged = pd.read_csv(tmp_path / "h.csv")
    np.testing.assert_allclose(logged["train_loss"], h["train_loss"])
    # the best epoch's weights are restored
    acc, recall, cm, pred = evaluate_scene_model(r1.model, ds, labels, val)
    best = h.loc[h["best"]].iloc[0]
    assert acc == pytest.approx(best["val_accuracy"])
    assert r1.best_epoch == int(best["epoch"])
    r3 = train_scene_model(
        tiny_backbone(), ds, labels, train, val, **{**kw, "seed": 4, "epochs": 2}
    )
    assert not np.allclose(r3.history["train_loss"], h["train_loss"][:2])


def test_early_stopping(toy):
    ds, labels = toy
    r = train_scene_model(
        tiny_backbone(), ds, labels, labels.ids[:36], labels.ids[36:], epochs=50, lr=0.0,
        batch_size=12, patience=2, hidden=(8, 8), monitor="loss",
    )  # fmt: skip
    # lr = 0: nothing improves after epoch 0 (dropout changes only training loss)
    assert len(r.history) == 3 and r.best_epoch == 0


def test_split_errors(toy):
    ds, labels = toy
    with pytest.raises(DataError, match="both train and val"):
        train_scene_model(tiny_backbone(), ds, labels, labels.ids[:10], labels.ids[9:12], epochs=1)
    with pytest.raises(DataError, match="without training images"):
        # only red images (every 3rd) in training
        train_scene_model(tiny_backbone(), ds, labels, labels.ids[::3], [], epochs=1)
    with pytest.raises(DataError, match="no scene label"):
        train_scene_model(tiny_backbone(), ds, labels, ["nope", *labels.ids], [], epochs=1)


def test_prefix_cache_reused(toy, tmp_path, caplog):
    ds, labels = toy
    m = SceneClassifier(tiny_backbone(), labels.classes)
    ids = labels.ids[:5]
    with caplog.at_level(logging.INFO, logger="dissect.scene"):
        a = prefix_features(m, ds, ids, cache_dir=tmp_path)
        assert "computed for 5 images" in caplog.text
        caplog.clear()
        b = prefix_features(m, ds, ids[::-1], cache_dir=tmp_path)
        assert "computed for" not in caplog.text  # all read from the cache
    torch.testing.assert_close(b, a.flip(0))
    assert a.shape == (5, 16, 8, 8)  # prefix = conv1 (with pool) + conv2
    with torch.no_grad():
        torch.testing.assert_close(
            a, m.prefix(torch.cat([_to_tensor(ds.load_image(i)) for i in ids]))
        )
    # other weights -> another cache
    m2 = SceneClassifier(tiny_backbone(seed=1), labels.classes)
    m2.backbone.weights_id = "tiny-seed1"
    c = prefix_features(m2, ds, ids, cache_dir=tmp_path)
    assert not torch.allclose(a, c)
    assert len(list(tmp_path.glob("prefix-*.zarr"))) == 2


def test_trunk_backbone_and_checkpoint(toy, tmp_path):
    ds, labels = toy
    bb = tiny_backbone()
    r = train_scene_model(bb, ds, labels, labels.ids[:36], labels.ids[36:], epochs=2, lr=1e-2,
                          batch_size=12, hidden=(8, 8))  # fmt: skip
    ft = r.model.trunk_backbone()
    assert [n for n, _ in ft.stages] == [n for n, _ in bb.stages]
    assert ft.layers == bb.layers
    assert [n for n, _ in ft.model.named_modules()] == [n for n, _ in bb.model.named_modules()]
    assert ft.weights_id.startswith("tiny-seed0+scene:") and bb.weights_id == "tiny-seed0"
    # stage modules are the model's own submodules (hooks by module path see the stages)
    assert ft.stages[2][1] is ft.model.get_submodule("features.3")
    new, old = ft.model.state_dict(), bb.model.state_dict()
    for k in old:
        if k.startswith("features.3."):
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert not torch.equal(new[k], old[k]), k  # fine-tuned
            else:
                assert torch.equal(new[k], old[k]), k  # frozen BN statistics
        else:
            assert torch.equal(new[k], old[k]), k  # frozen prefix
    # the exported trunk computes the same features as the classifier's trunk
    x = torch.cat([_to_tensor(ds.load_image(i)) for i in labels.ids[:3]])
    with torch.no_grad():
        y_ft = nn.Sequential(*[m for _, m in ft.stages])(x)
        y_m = r.model.tuned(r.model.prefix(x))
    torch.testing.assert_close(y_ft, y_m)
    # checkpoint round trip
    path = save_scene_model(r.model, tmp_path / "scene.pt")
    m2 = load_scene_model(path, tiny_backbone())
    r.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(x), r.model(x))
    other = tiny_backbone()
    other.weights_id = "other"
    with pytest.raises(DataError, match="trained on backbone weights"):
        load_scene_model(path, other)


def test_evaluate_and_plot(toy, tmp_path):
    ds, labels = toy
    m = SceneClassifier(tiny_backbone(), labels.classes, hidden=(8, 8))
    ids = labels.ids[:10]
    acc, recall, cm, pred = evaluate_scene_model(m, ds, labels, ids)
    assert list(pred.columns) == ["image", "true", "pred", "correct"]
    assert pred["image"].tolist() == ids
    assert pred["true"].tolist() == labels.scenes(ids)
    assert acc == pytest.approx(pred["correct"].mean())
    assert list(cm.index) == labels.classes == list(cm.columns)
    assert cm.to_numpy().sum() == 10 and np.trace(cm.to_numpy()) == pred["correct"].sum()
    assert recall["n"].tolist() == [labels.scenes(ids).count(c) for c in labels.classes]
    np.testing.assert_allclose(recall["recall"], recall["n_correct"] / recall["n"])
    from dissect.figures import confusion, save_figure

    out = save_figure(confusion(cm, normalize=True), tmp_path / "fig" / "cm.png")
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == 200


# -- real data ----------------------------------------------------------------------------------
@pytest.mark.osie
def test_real_efficientnet_head_finetuning(osie, osie_regions_root, tmp_path):
    from dissect.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", weights="imagenet")
    labels = load_scenes(osie_regions_root / "scenes.csv", dataset=osie)
    # 4 images of each of 5 classes: 20 images
    ids = [i for c in labels.classes[:5] for i in labels.table.query("scene == @c")["image"][:4]]
    sub = load_scenes_subset(labels, ids, tmp_path)
    r = train_scene_model(bb, osie, sub, ids, [], epochs=4, lr=1e-3, batch_size=10, seed=0,
                          cache_dir=tmp_path / "cache")  # fmt: skip
    assert r.model.tune_stage_names == ["head"]
    h = r.history
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    ft = r.model.trunk_backbone()
    assert ft.layers == bb.layers and [n for n, _ in ft.stages] == [n for n, _ in bb.stages]


def load_scenes_subset(labels, ids, tmp_path):
    """Scene labels of a subset, written and read back (classes = those present)."""
    t = labels.table.set_index("image").loc[ids].reset_index()
    t.to_csv(tmp_path / "sub.csv", index=False)
    return load_scenes(tmp_path / "sub.csv", min_images=1)


# -- the stage's knobs --------------------------------------------------------------------------
PIPELINE_PARAMS = Path(__file__).resolve().parents[1] / "pipelines" / "params.yaml"


def _stage_params(tmp_path, **overrides):
    from dissect.config import load_params

    return load_params(PIPELINE_PARAMS, {"work": str(tmp_path / "work"),
                                        "results": str(tmp_path / "results"), **overrides})


def test_stage_refuses_a_sp_readout_that_train_does_not_train(tmp_path):
    """scene.tuned_stages = 1 needs the readout k1; with train.ks = [0, 2] the stage stops before
    reading any data or training, and writes nothing."""
    from dissect.stages.scene import run_scene

    params = _stage_params(tmp_path, **{"train.ks": [0, 2], "scene.tuned_stages": 1})
    with pytest.raises(DataError, match=r"k1.*\[0, 2\]"):
        run_scene(params)
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_stage_passes_the_head_knobs(tmp_path, monkeypatch):
    """The scene head sizes, dropout, tuned stages, weight decay and monitor of params.yaml reach
    train_scene_model; the sp readout is k<tuned_stages>; a failing run leaves the committed
    scene tables as they were."""
    import dissect.models.readout
    import dissect.scene
    from dissect.stages import common
    from dissect.stages.scene import run_scene

    ds = ToyScenes(12)
    labels_csv = ds.write_labels(tmp_path / "scenes.csv")
    params = _stage_params(tmp_path, **{
        "train.ks": [0, 2], "train.val_fraction": 0.25, "scene.tuned_stages": 2,
        "scene.hidden": [24, 12], "scene.dropout": 0.25, "scene.weight_decay": 0.5,
        "scene.monitor": "loss", "scene.min_images": 1, "data.scenes": str(labels_csv),
        "data.max_images": None})
    ids = ds.ids
    monkeypatch.setattr(common, "inputs", lambda p: (ds, None))
    monkeypatch.setattr(common, "ids_of", lambda p, which: ids[:8] if which == "train" else ids[8:])
    monkeypatch.setattr(common, "backbone", lambda p: tiny_backbone())
    monkeypatch.setattr("dissect.data.scenes.load_scenes",
                        lambda path, min_images, dataset: load_scenes(path, min_images=min_images))
    seen = {}

    class FakeReadout(SimpleNamespace):  # what the registry's readout adapter wraps
        def eval(self):
            return self

    def fake_load_readout(path, backbone):
        seen["readout"] = Path(path)
        return FakeReadout(k=2, n_stages=3, backbone=SimpleNamespace(layers={})), {}

    class Stop(Exception):
        pass

    def fake_train(backbone, dataset, labels, fit_ids, val_ids, **kw):
        seen["train"] = kw
        raise Stop

    monkeypatch.setattr(dissect.models.readout, "load_readout", fake_load_readout)
    monkeypatch.setattr(dissect.scene, "train_scene_model", fake_train)
    committed = tmp_path / "results" / "tables" / "scene" / "scene_accuracy.md"
    committed.parent.mkdir(parents=True)
    committed.write_text("committed\n")
    with pytest.raises(Stop):
        run_scene(params)
    assert seen["readout"].parts[-2:] == ("k2", "model.pt")
    kw = seen["train"]
    assert kw["hidden"] == [24, 12] and kw["dropout"] == 0.25 and kw["tune_stages"] == 2
    assert kw["weight_decay"] == 0.5 and kw["monitor"] == "loss"
    assert committed.read_text() == "committed\n"  # written through common.replacing
    assert sorted(p.name for p in committed.parent.parent.iterdir()) == ["scene"]


def test_params_defaults_are_the_library_defaults():
    """The committed results were made with the library's head; params.yaml keeps it."""
    from dissect.config import load_params
    from dissect.scene import DEFAULT_DROPOUT, DEFAULT_HIDDEN

    sc = load_params(PIPELINE_PARAMS)["scene"]
    assert tuple(sc["hidden"]) == DEFAULT_HIDDEN and sc["dropout"] == DEFAULT_DROPOUT
    assert sc["tuned_stages"] == 1
