"""ML-Net (Cornia, Baraldi, Serra & Cucchiara, "A Deep Multi-Level Network for Saliency
Prediction", ICPR 2016; reference code: github.com/marcellacornia/mlnet, Keras 1 / Theano).

Architecture (reference ``model.py``), for VGG-16::

    conv3_pool  = pool3 output                         256 ch, stride 8
    conv4_pool  = SamePool2x2(conv4_3 after ReLU)      512 ch, stride 8 (2×2 max, stride 1)
    conv5_3     = conv5 block (after ReLU) run on conv4_pool   512 ch, stride 8
    f = Dropout(0.5)(concat(conv3_pool, conv4_pool, conv5_3))        1280 ch
    e = ReLU(Conv3×3(f) → 64)                          the *encoding* maps (dissected later)
    m = ReLU(Conv1×1(e) → 1)
    out = ReLU(m · up(1 + W))                          learned prior, W = 0 at initialisation

with a 480×640 input (images letterboxed: aspect kept, zero = black padding, :func:`letterbox`)
and a 60×80 output (stride 8). The prior ``W`` is a coarse grid of ``(h // 10, w // 10)`` cells
of the output map (6×8 for 60×80; the reference's ``EltWiseProduct`` with ``downsampling_factor
= 10``), bilinearly upsampled (``F.interpolate(mode="bilinear", align_corners=False)``) to the
map's size and multiplied with it; parameterised as ``1 + W`` with ``W`` initialised to zero, so
the prior is the identity at the start.

**conv5 at stride 8 with torchvision's VGG-16.** In the reference, pool4 is the 2×2 *stride-1*
"same" max-pool, so conv5 runs at stride 8 on the pooled conv4_3 maps. torchvision's module
layout has a stride-2 pool4 at ``features.23``. Here the network runs ``features.0 … 16``
(through pool3), ``features.17 … 22`` (conv4_1 … conv4_3 + ReLU), then :class:`SamePool2x2`
(the module ``conv4_pool`` of :class:`MLNet`) *in place of* ``features.23``, then
``features.24 … 29`` (conv5_1 … conv5_3 + ReLU) on the stride-1-pooled conv4 maps, exactly the
reference's data flow; ``features.23`` and the classifier never run (the classifier is not
even copied: :class:`MLNet` keeps only ``features``). The three ImageNet conv5 layers thus see
maps at twice the resolution they were trained on, as in the reference.

**The 'same' pool.** ``SamePool2x2`` pads the right and bottom edges by one with ``-inf`` and
takes ``MaxPool2d(2, stride=1)``: ``out[i, j] = max(x[i:i+2, j:j+2])`` with out-of-range
positions ignored (TensorFlow's / Keras' ``padding="same"``). (The reference ran on Keras 1's
Theano backend, which pads one cell on *both* sides and keeps the first ``n`` outputs, i.e. the
window ``x[i-1:i+1]``: the same map shifted by one cell. The TensorFlow convention is used
here.)

**EfficientNet-Lite0 analogue** (the default trunk). Three depths of the trunk, one per
resolution, the last block of each stride, all taken on the main path of the network:

* ``block4_out`` — the output of ``_blocks.4`` (40 ch, stride 8; the last stride-8 block),
* ``block10_out`` — the output of ``_blocks.10`` (112 ch, stride 16; the last stride-16 block),
* ``block15_out`` — the output of ``_blocks.15`` (320 ch, stride 32; the last block: the trunk's
  last feature map before the classifier's 1×1 ``_conv_head``, as conv5_3 is VGG's last
  convolution before its classifier).

(The block outputs are the linear projections + residuals that the next block reads; the
dissection's Lite0 layers ``block4`` / ``block10`` / ``block15`` are the depthwise ReLU6 *inside*
those blocks, hence the ``_out`` suffix.) The stride-16 and stride-32 maps are bilinearly upsampled
(``align_corners=False``) to the stride-8 grid of ``block4_out`` and concatenated (472 ch),
followed by the same dropout, encoding network and prior. *Why not the 1280-channel head*: the
3×3 encoding convolution's cost grows with the concatenated channels, and with the head
(1432 ch) one training epoch on 450 images took ~100 s on two CPU cores against ~35 s with
``block15_out``; the head is a per-position 1×1 expansion of ``block15_out`` (plus BatchNorm and
ReLU6), the encoding network's own 3×3 convolution and ReLU play that role here.

Lite0 pads "same" dynamically, so a side of ``n`` pixels gives ``ceil(n / 8)`` cells; VGG gives
``n // 8``. Input sizes are multiples of 8 (checked), where both agree: 480×640 → 60×80.

**Preprocessing.** The reference subtracts Caffe's BGR means from 0–255 pixels; here the
backbone's own normalisation (``x / 255``, ImageNet mean / std, RGB: what torchvision's and
Lite0's weights expect) is applied to the letterboxed canvas at its native size
(``Preprocess(size=None)``). The padding is black pixels, as in the reference.

**Loss** (reference ``loss``): ``mean((ŷ / max ŷ − y)² / (α − y)) + λ‖W‖²`` with ``α = 1.1``,
``max ŷ`` per image over its output map, ``y`` the ground-truth density divided by its own
maximum (per image), ``λ = 1 / (number of prior cells)`` (the reference's ``l2(1 / (rows ·
cols))`` regulariser on ``W``). ``max ŷ`` is clamped at ``1e-12``: an all-zero prediction (all
ReLUs off) gives the finite loss ``mean(y² / (α − y))`` instead of 0 / 0.

**Training** (reference ``main.py``): SGD, lr ``1e-3``, momentum 0.9, Nesterov, and Keras'
learning-rate decay ``lr_t = lr / (1 + 5e-4 · t)`` per update (:func:`mlnet_optimizer`); the
whole network is trained (the trunk too), unless :meth:`MLNet.freeze_trunk`. Like the He et
al. readout (:mod:`dissect.models.readout`), the trunk stays in eval mode while training
(BatchNorm uses its pretrained statistics; VGG has none); the dropout on the concatenation is
the one train-mode module.

**Output to image** (:func:`unletterbox`): the output map covers the 480×640 canvas exactly
(8 canvas pixels per cell); each pixel of the original image is mapped to its position on the
canvas and the map is sampled there bilinearly (``F.grid_sample(align_corners=False,
padding_mode="border")``): cropping the padding and the bilinear upsampling to the image's size
in one interpolation (for an image that fills the canvas this is exactly
``F.interpolate(mode="bilinear", align_corners=False)``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from dissect.errors import DataError
from dissect.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = [
    "ALPHA",
    "CHECKPOINT_FORMAT",
    "INPUT_SIZE",
    "LAYOUTS",
    "LearnedPrior",
    "Letterbox",
    "MLNet",
    "SamePool2x2",
    "density_target",
    "letterbox",
    "letterbox_box",
    "load_mlnet",
    "mlnet_loss",
    "mlnet_optimizer",
    "save_mlnet",
    "state_id",
    "train_mlnet",
    "train_step",
    "unletterbox",
]

#: The reference's input size (rows, cols); the output is ``INPUT_SIZE // 8`` = 60×80.
INPUT_SIZE: tuple[int, int] = (480, 640)
#: Total stride of the output map.
STRIDE = 8
#: The prior grid has ``(h // PRIOR_FACTOR, w // PRIOR_FACTOR)`` cells of an ``h × w`` map.
PRIOR_FACTOR = 10
#: The loss's α (``1 − y + 0.1`` in the reference).
ALPHA = 1.1
#: ``max ŷ`` is clamped at this value in the loss (an all-zero prediction stays finite).
MAX_EPS = 1e-12
CHECKPOINT_FORMAT = "dissect.mlnet/1"
ENCODING_CHANNELS = 64


# ---------------------------------------------------------------------- building blocks
class SamePool2x2(nn.Module):
    """2×2 max-pool with stride 1 and "same" padding: ``-inf`` on the right and bottom edge,
    so ``out[i, j] = max(x[i:i+2, j:j+2])`` (positions past the edge ignored), same size."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)


