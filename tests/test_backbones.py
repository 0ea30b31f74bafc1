"""Backbones: torchvision-identical layouts, weights handling, stages, single-firing unit layers,
and the patched EfficientNet-Lite0 (equal to the package's forward; predicts a pelican)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

import dissect.backbones as B
from dissect.backbones import VGG16_LAYERS, Backbone, file_sha256, load_backbone
from dissect.capture import LayerCapture
from dissect.errors import DataError, WeightsError

BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def resnet_keys(convs_per_block: int, depths: list[int]) -> list[str]:
    """torchvision's ResNet state-dict keys, in order (conv/bn pairs, downsample, fc)."""
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in BN]
    for li, n in enumerate(depths, 1):
        for b in range(n):
            p = f"layer{li}.{b}"
            for c in range(1, convs_per_block + 1):
                keys += [f"{p}.conv{c}.weight"] + [f"{p}.bn{c}.{s}" for s in BN]
            if b == 0 and (li > 1 or convs_per_block == 3):
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in BN]
    return keys + ["fc.weight", "fc.bias"]


VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_KEYS = [f"features.{i}.{s}" for i in VGG_CONVS for s in ("weight", "bias")] + [
    f"classifier.{i}.{s}" for i in (0, 3, 6) for s in ("weight", "bias")
]


def fire_counts(bb: Backbone, x: torch.Tensor) -> dict[str, int]:
    counts = {name: 0 for name in bb.layers}
    hooks = [bb.module(name).register_forward_hook(
        lambda *a, name=name: counts.__setitem__(name, counts[name] + 1)) for name in bb.layers]
    with torch.no_grad():
        bb.model(x)
    for h in hooks:
        h.remove()
    return counts


def test_vgg16_layout(vgg):
    sd = vgg.model.state_dict()
    assert list(sd) == VGG_KEYS and len(sd) == 32
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["classifier.0.weight"].shape == (4096, 512 * 7 * 7)
    assert sd["classifier.6.weight"].shape == (1000, 4096)
    assert vgg.stage_names == VGG16_LAYERS and len(VGG16_LAYERS) == 13
    assert list(vgg.layers.values()) == [f"features.{i + 1}" for i in VGG_CONVS]
    assert all(not m.inplace for m in vgg.model.modules() if isinstance(m, nn.ReLU))
    assert isinstance(dict(vgg.stages)["conv2_1"][0], nn.MaxPool2d)
    assert not vgg.model.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vgg.trunk()(x), vgg.model.features[:30](x), rtol=0, atol=0)
        torch.testing.assert_close(vgg.trunk("conv3_1")(x), vgg.model.features[:12](x))
    assert fire_counts(vgg, x) == {name: 1 for name in vgg.layers}


def test_vgg16_conv5_3_is_14x14_at_224(vgg):
    acts = LayerCapture(vgg, ["conv5_3", "conv1_1"]).attribute(torch.randn(1, 3, 224, 224))
    assert acts["conv5_3"].shape == (1, 512, 14, 14)
    assert acts["conv1_1"].shape == (1, 64, 224, 224)
    assert (acts["conv5_3"] >= 0).all()  # post-ReLU


@pytest.mark.parametrize("name,convs,depths,out", [
    ("resnet18", 2, [2, 2, 2, 2], 512), ("resnet50", 3, [3, 4, 6, 3], 2048)])
def test_resnet_layout(name, convs, depths, out):
    bb = load_backbone(name, weights="random")
    sd = bb.model.state_dict()
    assert list(sd) == resnet_keys(convs, depths)
    assert len(sd) == {"resnet18": 122, "resnet50": 320}[name]
    assert sd["fc.weight"].shape == (1000, out)
    names = [f"layer{li}.{b}" for li, n in enumerate(depths, 1) for b in range(n)]
    assert list(bb.layers) == names and bb.stage_names == ["stem", *names]
    assert bb.last_layer == names[-1]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = bb.trunk()(x)
        logits = bb.model.fc(torch.flatten(bb.model.avgpool(feats), 1))
        torch.testing.assert_close(logits, bb.model(x), rtol=0, atol=0)
    assert fire_counts(bb, x) == {n: 1 for n in names}
    acts = LayerCapture(bb, ["layer3.1"]).attribute(x)
    assert acts["layer3.1"].shape == (2, 256 * (4 if convs == 3 else 1), 4, 4)
    assert (acts["layer3.1"] >= 0).all()


