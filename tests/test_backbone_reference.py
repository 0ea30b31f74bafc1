"""The hand-written VGG-16 and ResNet-18/50 of `dissect.backbones` compute what torchvision's do.

torchvision cannot be imported here, so the reference is each architecture written from its
definition with plain ``torch.nn.functional`` primitives, reading its weights from a state dict by
torchvision's key names:

* VGG-16 (Simonyan & Zisserman 2015, configuration D): 13 3×3 convolutions (padding 1) each
  followed by ReLU, 2×2 max pooling after conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3;
  adaptive average pooling to 7×7; classifier Linear(25088, 4096)–ReLU–Dropout–Linear(4096,
  4096)–ReLU–Dropout–Linear(4096, 1000) (dropout is the identity in eval mode). torchvision
  numbers the feature modules consecutively (conv, relu, …, pool), so conv weights sit at
  ``features.{0, 2, 5, 7, 10, …}``.
* ResNet (He et al. 2016, torchvision's v1.5): 7×7/2 conv (padding 3), BN, ReLU, 3×3/2 max pool
  (padding 1); four stages of 64, 128, 256, 512 planes (stride 1, 2, 2, 2 in their first block);
  BasicBlock = 3×3 conv (stride s)–BN–ReLU–3×3 conv–BN, Bottleneck = 1×1–BN–ReLU–3×3 (stride
  s)–BN–ReLU–1×1 (4× planes)–BN; a first block whose stride is not 1 or whose channels change
  has the shortcut 1×1 conv (stride s)–BN; block output ReLU(residual + shortcut); global average
  pooling and Linear to 1000 classes. BN in eval mode uses the running statistics, eps 1e-5.

Every parameter and buffer is random (seeded), BatchNorm statistics included (torchvision's
initialisation would make every BN the identity and hide a swapped key). The same state dict
goes into the backbone (strictly) and into the reference; the unit layers the backbone exposes
(captured with `LayerCapture`, VGG's post-ReLU ``conv1_1 … conv5_3`` and ResNet's block outputs
``layer1.0 …``), its trunk output and its logits must match the reference, and the reference
must have used every key of the state dict.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dissect.backbones import load_backbone
from dissect.capture import LayerCapture

VGG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


class _Tracked(dict):
    """A state dict that records which keys were read."""

    def __init__(self, sd: dict[str, Tensor]):
        super().__init__(sd)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.used.add(key)
        return super().__getitem__(key)


def vgg16_reference(sd: dict[str, Tensor], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Post-ReLU maps ``conv{block}_{i}`` and logits of VGG-16 (config D)."""
    maps: dict[str, Tensor] = {}
    index, block, conv = 0, 1, 0
    for v in VGG_D:
        if v == "M":
            x = F.max_pool2d(x, kernel_size=2, stride=2)
            index, block, conv = index + 1, block + 1, 0
        else:
            w, b = sd[f"features.{index}.weight"], sd[f"features.{index}.bias"]
            assert w.shape[0] == v
            x = F.relu(F.conv2d(x, w, b, padding=1))
            conv += 1
            maps[f"conv{block}_{conv}"] = x
            index += 2  # the conv and its ReLU
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return maps, F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def _bn(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5)


