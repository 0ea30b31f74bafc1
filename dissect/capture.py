"""Capture of unit activations (and gradients) at named backbone layers.

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

Preprocessing lives in :mod:`dissect.preprocess` (below both this module and
:mod:`dissect.backbones`); ``Preprocess`` and the ImageNet constants are re-exported here for
existing callers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerActivation
from torch import Tensor, nn

from dissect.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

if TYPE_CHECKING:
    from dissect.backbones import Backbone

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassLogit",
    "LayerCapture",
    "Preprocess",
    "Target",
    "class_logit",
    "top1_logit",
]

Target = int | Callable[[Tensor], Tensor]


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