class LearnedPrior(nn.Module):
    """Multiplies a map by ``up(1 + W)``: ``W`` a ``(gh, gw)`` grid (zeros at the start),
    bilinearly upsampled to the map's size (``align_corners=False``). Computed as
    ``1 + up(W)`` (the same, as bilinear weights sum to 1), so that ``W = 0`` is exactly the
    identity in floating point too."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        gh, gw = (int(g) for g in grid)
        if gh < 1 or gw < 1:
            raise ValueError(f"prior grid must have at least one cell a side, got {grid}")
        self.weight = nn.Parameter(torch.zeros(gh, gw))

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    def upsampled(self, size: Sequence[int]) -> Tensor:
        """``up(1 + W)`` at ``size = (h, w)``, shape ``(h, w)``."""
        h, w = (int(s) for s in size)
        # 1 + up(W) == up(1 + W) (bilinear weights sum to 1), and exactly 1 where W = 0
        up = F.interpolate(self.weight[None, None], size=(h, w), mode="bilinear",
                           align_corners=False)[0, 0]
        return 1 + up

    def forward(self, x: Tensor) -> Tensor:
        return x * self.upsampled(x.shape[-2:])


# ---------------------------------------------------------------------- layouts
#: Per trunk: the module paths (relative to :class:`MLNet`) run in order, cut into three
#: segments; each segment's last module gives one source map (name → channels).
def _vgg16_segments() -> list[tuple[str, list[str], int]]:
    return [
        ("conv3_pool", [f"trunk.{i}" for i in range(0, 17)], 256),
        ("conv4_pool", [f"trunk.{i}" for i in range(17, 23)] + ["conv4_pool"], 512),
        ("conv5_3", [f"trunk.{i}" for i in range(24, 30)], 512),
    ]


def _lite0_segments() -> list[tuple[str, list[str], int]]:
    stem = ["trunk._conv_stem", "trunk._bn0", "trunk._stem_act"]
    return [
        ("block4_out", stem + [f"trunk._blocks.{i}" for i in range(0, 5)], 40),
        ("block10_out", [f"trunk._blocks.{i}" for i in range(5, 11)], 112),
        ("block15_out", [f"trunk._blocks.{i}" for i in range(11, 16)], 320),
    ]


LAYOUTS = {"vgg16": _vgg16_segments, "efficientnet_lite0": _lite0_segments}


def _check_vgg_features(features: nn.Module) -> None:
    ok = (
        isinstance(features, nn.Sequential) and len(features) == 31
        and all(isinstance(features[i], nn.MaxPool2d) for i in (4, 9, 16, 23, 30))
        and isinstance(features[22], nn.ReLU) and isinstance(features[29], nn.ReLU)
        and isinstance(features[24], nn.Conv2d) and features[24].in_channels == 512
    )
    if not ok:
        raise DataError("vgg16", "backbone.model.features is not torchvision's VGG-16 layout "
                                 "(31 modules, pools at 4, 9, 16, 23, 30)")


# ---------------------------------------------------------------------- the network
class MLNet(nn.Module):
    """ML-Net on a VGG-16 or EfficientNet-Lite0 trunk (see the module docstring).

    Build with :meth:`from_backbone`. Submodules: ``trunk`` (a copy of the backbone's network:
    VGG's ``features`` only, Lite0's whole model), ``conv4_pool`` (VGG only), ``dropout``,
    ``encode`` (3×3 conv → 64, ReLU), ``readout`` (1×1 conv → 1, ReLU), ``prior``
    (:class:`LearnedPrior`), ``out_act`` (final ReLU). :attr:`layers` maps the three source
    layers and ``encoding`` to their module paths in this module (hookable; each runs once per
    forward).

    ``forward(x)``: normalised images ``(B, 3, H, W)`` → non-negative maps ``(B, H/8, W/8)``.
    """

    def __init__(self, trunk: nn.Module, layout: str, *, input_size: Sequence[int] = INPUT_SIZE,
                 backbone_name: str | None = None, weights_id: str = "unknown",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if layout not in LAYOUTS:
            raise DataError(layout, f"ML-Net has layouts for {sorted(LAYOUTS)} only")
        size = tuple(int(s) for s in input_size)
        if len(size) != 2 or min(size) < STRIDE * PRIOR_FACTOR or any(s % STRIDE for s in size):
            raise ValueError(f"input_size must be (rows, cols), multiples of {STRIDE} and at "
                             f"least {STRIDE * PRIOR_FACTOR}, got {tuple(input_size)}")
        self.layout = layout
        self.backbone_name = backbone_name or layout
        self.weights_id = str(weights_id)
        self.input_size: tuple[int, int] = size  # type: ignore[assignment]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.trunk = trunk
        if layout == "vgg16":
            _check_vgg_features(trunk)
            self.conv4_pool = SamePool2x2()
        self._segments = LAYOUTS[layout]()
        self.channels = sum(c for _, _, c in self._segments)
        self.dropout = nn.Dropout(0.5)
        self.encode = nn.Sequential(
            nn.Conv2d(self.channels, ENCODING_CHANNELS, 3, padding=1), nn.ReLU())
        self.readout = nn.Sequential(nn.Conv2d(ENCODING_CHANNELS, 1, 1), nn.ReLU())
        h, w = self.output_size
        self.prior = LearnedPrior((h // PRIOR_FACTOR, w // PRIOR_FACTOR))
        self.out_act = nn.ReLU()
        for conv in (self.encode[0], self.readout[0]):  # Keras 1 glorot_normal, zero bias
            nn.init.xavier_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.train(self.training)

    @classmethod
    def from_backbone(cls, backbone: Any, *, input_size: Sequence[int] = INPUT_SIZE,
                      seed: int = 0) -> MLNet:
        """ML-Net on a dissect :class:`~dissect.backbones.Backbone` (``vgg16`` or
        ``efficientnet_lite0``, chosen by ``backbone.name``). The trunk is copied (the
        backbone is never modified by training); the new layers are initialised under
        ``torch.manual_seed(seed)`` (global RNG state restored afterwards)."""
        name = str(getattr(backbone, "name", ""))
        if name not in LAYOUTS:
            raise DataError(name or type(backbone).__name__,
                            f"ML-Net has layouts for the backbones {sorted(LAYOUTS)} only")
        source = backbone.model.features if name == "vgg16" else backbone.model
        trunk = copy.deepcopy(source)
        pre = getattr(backbone, "preprocess", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = cls(trunk, name, input_size=input_size, backbone_name=name,
                      weights_id=str(getattr(backbone, "weights_id", "unknown")),
                      mean=getattr(pre, "mean", IMAGENET_MEAN),
                      std=getattr(pre, "std", IMAGENET_STD))
        param = next(backbone.model.parameters(), None)
        return net.to(param.device) if param is not None else net

    # ------------------------------------------------------------ structure
    @property
    def output_size(self) -> tuple[int, int]:
        """The output map's ``(h, w)`` for :attr:`input_size`."""
        return self.map_size(self.input_size)

    def map_size(self, size: Sequence[int]) -> tuple[int, int]:
        """Output ``(h, w)`` for an input of ``size = (H, W)`` (VGG: ``n // 8``; Lite0's
        dynamic "same" padding: ``ceil(n / 8)``)."""
        h, w = (int(s) for s in size)
        if self.layout == "vgg16":
            return h // STRIDE, w // STRIDE
        return -(-h // STRIDE), -(-w // STRIDE)

    @property
    def source_layers(self) -> list[str]:
        """Names of the three concatenated trunk layers, shallow to deep."""
        return [n for n, _, _ in self._segments]

    @property
    def layers(self) -> dict[str, str]:
        """Hookable layers → module paths in this module: the three source layers (their
        output is what is concatenated) and ``encoding`` (the ReLU of the 3×3 conv: the 64
        encoding maps)."""
        out = {name: paths[-1] for name, paths, _ in self._segments}
        out["encoding"] = "encode.1"
        return out

    @property
    def preprocess(self) -> Preprocess:
        """Normalisation of letterboxed canvases at their own size (no resize)."""
        return Preprocess(None, mean=self.mean, std=self.std)  # type: ignore[arg-type]

    def freeze_trunk(self, frozen: bool = True) -> MLNet:
        """Stop (or restart, ``frozen=False``) training the trunk's weights."""
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)
        return self

    def train(self, mode: bool = True) -> MLNet:
        """Set the head's mode; the trunk stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.trunk.eval()
        return self

    # ------------------------------------------------------------ forward
    def sources(self, x: Tensor) -> list[Tensor]:
        """The three source maps at their own resolutions (VGG: all at stride 8)."""
        out = []
        for _, paths, _ in self._segments:
            for path in paths:
                x = self.get_submodule(path)(x)
            out.append(x)
        return out

    def combine(self, maps: Sequence[Tensor]) -> Tensor:
        """The three :meth:`sources` brought to the first one's grid (bilinear,
        ``align_corners=False``) and concatenated → ``(B, channels, h, w)``."""
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else
                F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        return torch.cat(maps, dim=1)

    def features(self, x: Tensor) -> Tensor:
        """The concatenation ``(B, channels, h, w)`` on the stride-8 grid (1280 ch for VGG)."""
        return self.combine(self.sources(x))

    def head(self, features: Tensor) -> Tensor:
        """Dropout, encoding network, prior and final ReLU on :meth:`features` → ``(B, h, w)``."""
        m = self.readout(self.encode(self.dropout(features)))
        return self.out_act(self.prior(m))[:, 0]

    def encoding(self, x: Tensor) -> Tensor:
        """The 64 encoding maps ``(B, 64, h, w)`` (after the 3×3 conv's ReLU)."""
        return self.encode(self.dropout(self.features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def prior_map(self, size: Sequence[int] | None = None) -> Tensor:
        """The learned prior ``up(1 + W)`` at ``size`` (default :attr:`output_size`)."""
        return self.prior.upsampled(self.output_size if size is None else size)

    def prepare(self, image: np.ndarray) -> tuple[Tensor, Letterbox]:
        """One ``(H, W, 3)`` uint8 image → the normalised letterboxed input ``(1, 3, rows,
        cols)`` of :attr:`input_size` and its :class:`Letterbox`. The content is
        :class:`~dissect.preprocess.Preprocess` at the content box's size (``x / 255``,
        antialiased bilinear resize, mean / std) and the padding is black (0 before the
        normalisation, the reference's zero padding). An image with the canvas's aspect fills
        it: the input is then exactly ``Preprocess(size=input_size)`` of the image, what the
        activation cache feeds (:meth:`as_backbone`)."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DataError("image", f"ML-Net needs an (H, W, 3) uint8 image, got "
                                     f"{arr.dtype} {arr.shape}")
        box = letterbox_box(arr.shape[:2], self.input_size)
        content = Preprocess((box.height, box.width), self.mean, self.std)(arr)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = ((0 - mean) / std).expand(1, 3, *self.input_size).clone()
        x[:, :, box.top:box.top + box.height, box.left:box.left + box.width] = content
        return x, box

    def as_backbone(self, layers: Sequence[str] = ("encoding",)) -> Any:
        """This network as a dissect :class:`~dissect.backbones.Backbone` (one stage, the whole
        network; ``layers`` of :attr:`layers`) fed ``Preprocess(size=input_size)``: the
        activation cache (:mod:`dissect.cache`) and the pop-out unit scoring
        (:func:`dissect.popout_scoring.inner_unit_nmm`) read its units through it. Its
        ``weights_id`` hashes this network's state (the trained head included). Only images of
        the canvas's aspect fill the canvas (then the input equals :meth:`prepare`'s and the
        maps cover the image); the callers check that."""
        from dissect.backbones import Backbone

        unknown = [n for n in layers if n not in self.layers]
        if unknown:
            raise DataError("ML-Net", f"no layer(s) {unknown}; its layers: {list(self.layers)}")
        return Backbone(f"mlnet_{self.layout}", self, [("mlnet", self)],
                        {n: self.layers[n] for n in layers}, state_id(self),
                        Preprocess(self.input_size, self.mean, self.std))


def state_id(net: nn.Module) -> str:
    """A short sha256 of a network's state dict (names, shapes, dtypes and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return "mlnet-" + h.hexdigest()[:16]


# ---------------------------------------------------------------------- letterboxing
@dataclass(frozen=True)
class Letterbox:
    """Where an image went on a letterbox canvas: the image's ``(H, W)``, the canvas's
    ``(rows, cols)`` and the content box (``top``, ``left``, ``height``, ``width``) in canvas
    pixels."""

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    top: int
    left: int
    height: int
    width: int


def letterbox(image: np.ndarray, size: Sequence[int] = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` into a ``size = (rows, cols)`` canvas keeping its aspect, centred, padded
    with zeros (the reference's ``padding``: the side that limits is filled, the other is
    ``(n · limit) // N`` pixels, offset ``(canvas − n) // 2``).

    ``image``: ``(H, W, 3)`` uint8 (canvas uint8, black padding) or a 2-D map (canvas float64,
    zero padding, e.g. a ground-truth density). Resized with ``F.interpolate(mode="bilinear",
    antialias=True, align_corners=False)`` (the package convention); uint8 rounds and clips."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or arr.size == 0:
        raise DataError("image", f"letterbox needs an (H, W, 3) image or an (H, W) map, got "
                                 f"shape {arr.shape}")
    if arr.ndim == 3 and arr.dtype != np.uint8:
        raise DataError("image", f"letterbox needs a uint8 RGB image, got {arr.dtype}")
    if arr.ndim == 2 and not np.all(np.isfinite(arr)):
        raise DataError("map", "letterbox got a map with NaN / inf values")
    box = letterbox_box(arr.shape[:2], size)
    rows, cols = box.canvas_size
    h, w = box.image_size
    nh, nw, top, left = box.height, box.width, box.top, box.left
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64)
    t = t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None]
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False)
    content = t[0].numpy() if arr.ndim == 3 else t[0, 0].numpy()
    if arr.ndim == 3:
        canvas = np.zeros((rows, cols, 3), dtype=np.uint8)
        canvas[top:top + nh, left:left + nw] = np.clip(
            np.rint(content.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    else:
        canvas = np.zeros((rows, cols), dtype=np.float64)
        canvas[top:top + nh, left:left + nw] = content
    return canvas, box


def letterbox_box(image_size: Sequence[int], size: Sequence[int] = INPUT_SIZE) -> Letterbox:
    """Where an ``image_size = (H, W)`` image goes on a ``size = (rows, cols)`` canvas (the
    reference's ``padding``): the side that limits is filled, the other is ``(n · limit) // N``
    pixels, centred at offset ``(canvas − n) // 2``."""
    rows, cols = (int(s) for s in size)
    h, w = (int(s) for s in image_size)
    if min(rows, cols, h, w) < 1:
        raise DataError("image", f"letterbox of a {h}×{w} image on a {rows}×{cols} canvas")
    if h * cols > w * rows:  # taller than the canvas: rows limit
        nh, nw = rows, max(1, min(cols, (w * rows) // h))
    else:
        nh, nw = max(1, min(rows, (h * cols) // w)), cols
    return Letterbox((h, w), (rows, cols), (rows - nh) // 2, (cols - nw) // 2, nh, nw)


def density_target(density: np.ndarray, net: MLNet) -> NDArray[np.float64]:
    """A ground-truth density ``(H, W)`` of an image → ML-Net's target on its output grid:
    letterboxed into :attr:`MLNet.input_size` (:func:`letterbox`, zero padding) and averaged
    over each output cell's ``8 × 8`` canvas pixels (the cells tile the canvas exactly). The
    loss scales it to ``[0, 1]`` itself. A map that is not 2-D, not finite, negative or all zero
    → :class:`DataError`."""
    d = np.asarray(density, dtype=np.float64)
    if d.ndim != 2:
        raise DataError("ground truth", f"density must be an (H, W) map, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or (d < 0).any():
        raise DataError("ground truth", "density has NaN / inf or negative values")
    if not d.max() > 0:
        raise DataError("ground truth", "density is all zero (an image without fixations?)")
    canvas, _ = letterbox(d, net.input_size)
    h, w = net.output_size
    t = torch.from_numpy(canvas)[None, None]
    if canvas.shape != (h * STRIDE, w * STRIDE):  # Lite0's ceil: pad the last cells with zeros
        t = F.pad(t, (0, w * STRIDE - canvas.shape[1], 0, h * STRIDE - canvas.shape[0]))
    return F.avg_pool2d(t, STRIDE)[0, 0].numpy()


def unletterbox(saliency: Tensor | np.ndarray, box: Letterbox) -> NDArray[np.float64]:
    """Map an output map ``(h, w)`` covering the whole canvas back to the image: each image
    pixel centre is placed on the canvas (``top + (i + ½) · height / H``) and the map is
    sampled there bilinearly (``grid_sample``, ``align_corners=False``, border padding) →
    ``(H, W)`` float64."""
    m = torch.as_tensor(saliency).detach().to("cpu", torch.float64)
    if m.ndim != 2:
        raise DataError("saliency", f"unletterbox needs an (h, w) map, got shape "
                                    f"{tuple(m.shape)}")
    H, W = box.image_size
    rows, cols = box.canvas_size
    ys = box.top + (torch.arange(H, dtype=torch.float64) + 0.5) * (box.height / H)
    xs = box.left + (torch.arange(W, dtype=torch.float64) + 0.5) * (box.width / W)
    gy = (2 * ys / rows - 1)[:, None].expand(H, W)
    gx = (2 * xs / cols - 1)[None, :].expand(H, W)
    grid = torch.stack([gx, gy], dim=-1)[None]
    out = F.grid_sample(m[None, None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, 0].numpy()


# ---------------------------------------------------------------------- loss and training
def _check_target(target: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(target.shape) != shape:
        raise DataError("ground truth", f"map has shape {tuple(target.shape)}, expected "
                                        f"{shape} (batch, rows, cols of the output map)")
    n_bad = int((~torch.isfinite(target)).sum())
    if n_bad:
        raise DataError("ground truth", f"has {n_bad} NaN / inf value(s)")
    if bool((target < 0).any()):
        raise DataError("ground truth", "has negative values; a density is ≥ 0")
    zero = [i for i, v in enumerate(target.flatten(1).amax(dim=1).tolist()) if v <= 0]
    if zero:
        raise DataError("ground truth", f"map(s) of image(s) {zero} are all zero: nothing to "
                                        "scale to [0, 1]")


def mlnet_loss(pred: Tensor, target: Tensor | np.ndarray, prior_weights: Tensor | None,
               alpha: float = ALPHA) -> Tensor:
    """ML-Net's loss: ``mean((ŷ / max ŷ − y)² / (α − y)) + λ‖W‖²``, ``λ = 1 / W.numel()``.

    ``pred``: ``(B, h, w)`` non-negative maps; ``max ŷ`` is each image's maximum (clamped at
    ``1e-12``). ``target``: ``(B, h, w)`` ground-truth densities (≥ 0, not all zero), each
    divided by its own maximum. The mean runs over all images and pixels. ``prior_weights``:
    the prior's ``W`` (None: no regulariser). Bad input → :class:`DataError` naming it."""
    if not isinstance(pred, Tensor) or pred.ndim != 3:
        raise DataError("prediction", f"must be a (batch, rows, cols) tensor, got "
                                      f"{getattr(pred, 'shape', type(pred).__name__)}")
    if not alpha > 1:
        raise ValueError(f"alpha must be > 1 (y reaches 1), got {alpha}")
    n_nan = int(torch.isnan(pred).sum())
    if n_nan:
        raise DataError("prediction", f"has {n_nan} NaN value(s)")
    y = torch.as_tensor(target).to(pred.device, pred.dtype)
    _check_target(y, tuple(pred.shape))
    y = y / y.amax(dim=(1, 2), keepdim=True)
    peak = pred.amax(dim=(1, 2), keepdim=True).clamp_min(MAX_EPS)
    loss = ((pred / peak - y) ** 2 / (alpha - y)).mean()
    if prior_weights is not None:
        loss = loss + (prior_weights ** 2).sum() / prior_weights.numel()
    return loss


def mlnet_optimizer(model: MLNet, lr: float = 1e-3, momentum: float = 0.9, decay: float = 5e-4,
                    kind: str = "sgd",
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The reference's optimiser: SGD with Nesterov momentum on the trainable parameters, and
    Keras 1's learning-rate decay ``lr / (1 + decay · t)`` (``t`` = updates so far; step the
    scheduler once per update, as :func:`train_step` does when given it). ``kind="adam"``:
    Adam (betas 0.9, 0.999; ``momentum`` unused) under the same decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum,
                                                     nesterov=True)
    elif kind == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + decay * t))
    return opt, sched


def train_step(model: MLNet, batch_x: Tensor, batch_y: Tensor | np.ndarray,
               optimizer: torch.optim.Optimizer, scheduler: Any = None) -> float:
    """One update on a batch: train mode (dropout on), :func:`mlnet_loss` with the prior's
    regulariser, backward, ``optimizer.step()`` (then ``scheduler.step()`` if given). Returns
    the batch loss before the update. ``batch_y`` must be at the output resolution
    (:meth:`MLNet.map_size` of the input); it is checked before the forward pass."""
    if not isinstance(batch_x, Tensor) or batch_x.ndim != 4 or batch_x.shape[1] != 3:
        raise DataError("images", f"must be a (batch, 3, rows, cols) tensor, got "
                                  f"{getattr(batch_x, 'shape', type(batch_x).__name__)}")
    if not bool(torch.isfinite(batch_x).all()):
        raise DataError("images", "batch has NaN / inf values")
    y = torch.as_tensor(batch_y).to(batch_x.device, batch_x.dtype)
    _check_target(y, (int(batch_x.shape[0]), *model.map_size(batch_x.shape[-2:])))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = mlnet_loss(model(batch_x), y, model.prior.weight)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def train_mlnet(net: MLNet, images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                val_images: Sequence[np.ndarray], val_targets: Sequence[np.ndarray], *,
                epochs: int = 20, batch_size: int = 10, patience: int = 5,
                optimizer: str = "sgd", lr: float = 1e-3, momentum: float = 0.9,
                decay: float = 5e-4, frozen: bool = True, seed: int = 0,
                log: Any = None, progress: bool = False) -> tuple[MLNet, list[dict[str, Any]]]:
    """Train ``net`` (in place) the reference's way (``main.py``): :func:`mlnet_loss` (with the
    prior's regulariser), :func:`mlnet_optimizer` stepped once per batch, the training images in
    a new random order every epoch, the validation loss (eval mode: no dropout; regulariser
    included, as Keras reports it) after every epoch, early stopping after ``patience`` epochs
    without a lower validation loss, and the best epoch's weights restored at the end (Keras'
    ``ModelCheckpoint(save_best_only=True)``).

    ``images``: ``(H, W, 3)`` uint8 (letterboxed by :meth:`MLNet.prepare`); ``targets``:
    their ground truth on the output grid (:func:`density_target`), likewise for validation.
    ``frozen=True`` trains the head only and computes the trunk's three source maps once per
    image (eval mode, float32, kept in memory: ~1.7 MB an image for Lite0 at 480×640): the same
    numbers as running the trunk every step, at a fraction of the cost. ``frozen=False``
    fine-tunes the whole network (the reference's setup), running it on every batch.
    ``seed`` fixes the head's dropout masks and the data order (the global RNG is restored).

    Returns ``(net in eval mode, history)``: one dict per epoch (``epoch``, ``train_loss``
    (the mean of the batch losses before each update), ``val_loss``, ``lr`` at the epoch's
    end, ``seconds``, ``best``). ``progress``: tqdm bars on stderr (the frozen trunk's maps per
    image, then epochs done / ``epochs`` with ETA and the last losses); nothing computed
    changes."""
    from tqdm.auto import tqdm

    n, n_val = len(images), len(val_images)
    if n != len(targets) or n_val != len(val_targets):
        raise DataError("ML-Net training", f"{n} images with {len(targets)} targets, {n_val} "
                                           f"validation images with {len(val_targets)}")
    if n == 0 or n_val == 0:
        raise DataError("ML-Net training", "needs training and validation images")
    if min(epochs, batch_size, patience) < 1:
        raise ValueError("epochs, batch_size and patience must be >= 1")
    shape = net.output_size
    for which, ts in (("training", targets), ("validation", val_targets)):
        for i, t in enumerate(ts):
            try:
                _check_target(torch.as_tensor(np.asarray(t))[None], (1, *shape))
            except DataError as e:
                raise DataError(f"{which} target {i}", e.problem) from None
    param = next(net.parameters())
    dev = param.device
    net.freeze_trunk(frozen)

    def inputs(imgs: Sequence[np.ndarray]) -> Tensor:
        return torch.cat([net.prepare(im)[0] for im in imgs]).to(dev)

    cached: list[list[Tensor]] | None = None
    val_cached: list[list[Tensor]] | None = None
    if frozen:  # the trunk never changes: its three maps once per image
        with torch.no_grad():
            net.eval()
            maps = tqdm(total=n + n_val, desc="ML-Net trunk maps", unit="image", leave=False,
                        disable=not progress)
            cached, val_cached = [], []
            for store, imgs in ((cached, images), (val_cached, val_images)):
                for im in imgs:
                    store.append([m.cpu() for m in net.sources(inputs([im]))])
                    maps.update()
            maps.close()
    y = torch.as_tensor(np.stack([np.asarray(t) for t in targets])).to(torch.float32)
    y_val = torch.as_tensor(np.stack([np.asarray(t) for t in val_targets])).to(torch.float32)

    def batch_features(store: list[list[Tensor]], idx: list[int]) -> Tensor:
        return net.combine([torch.cat([store[i][j] for i in idx]).to(dev)
                            for j in range(len(store[0]))])

    opt, sched = mlnet_optimizer(net, lr, momentum, decay, optimizer)
    gen = torch.Generator().manual_seed(int(seed))
    history: list[dict[str, Any]] = []
    best_loss, best_state, since = float("inf"), None, 0
    bar = tqdm(total=epochs, desc="train ML-Net", unit="epoch", disable=not progress)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            net.train()
            order = torch.randperm(n, generator=gen).tolist()
            total = 0.0
            for b in range(0, n, batch_size):
                idx = order[b:b + batch_size]
                opt.zero_grad(set_to_none=True)
                pred = (net.head(batch_features(cached, idx)) if cached is not None
                        else net(inputs([images[i] for i in idx])))
                loss = mlnet_loss(pred, y[idx].to(dev), net.prior.weight)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            with torch.no_grad():
                val = 0.0
                for b in range(0, n_val, batch_size):
                    idx = list(range(b, min(b + batch_size, n_val)))
                    pred = (net.head(batch_features(val_cached, idx)) if val_cached is not None
                            else net(inputs([val_images[i] for i in idx])))
                    val += float(mlnet_loss(pred, y_val[idx].to(dev),
                                            net.prior.weight)) * len(idx)
                val /= n_val
            improved = val < best_loss
            if improved:
                best_loss, since = val, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
            history.append({"epoch": epoch, "train_loss": total / n, "val_loss": val,
                            "lr": float(opt.param_groups[0]["lr"]),
                            "seconds": time.perf_counter() - t0, "best": improved})
            if log is not None:
                log.info("ML-Net epoch %d: train %.4f, validation %.4f%s (%.0f s)", epoch,
                         total / n, val, " (best)" if improved else "",
                         history[-1]["seconds"])
            bar.set_postfix_str(f"train loss {total / n:.4f}, val loss {val:.4f}", refresh=False)
            bar.update()
            if since >= patience:
                break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


# ---------------------------------------------------------------------- checkpoints
def save_mlnet(path: str | Path, model: MLNet, metadata: dict[str, Any] | None = None) -> Path:
    """Save the whole network (trunk included: it may be fine-tuned) with its layout and
    ``metadata`` (plain types), atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "layout": model.layout,
        "backbone": model.backbone_name,
        "weights_id": model.weights_id,
        "input_size": list(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "metadata": dict(metadata or {}),
        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_mlnet(path: str | Path, backbone: Any) -> tuple[MLNet, dict[str, Any]]:
    """Rebuild a :func:`save_mlnet` network; ``backbone`` gives the architecture (its weights
    are replaced by the checkpoint's). Returns (model in eval mode, metadata). A missing or
    unreadable file, another format, another backbone or mismatching weights →
    :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ML-Net checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a data problem
        raise DataError(path, f"cannot read ML-Net checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a {CHECKPOINT_FORMAT} checkpoint")
    name = str(getattr(backbone, "name", ""))
    if payload["layout"] != name:
        raise DataError(path, f"an ML-Net on {payload['layout']}, given backbone {name!r}")
    model = MLNet.from_backbone(backbone, input_size=payload["input_size"])
    model.mean = tuple(float(v) for v in payload["mean"])
    model.std = tuple(float(v) for v in payload["std"])
    model.weights_id = str(payload["weights_id"])
    try:
        model.load_state_dict(payload["state"], strict=True)
    except RuntimeError as e:
        raise DataError(path, f"weights do not fit the network: {e}") from None
    return model.eval(), dict(payload["metadata"])
