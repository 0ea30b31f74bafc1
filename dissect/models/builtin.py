"""The project's existing saliency models behind the shared interface
(:class:`dissect.models.base.SaliencyModel`) and in its registry (:func:`load_model`).

* the classical models of :mod:`dissect.models.classical` (``itti``, ``gbvs``, ``bms``,
  ``spectral_residual``, ``fine_grained``): :class:`ClassicalModel`;
* the He et al. readout (setups I / II, :class:`dissect.readout.SaliencyReadout`):
  :class:`ReadoutModel`, whose ``layers`` are the trunk's hookable units (the dissection's
  layer names → module paths inside the readout).

Adapters rather than new base classes for the existing models: the classical models and the
readout keep their own APIs (the stages and their tests use them), and this module is the one
place where they meet the shared interface. Registered by importing this module (listed in
:data:`dissect.models.base.BUILTIN_MODULES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dissect.models.base import ImageLike, SaliencyModel, image_array, register_model
from dissect.models.classical import CLASSICAL_MODELS, ClassicalSaliency, load_classical

__all__ = ["ClassicalModel", "ReadoutModel"]

class ClassicalModel(SaliencyModel):
    """A classical (non-deep) model: its map in [0, 1] at the image's size; no inner units."""

    def __init__(self, model: ClassicalSaliency, name: str | None = None):
        self.model = model
        self.name = name or type(model).name or type(model).__name__
        self.layers = None

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        return np.asarray(self.model.saliency(image_array(image), source=self.name),
                          dtype=np.float64)


def _classical_factory(name: str):
    def factory(**params: Any) -> ClassicalModel:
        return ClassicalModel(load_classical(name, **params), name)

    factory.__qualname__ = f"classical_{name}"
    factory.__doc__ = f"The classical model {name!r} (dissect.models.classical)."
    return factory


for _name in CLASSICAL_MODELS:
    register_model(_name)(_classical_factory(_name))


class ReadoutModel(SaliencyModel):
    """The He et al. readout: ``saliency_map`` is :meth:`SaliencyReadout.predict` (the
    feature-resolution map bilinearly upsampled to the image, float64). ``layers`` maps the
    trunk's analysed layer names to module paths inside the readout (``backbone.model.<path>``
    of the backbone's ``layers``), so a capture can hook the fine-tuned units."""

    def __init__(self, readout: Any, name: str = "readout"):
        self.readout = readout.eval()
        self.name = name
        bb_layers = getattr(readout.backbone, "layers", {}) or {}
        self.layers = {layer: path for layer, path in bb_layers.items()}

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        return np.asarray(self.readout.predict(image_array(image)), dtype=np.float64)


@register_model("readout")
def readout_model(checkpoint: str | Path, backbone: str = "efficientnet_lite0",
                  weights: str | None = "imagenet", backbone_checkpoint: str | Path | None = None,
                  name: str | None = None) -> ReadoutModel:
    """A trained readout from its checkpoint (``work/readouts/s<seed>/k<k>/model.pt``) and the
    pretrained backbone it started from."""
    from dissect.backbones import load_backbone
    from dissect.readout import load_readout

    bb = load_backbone(backbone, weights=weights, checkpoint=backbone_checkpoint)
    readout, meta = load_readout(checkpoint, bb)
    label = name or f"readout_k{meta.get('k', readout.k)}"
    return ReadoutModel(readout, label)
