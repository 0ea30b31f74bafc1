"""The project's models with APIs of their own behind the shared interface
(:class:`dissect.models.base.DissectableModel` / :class:`~dissect.models.base.SaliencyModel`)
and in its registry (:func:`~dissect.models.base.load_model`).

* the classical models of :mod:`dissect.models.classical` (``itti``, ``gbvs``, ``bms``,
  ``spectral_residual``, ``fine_grained``): :class:`ClassicalModel` (``.model`` is the
  :class:`~dissect.models.classical.ClassicalSaliency`);
* the He et al. readout (setups I / II, :class:`dissect.models.readout.SaliencyReadout`),
  registered as ``readout``: :class:`ReadoutModel` (``.readout`` is the ``nn.Module``);
* the scene classifier of the task-vs-data comparison (:class:`dissect.scene.SceneClassifier`),
  registered as ``scene_classifier``: :class:`SceneClassifierModel` (``.classifier``), a
  :class:`~dissect.models.base.DissectableModel` with ``class_probabilities(image)`` and no
  saliency map;
* ML-Net (:class:`dissect.models.mlnet.MLNet`), registered as ``mlnet``: :class:`MLNetModel`
  (``.net`` is the ``nn.Module``).

For the readout and the scene classifier, ``layers`` are the trunk's hookable units (the
dissection's layer names → the backbone's module paths) and ``module`` is the model's own
fine-tuned trunk network (``readout.backbone.model``, ``classifier.backbone.model``), in which
those paths resolve and whose submodules run in the model's forward.

Adapters rather than new base classes: the wrapped models keep their own APIs (training, the
checkpoints, the tests of their maths), the adapters call exactly those functions (the same
maps, the same numbers), and this module is the one place where they meet the shared interface.
The stages build all of them through :func:`~dissect.models.base.load_model` and reach the
wrapped object through the attributes above where they need the ``nn.Module`` itself. Both
network factories take the pretrained backbone by name or as an already built ``Backbone``
(so a stage that holds one does not load the trunk again). Registered by importing this module
(listed in :data:`dissect.models.base.BUILTIN_MODULES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dissect.errors import DataError
from dissect.models.base import (
    DissectableModel,
    ImageLike,
    SaliencyModel,
    image_array,
    register_model,
)
from dissect.models.classical import CLASSICAL_MODELS, ClassicalSaliency, load_classical

__all__ = ["ClassicalModel", "MLNetModel", "ReadoutModel", "SceneClassifierModel"]


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


def _backbone(backbone: str | Any, weights: str | None,
              checkpoint: str | Path | None) -> Any:
    """The pretrained backbone: ``load_backbone(backbone, weights=..., checkpoint=...)`` for a
    name; an already built ``Backbone`` object as it is (``weights`` is then unused, and a
    ``backbone_checkpoint`` is refused: the object's weights are what they are)."""
    if isinstance(backbone, str):
        from dissect.backbones import load_backbone

        return load_backbone(backbone, weights=weights, checkpoint=checkpoint)
    if checkpoint is not None:
        raise DataError(str(checkpoint), "backbone_checkpoint applies to a backbone given by "
                                         "name, not to an already built Backbone")
    return backbone


class ReadoutModel(SaliencyModel):
    """The He et al. readout: ``saliency_map`` is :meth:`SaliencyReadout.predict` (the
    feature-resolution map bilinearly upsampled to the image, float64). ``layers`` are the
    backbone's unit layers (name → module path); they resolve in :attr:`module`, the readout's
    own fine-tuned copy of the trunk network (``readout.backbone.model``), whose modules run in
    the readout's forward, so a hook there sees the fine-tuned units. ``readout`` is the
    :class:`~dissect.models.readout.SaliencyReadout` itself (eval mode)."""

    def __init__(self, readout: Any, name: str = "readout"):
        self.readout = readout.eval()
        self.name = name
        bb_layers = getattr(readout.backbone, "layers", {}) or {}
        self.layers = {layer: path for layer, path in bb_layers.items()}

    @property
    def module(self) -> Any:
        return self.readout.backbone.model

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        return np.asarray(self.readout.predict(image_array(image)), dtype=np.float64)


@register_model("readout")
def readout_model(checkpoint: str | Path, backbone: str | Any = "efficientnet_lite0",
                  weights: str | None = "imagenet", backbone_checkpoint: str | Path | None = None,
                  name: str | None = None) -> ReadoutModel:
    """A trained readout from its checkpoint (``work/readouts/s<seed>/k<k>/model.pt``,
    :func:`dissect.models.readout.load_readout`) and the pretrained backbone it started from: a
    name (loaded with ``weights`` / ``backbone_checkpoint``) or a ``Backbone`` object."""
    from dissect.models.readout import load_readout

    bb = _backbone(backbone, weights, backbone_checkpoint)
    readout, meta = load_readout(checkpoint, bb)
    label = name or f"readout_k{meta.get('k', readout.k)}"
    return ReadoutModel(readout, label)


class SceneClassifierModel(DissectableModel):
    """The scene classifier (:class:`dissect.scene.SceneClassifier`: trunk + GAP + three fully
    connected layers) behind the shared interface: no saliency map; ``layers`` are the
    backbone's unit layers, resolving in :attr:`module` (the classifier's own fine-tuned trunk
    network, ``classifier.backbone.model``); ``classes`` the scene categories in class-index
    order; :meth:`class_probabilities` the softmax of its logits. ``classifier`` is the
    ``nn.Module`` itself (eval mode; ``classifier.trunk_backbone()`` hands out the fine-tuned
    trunk as a Backbone)."""

    def __init__(self, classifier: Any, name: str = "scene_classifier"):
        self.classifier = classifier.eval()
        self.name = name
        self.classes: list[str] = list(classifier.classes)
        bb_layers = getattr(classifier.backbone, "layers", {}) or {}
        self.layers = {layer: path for layer, path in bb_layers.items()}

    @property
    def module(self) -> Any:
        return self.classifier.backbone.model

    def class_probabilities(self, image: ImageLike) -> NDArray[np.float64]:
        """``(n_classes,)`` float64: the softmax of the classifier's logits for one image
        (preprocessed by its backbone's ``preprocess``; eval mode, no gradients)."""
        import torch

        x = self.classifier.backbone.preprocess(image_array(image))
        param = next(self.classifier.parameters())
        with torch.no_grad():
            logits = self.classifier(x.to(param.device, param.dtype))
        return torch.softmax(logits.double(), dim=1)[0].cpu().numpy()


@register_model("scene_classifier")
def scene_classifier_model(checkpoint: str | Path, backbone: str | Any = "efficientnet_lite0",
                           weights: str | None = "imagenet",
                           backbone_checkpoint: str | Path | None = None,
                           name: str | None = None) -> SceneClassifierModel:
    """A trained scene classifier from its checkpoint (``work/scene/s<seed>/model.pt``,
    :func:`dissect.scene.load_scene_model`) and the pretrained backbone it was trained from: a
    name (loaded with ``weights`` / ``backbone_checkpoint``) or a ``Backbone`` object."""
    from dissect.scene import load_scene_model

    bb = _backbone(backbone, weights, backbone_checkpoint)
    return SceneClassifierModel(load_scene_model(checkpoint, bb), name or "scene_classifier")


class MLNetModel(SaliencyModel):
    """ML-Net (:class:`dissect.models.mlnet.MLNet`) behind the shared interface:
    ``saliency_map(image)`` letterboxes the image into the network's input size
    (:meth:`MLNet.prepare`), runs it (eval mode, no gradients), crops the padding and upsamples
    bilinearly to the image's size (:func:`~dissect.models.mlnet.unletterbox`), float64 ≥ 0.
    ``layers`` are :attr:`MLNet.layers` (three source layers + ``encoding``, the 64 encoding
    maps), resolving in :attr:`module`, the network itself; ``net`` is the same module."""

    def __init__(self, net: Any, name: str = "mlnet"):
        self.net = net.eval()
        self.name = name
        self.layers = dict(net.layers)

    @property
    def module(self) -> Any:
        return self.net

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        import torch

        from dissect.models.mlnet import unletterbox

        x, box = self.net.prepare(image_array(image))
        param = next(self.net.parameters())
        with torch.no_grad():
            m = self.net(x.to(param.device, param.dtype))[0]
        return np.maximum(unletterbox(m, box), 0.0)


@register_model("mlnet")
def mlnet_model(checkpoint: str | Path, backbone: str | Any = "efficientnet_lite0",
                name: str | None = None, device: Any = None) -> MLNetModel:
    """A trained ML-Net from its checkpoint (``work/mlnet/model.pt``,
    :func:`dissect.models.mlnet.load_mlnet`). ``backbone``: the trunk's architecture, by name
    (built with random weights: the checkpoint holds every weight, trunk included) or a built
    ``Backbone`` of that architecture (its weights are not used). ``device``: where it runs
    (default CPU)."""
    from dissect.models.mlnet import load_mlnet

    if isinstance(backbone, str):
        from dissect.backbones import load_backbone

        backbone = load_backbone(backbone, weights="random")
    net, _meta = load_mlnet(checkpoint, backbone)
    if device is not None:
        net.to(device)
    return MLNetModel(net, name or "mlnet")
