"""Preprocessing and capture of unit activations (and gradients) at named backbone layers.

A *unit* is one channel of a layer's post-nonlinearity feature map (He et al., CVPR 2019, §3:
"the activation map of unit u"); `LayerCapture` returns those maps, shape ``(B, units, y, x)``,
for the layers a `dissect.backbones.Backbone` names.

Capture is done with captum, in its uniform ``attribute`` style:

* activations: ``captum.attr.LayerActivation`` over the list of layer modules, run on the trunk
  prefix that ends with the deepest requested layer (nothing past it is computed), under
  ``torch.no_grad``;
* gradients: ``captum._utils.gradient.compute_layer_gradients_and_eval`` (the helper behind
  ``LayerGradientXActivation(multiply_by_inputs=False)``), which returns the layer outputs and the
  gradient of a scalar-per-image target w.r.t. them in one forward/backward pass.

captum registers its forward hooks per call and removes them in a ``finally`` block, so no hook
outlives a call, even when the forward raises; nothing here is hand-written hook code.
`LayerCapture` is also a context manager for callers that like to scope it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerActivation
from torch import Tensor, nn

from dissect.errors import DataError

if TYPE_CHECKING:
    from dissect.backbones import Backbone

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

RESIZE_METHOD = (
    "torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False)"
)

Target = int | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Preprocess:
    """uint8 RGB images → normalised float tensors ``(B, 3, h, w)``.

    Steps: ``x / 255`` (float32, [0, 1]) → bilinear resize with antialiasing
    (``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``,
    deterministic on CPU) to ``size = (height, width)`` → ``(x - mean) / std`` per channel.
    ``size=None`` keeps each image's native resolution (a list must then share one size).
    """

    size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"Preprocess size must be (height, width) > 0, got {self.size}")
            object.__setattr__(self, "size", size)
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("Preprocess mean and std need one value per RGB channel")
        if min(std) <= 0:
            raise ValueError(f"Preprocess std must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored in cache metadata and hashed into its key)."""
        return {
            "size": None if self.size is None else list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": "x / 255 (float32)",
            "resize": RESIZE_METHOD,
        }

    def __call__(self, images: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> Tensor:
        """Preprocess one ``(H, W, 3)`` uint8 image or a list of them → ``(B, 3, h, w)``."""
        if isinstance(images, np.ndarray | Tensor) and images.ndim == 3:
            images = [images]
        batch = [_to_chw_float(img, f"image[{i}]") for i, img in enumerate(images)]
        if not batch:
            raise DataError("images", "empty list of images")
        if self.size is None:
            shapes = {tuple(t.shape[-2:]) for t in batch}
            if len(shapes) > 1:
                raise DataError(
                    "images",
                    "Preprocess(size=None) keeps native sizes, but the batch mixes "
                    f"{sorted(shapes)}; give a size or batch images of one size",
                )
            x = torch.stack(batch)
        else:
            resized = []
            for t in batch:
                if tuple(t.shape[-2:]) != self.size:
                    t = F.interpolate(
                        t[None], size=self.size, mode="bilinear", antialias=True,
                        align_corners=False,
                    )[0]
                resized.append(t)
            x = torch.stack(resized)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _to_chw_float(img: np.ndarray | Tensor, name: str) -> Tensor:
    if isinstance(img, np.ndarray):
        img = np.ascontiguousarray(img)
        t = torch.from_numpy(img if img.flags.writeable else img.copy())
    else:
        t = img
    if t.dtype != torch.uint8:
        raise DataError(name, f"expected a uint8 RGB image, got dtype {t.dtype}")
    if t.ndim != 3 or t.shape[2] != 3:
        raise DataError(name, f"expected an (H, W, 3) RGB image, got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise DataError(name, f"empty image of shape {tuple(t.shape)}")
    return t.permute(2, 0, 1).to(torch.float32) / 255.0


def top1_logit(output: Tensor) -> Tensor:
    """Target: each image's largest logit (its top-1 class), shape ``(B,)``.

    Its gradient equals the gradient of the predicted class's logit (ties have measure zero).
    """
    return output.max(dim=1).values


@dataclass(frozen=True)
class ClassLogit:
    """Target: the logit of class ``index`` for every image, shape ``(B,)`` (picklable)."""

    index: int

    def __call__(self, output: Tensor) -> Tensor:
        return output[:, self.index]


def class_logit(index: int) -> ClassLogit:
    """Target: the logit of ImageNet class ``index`` for every image, shape ``(B,)``."""
    return ClassLogit(int(index))


def _as_target(target: Target) -> Callable[[Tensor], Tensor]:
    if isinstance(target, bool):
        raise TypeError("target must be a class index or a callable on the model output")
    if isinstance(target, int):
        return class_logit(target)
    if not callable(target):
        raise TypeError("target must be a class index or a callable on the model output")
    return target


class LayerCapture:
    """Unit maps (and their gradients) at named layers of a `Backbone`.

    >>> cap = LayerCapture(backbone, ["conv5_3"])
    >>> acts = cap.attribute(x)                          # {"conv5_3": (B, 512, 14, 14)}
    >>> acts, grads = cap.gradients(x, target=top1_logit)

    Layers are returned in the backbone's depth order whatever order they were asked in.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str] | str | None = None):
        if isinstance(layers, str):
            layers = [layers]
        if layers is None:
            layers = list(backbone.layers)
        unknown = [name for name in layers if name not in backbone.layers]
        if unknown:
            raise KeyError(
                f"{backbone.name} has no layer(s) {unknown}; known: {list(backbone.layers)}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"duplicate layers in {list(layers)}")
        order = list(backbone.layers)
        self.backbone = backbone
        self.layers: list[str] = sorted(layers, key=order.index)
        self.modules: list[nn.Module] = [backbone.module(name) for name in self.layers]
        if len({id(m) for m in self.modules}) != len(self.modules):
            raise ValueError("two requested layers map to the same module")
        deepest = self.layers[-1] if self.layers else None
        self.stage = backbone.stage_of(deepest) if deepest else None
        self._trunk = backbone.trunk(self.stage) if self.stage else None

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        # captum removes its hooks at the end of every call (try/finally); nothing is left to
        # undo here. Drop the trunk reference so the capture can be garbage-collected early.
        self._trunk = None

    def _device(self) -> torch.device:
        param = next(self.backbone.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def attribute(self, x: Tensor) -> dict[str, Tensor]:
        """Activations ``{layer: (B, units, y, x)}`` for a preprocessed batch ``x``.

        Runs only the trunk stages up to the deepest requested layer, under ``torch.no_grad``.
        """
        if not self.layers:
            return {}
        if self._trunk is None:
            raise RuntimeError("LayerCapture used after its context was closed")
        x = x.to(self._device())
        with torch.no_grad():
            outs = LayerActivation(self._trunk, list(self.modules)).attribute(x)
        return {name: _single(out, name) for name, out in zip(self.layers, outs, strict=True)}

    def gradients(
        self, x: Tensor, target: Target = top1_logit
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Activations and ``d target / d activation`` at each layer.

        ``target`` is a class index or a callable mapping the full model's output ``(B, K)`` to
        one scalar per image ``(B,)`` (default: `top1_logit`). Images are independent in eval
        mode, so the gradient of ``sum_b target_b`` w.r.t. image b's maps is image b's gradient.
        """
        if not self.layers:
            return {}, {}
        fn = _as_target(target)
        model = self.backbone.model

        def forward(inp: Tensor) -> Tensor:
            out = fn(model(inp))
            if out.ndim != 1 or out.shape[0] != inp.shape[0]:
                raise ValueError(
                    f"gradient target must give one scalar per image (shape ({inp.shape[0]},)), "
                    f"got shape {tuple(out.shape)}"
                )
            return out

        x = x.to(self._device())
        grads, evals = compute_layer_gradients_and_eval(forward, list(self.modules), x)
        acts = {n: _single(e, n).detach() for n, e in zip(self.layers, evals, strict=True)}
        grad = {n: _single(g, n).detach() for n, g in zip(self.layers, grads, strict=True)}
        return acts, grad


def _single(out: Tensor | tuple[Tensor, ...], name: str) -> Tensor:
    if isinstance(out, tuple | list):
        if len(out) != 1:
            raise RuntimeError(f"layer {name} returned {len(out)} tensors; expected one")
        out = out[0]
    return out