def test_random_weights_seeded_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = load_backbone("resnet18", weights="random", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = load_backbone("resnet18", weights="random", seed=0)
    c = load_backbone("resnet18", weights="random", seed=1)
    assert a.weights_id == b.weights_id != c.weights_id and len(a.weights_id) == 16
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_checkpoint_roundtrip_strict(tmp_path):
    src = load_backbone("resnet18", weights="random", seed=3)
    path = tmp_path / "r18.pth"
    torch.save(src.model.state_dict(), path)
    for weights in (None, "imagenet"):
        got = load_backbone("resnet18", weights=weights, checkpoint=path)
        assert got.weights_id == file_sha256(path)
        for k, v in src.model.state_dict().items():
            assert torch.equal(v, got.model.state_dict()[k]), k
    # older torchvision files lack the BatchNorm counters: accepted
    sd = {k: v for k, v in src.model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(sd, tmp_path / "old.pth")
    old = load_backbone("resnet18", weights=None, checkpoint=tmp_path / "old.pth")
    assert int(old.model.bn1.num_batches_tracked) == 0
    # anything else must match exactly
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(DataError, match="unexpected"):
        load_backbone("resnet18", weights=None, checkpoint=tmp_path / "extra.pth")
    torch.save({k: v for k, v in sd.items() if k != "fc.bias"}, tmp_path / "miss.pth")
    with pytest.raises(DataError, match="fc.bias"):
        load_backbone("resnet18", weights=None, checkpoint=tmp_path / "miss.pth")
    with pytest.raises(DataError, match="not_lite"):
        load_backbone("efficientnet_lite0", weights=None,
                      checkpoint=_write(tmp_path / "not_lite.pth", sd))


def _write(path, sd):
    torch.save(sd, path)
    return path


def test_hub_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    src = load_backbone("resnet18", weights="random", seed=5)
    ckpt = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(src.model.state_dict(), ckpt)
    got = load_backbone("resnet18")
    assert got.weights_id == file_sha256(ckpt)
    assert torch.equal(got.model.fc.weight, src.model.fc.weight)


def test_missing_weights_explain_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(enum_name):
        raise RuntimeError("no network")

    monkeypatch.setattr(B, "_torchvision_download", offline)
    for name, file in [("resnet50", "resnet50-0676ba61.pth"), ("vgg16", "vgg16-397923af.pth")]:
        with pytest.raises(WeightsError) as err:
            load_backbone(name)
        msg = str(err.value)
        assert f"https://download.pytorch.org/models/{file}" in msg
        assert str(tmp_path / "hub" / "checkpoints" / file) in msg
        assert "checkpoint=" in msg and "no network" in msg
        assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("resnet18", checkpoint=tmp_path / "nope.pth")


def test_bad_arguments():
    with pytest.raises(KeyError, match="alexnet"):
        load_backbone("alexnet")
    with pytest.raises(ValueError):
        load_backbone("resnet18", weights="places")
    with pytest.raises(ValueError):
        load_backbone("resnet18", weights=None)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="no trunk stage"):
        Backbone("x", model, [("a", model[0])], {"r": "1"}, "0")
    with pytest.raises(ValueError, match="depth order"):
        Backbone("x", model, [("a", model[:2]), ("b", model[2])], {"b": "2", "a": "1"}, "0")


def test_efficientnet_lite0_patched_equals_package(lite):
    ref = EfficientNet.from_name("efficientnet-lite0")  # the package's model, unpatched
    assert list(ref.state_dict()) == list(lite.model.state_dict())
    ref.load_state_dict(lite.model.state_dict())
    ref.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(lite.model(x), ref(x), rtol=0, atol=1e-6)
    assert lite.weights_id == file_sha256(B.efficientnet_lite0_checkpoint())


def test_efficientnet_lite0_layers(lite):
    assert list(lite.layers) == [f"block{i}" for i in range(16)] + ["head"]
    assert lite.stage_names == ["stem", *[f"block{i}" for i in range(16)], "head"]
    modules = [lite.module(n) for n in lite.layers]
    assert all(isinstance(m, nn.ReLU6) for m in modules)
    assert len({id(m) for m in modules}) == 17
    for block in lite.model._blocks:  # the depthwise act is not the shared expand act
        assert block._dw_act is not block._swish
    assert lite.model._head_act is not lite.model._stem_act is not lite.model._swish
    small = torch.randn(1, 3, 64, 64)
    assert fire_counts(lite, small) == {n: 1 for n in lite.layers}
    with torch.no_grad():
        torch.testing.assert_close(lite.trunk()(small), lite.model.extract_features(small),
                                   rtol=0, atol=0)
    acts = LayerCapture(lite).attribute(torch.randn(1, 3, 224, 224))
    shapes = {n: tuple(a.shape[1:]) for n, a in acts.items()}
    assert shapes["block0"] == (32, 112, 112)  # expand ratio 1: the stem's 32 channels
    assert shapes["block1"] == (96, 56, 56)  # 16 × 6 expanded, stride 2
    assert shapes["block15"] == (1152, 7, 7) and shapes["head"] == (1280, 7, 7)
    for a in acts.values():
        assert float(a.min()) >= 0 and float(a.max()) <= 6  # ReLU6 outputs


@pytest.mark.osie
def test_efficientnet_lite0_sees_the_pelican(lite, osie_root):
    from PIL import Image

    img = np.asarray(Image.open(osie_root / "data" / "stimuli" / "1200.jpg").convert("RGB"))
    with torch.no_grad():
        probs = lite.model(lite.preprocess(img)).softmax(dim=1)[0]
    top = int(probs.argmax())
    print(f"1200.jpg: top-1 class {top}, p = {float(probs[top]):.4f}")
    assert top == 144, f"top-1 {top} (p={float(probs[top]):.3f}), expected 144 (pelican)"
    assert float(probs[144]) > 0.5


def test_lite_backbone_pickles_and_deepcopies(lite):
    import copy
    import pickle

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = lite.model(x)
    for other in (pickle.loads(pickle.dumps(lite)), copy.deepcopy(lite)):
        assert other.stages[1][1] is other.model._blocks[0]  # stages still share the model
        with torch.no_grad():
            torch.testing.assert_close(other.model(x), want, rtol=0, atol=0)