def resnet_reference(sd: dict[str, Tensor], x: Tensor, block: str, depths: list[int]
                     ) -> tuple[dict[str, Tensor], Tensor]:
    """Block outputs ``layer{stage}.{block}`` and logits of a torchvision ResNet."""
    expansion = 4 if block == "bottleneck" else 1
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    maps: dict[str, Tensor] = {}
    channels = 64
    for stage, (planes, n) in enumerate(zip([64, 128, 256, 512], depths, strict=True), 1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            stride = 2 if (b == 0 and stage > 1) else 1
            if block == "basic":
                out = F.relu(_bn(sd, f"{p}.bn1",
                                 F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)))
                out = _bn(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1))
            else:
                out = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
                out = F.relu(_bn(sd, f"{p}.bn2",
                                 F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)))
                out = _bn(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            if b == 0 and (stride != 1 or channels != planes * expansion):
                shortcut = _bn(sd, f"{p}.downsample.1",
                               F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
            else:
                shortcut = x
            x = F.relu(out + shortcut)
            maps[p] = x
            channels = planes * expansion
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return maps, F.linear(x, sd["fc.weight"], sd["fc.bias"])


def random_state_dict(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """Random values for every parameter and buffer, by module type: He-scaled conv and linear
    weights, biases ~ N(0, 0.1²), BN γ and running variance ~ U(0.5, 1.5), β and running mean
    ~ N(0, 0.1²) (BN counters kept). Weights of over 10M values (VGG's first two classifier
    layers) keep the model's own seeded N(0, 0.01²) initialisation: drawing 120M new values
    would cost seconds and test nothing more."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> Tensor:
        return torch.randn(shape, generator=g) * std

    def uniform(shape: torch.Size) -> Tensor:
        return 0.5 + torch.rand(shape, generator=g)

    sd: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            gain = 2.0 if isinstance(m, nn.Conv2d) else 1.0
            if m.weight.numel() > 10_000_000:
                assert float(m.weight.detach()[:8].std()) > 0  # seeded random, not a constant
                sd[f"{name}.weight"] = m.weight.detach().clone()
            else:
                sd[f"{name}.weight"] = normal(m.weight.shape, math.sqrt(gain / fan_in))
            if m.bias is not None:
                sd[f"{name}.bias"] = normal(m.bias.shape, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            sd[f"{name}.weight"] = uniform(m.weight.shape)
            sd[f"{name}.bias"] = normal(m.bias.shape, 0.1)
            sd[f"{name}.running_mean"] = normal(m.running_mean.shape, 0.1)
            sd[f"{name}.running_var"] = uniform(m.running_var.shape)
            sd[f"{name}.num_batches_tracked"] = m.num_batches_tracked.clone()
    assert set(sd) == set(model.state_dict())  # the architecture has nothing else
    return sd


def _check(bb, sd: _Tracked, ref_maps: dict[str, Tensor], ref_logits: Tensor, x: Tensor) -> None:
    unused = {k for k in sd if k not in sd.used and not k.endswith("num_batches_tracked")}
    assert not unused, f"state-dict keys the reference architecture does not use: {unused}"
    assert list(bb.layers) == list(ref_maps)  # the same unit layers, in depth order
    acts = LayerCapture(bb).attribute(x)
    for name, want in ref_maps.items():
        scale = float(want.abs().max())
        assert scale > 0 and float((want > 0).float().mean()) > 0.05, name  # not a dead layer
        torch.testing.assert_close(acts[name], want, rtol=1e-5, atol=1e-5 * scale, msg=name)
    with torch.no_grad():
        logits = bb.model(x)
        last = bb.trunk()(x)
    scale = float(ref_logits.abs().max())
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(last, ref_maps[bb.last_layer], rtol=1e-5,
                               atol=1e-5 * float(last.abs().max()))
    assert float(ref_logits.std()) > 0


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_vgg16_equals_functional_reference():
    bb = load_backbone("vgg16", weights="random")
    sd = random_state_dict(bb.model, seed=1)
    bb.model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 72, 88)  # non-square, not a multiple of 32: 2×2 before the avgpool
    ref = _Tracked(sd)
    with torch.no_grad():
        maps, logits = vgg16_reference(ref, x)
    assert len(maps) == 13 and maps["conv5_3"].shape == (2, 512, 4, 5)
    _check(bb, ref, maps, logits, x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_equals_functional_reference(name, tmp_path):
    block, depths = RESNETS[name]
    bb = load_backbone(name, weights="random")
    sd = random_state_dict(bb.model, seed=2)
    if name == "resnet18":  # through a checkpoint file, as a torchvision download would load
        torch.save(sd, tmp_path / "r18.pth")
        bb = load_backbone(name, weights=None, checkpoint=tmp_path / "r18.pth")
    else:
        bb.model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 72, 88)  # odd sizes on the way down: 36×44, 18×22, 9×11, 5×6, 3×3
    ref = _Tracked(sd)
    with torch.no_grad():
        maps, logits = resnet_reference(ref, x, block, depths)
    assert len(maps) == sum(depths) and maps[f"layer4.{depths[3] - 1}"].shape[-2:] == (3, 3)
    _check(bb, ref, maps, logits, x)


def test_reference_catches_a_swapped_layout():
    """The check has teeth: loading the same weights into the wrong slots changes the output."""
    block, depths = RESNETS["resnet18"]
    bb = load_backbone("resnet18", weights="random")
    sd = random_state_dict(bb.model, seed=3)
    swapped = dict(sd)
    swapped["layer1.0.bn1.running_var"], swapped["layer1.0.bn2.running_var"] = (
        sd["layer1.0.bn2.running_var"], sd["layer1.0.bn1.running_var"])
    bb.model.load_state_dict(swapped, strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        maps, _ = resnet_reference(sd, x, block, depths)
    got = LayerCapture(bb, ["layer1.0"]).attribute(x)["layer1.0"]
    assert not torch.allclose(got, maps["layer1.0"], rtol=1e-3, atol=1e-3)
