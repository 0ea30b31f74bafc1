"""The one interface every model answers, and the registry that builds models by name.

In the spirit of pysaliency's ``SaliencyMapModel`` / ``Model`` (Kümmerer et al.):

* :class:`DissectableModel` — what every registered model is: a ``name``, and for networks the
  inner layers a dissection can hook: ``layers`` maps the dissection's layer names to dotted
  module paths inside ``module`` (the ``torch.nn.Module`` to hook; None for models without inner
  units). The scene classifier (:mod:`dissect.models.builtin`) is one without a saliency map.
* :class:`SaliencyModel` — a DissectableModel with ``saliency_map(image) -> (H, W) float64`` at
  the image's own size.
* :class:`ProbabilisticModel` — adds ``log_density(image) -> (H, W) float64``: the natural log of a
  probability over the image's pixels, ``logsumexp(log_density) == 0`` (a pixel of density zero is
  ``-inf``). Its ``saliency_map`` is ``exp(log_density)``, the density itself (not pysaliency's
  choice, which returns the log density): the density is non-negative and finite everywhere, so
  every map metric of :mod:`dissect.metrics` (NSS, CC, SIM, KLD, AUCs) accepts it, while a log
  density with ``-inf`` pixels would be refused; AUCs are unchanged by the monotone ``exp``.

**What a model is given.** ``image`` is either an ``(H, W, 3)`` uint8 array or a
:class:`StimulusImage` — the pixels *and* the dataset id of the image. Models computed from pixels
(networks, classical models) read ``.image``; models that know fixations of the image itself, the
gold standard above all, need the id and refuse a bare array (:func:`stimulus_id`). pysaliency
solves the same problem by identifying a stimulus through a hash of its pixels
(``get_image_hash``); an explicit id is cheaper, cannot collide, and matches the ids of
:class:`dissect.data.FixationDataset`. Callers that score a dataset therefore pass
``StimulusImage(id, dataset.load_image(id))`` to every model; image-independent baselines also
accept a bare ``(H, W)`` size.

**Observers.** A model whose density depends on the observers of the image being scored (the
gold standard) sets ``observer_dependent = True`` and overrides :meth:`ProbabilisticModel.
log_density_held_out` (the density without one subject's fixations, to score that subject; cf.
pysaliency's ``SubjectDependentModel``). For every other model that method is ``log_density``, so
a scorecard loops ``for subject: log_density_held_out(stimulus, subject)`` only where
``observer_dependent`` and never special-cases a model family
(:func:`dissect.scoring.fixation_log_densities` does exactly this).

**Registry.** ``@register_model("name")`` registers a factory (a class or function taking keyword
parameters) returning a :class:`DissectableModel`; :func:`load_model` builds one;
:data:`MODEL_NAMES` is a live view of the registered names. Modules listed in
:data:`BUILTIN_MODULES` are imported on first lookup so that their ``@register_model``
decorators run (new model families add their module there).
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, KeysView
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from dissect.errors import DataError

__all__ = [
    "BUILTIN_MODULES",
    "DissectableModel",
    "ImageLike",
    "MODEL_NAMES",
    "ProbabilisticModel",
    "SaliencyModel",
    "StimulusImage",
    "check_log_density",
    "image_array",
    "image_size",
    "load_model",
    "register_model",
    "stimulus_id",
]

#: logsumexp of a log density must be 0 within this tolerance (natural-log units).
NORMALISATION_ATOL: float = 1e-6


@dataclass(frozen=True)
class StimulusImage:
    """An image together with its id in the dataset: what a model is given to score.

    ``image`` is ``(H, W, 3)`` uint8 RGB (or None where only the ``size`` matters, e.g. for a
    baseline that needs no pixels). ``size`` defaults to the image's ``(H, W)``.
    """

    id: str
    image: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(self.id))
        if self.image is not None:
            hw = tuple(int(v) for v in np.shape(self.image)[:2])
            if self.size is not None and tuple(self.size) != hw:
                raise DataError(
                    self.id, f"size {tuple(self.size)} does not match the image's {hw}"
                )
            object.__setattr__(self, "size", hw)
        elif self.size is None:
            raise DataError(self.id, "a StimulusImage needs an image or a size")
        else:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))


#: What a model method accepts: pixels, pixels with an id, or (for baselines) a size.
ImageLike = np.ndarray | StimulusImage | tuple[int, int]


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(H, W)`` of an array, a :class:`StimulusImage` or an ``(H, W)`` tuple (checked > 0)."""
    if isinstance(image, StimulusImage):
        h, w = image.size  # type: ignore[misc]
        src = image.id
    elif isinstance(image, tuple):
        if len(image) != 2:
            raise DataError("image", f"a size must be (H, W), got {image}")
        h, w = int(image[0]), int(image[1])
        src = "image"
    else:
        shape = np.shape(image)
        if len(shape) not in (2, 3):
            raise DataError("image", f"must be (H, W, 3) or (H, W), got shape {shape}")
        h, w = int(shape[0]), int(shape[1])
        src = "image"
    if h <= 0 or w <= 0:
        raise DataError(src, f"image size must be positive, got {(h, w)}")
    return h, w


def image_array(image: ImageLike) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 pixels of an array or :class:`StimulusImage`; a size → error."""
    if isinstance(image, StimulusImage):
        if image.image is None:
            raise DataError(image.id, "this model needs the image pixels; only a size was given")
        arr = image.image
        src = image.id
    elif isinstance(image, tuple):
        raise DataError("image", "this model needs the image pixels; only a size was given")
    else:
        arr = image
        src = "image"
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(src, f"image must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr


def stimulus_id(image: ImageLike, model: str = "model") -> str:
    """The dataset id of a :class:`StimulusImage`; a bare array or size → ``DataError``."""
    if isinstance(image, StimulusImage):
        return image.id
    raise DataError(
        model,
        "needs the image's dataset id: pass StimulusImage(id, image) instead of a bare array",
    )


def check_log_density(
    log_density: NDArray[np.float64], source: str | None = None, size: tuple[int, int] | None = None
) -> NDArray[np.float64]:
    """Validate a log density: 2-D float64, no NaN / +inf, ``logsumexp == 0`` (±1e-6).

    ``-inf`` (zero density) is allowed at pixels; whether it may sit under a fixation is the
    scoring's business (:mod:`dissect.scoring`). Returns the array as float64.
    """
    from scipy.special import logsumexp

    a = np.asarray(log_density, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise DataError(source, f"log density must be a non-empty 2-D (H, W) map, got {a.shape}")
    if size is not None and a.shape != tuple(size):
        raise DataError(source, f"log density shape {a.shape} differs from the image's {size}")
    n_nan = int(np.isnan(a).sum())
    n_pinf = int(np.isposinf(a).sum())
    if n_nan or n_pinf:
        raise DataError(source, f"log density has {n_nan} NaN and {n_pinf} +inf value(s)")
    total = float(logsumexp(a))
    if not abs(total) <= NORMALISATION_ATOL:
        raise DataError(
            source,
            f"log density is not normalised: logsumexp = {total:.3g} (sum of exp = "
            f"{np.exp(total):.6g}), expected 0 within {NORMALISATION_ATOL:g}",
        )
    return a


class DissectableModel:
    """A model the registry builds and a dissection can open up: the base of every model.

    ``name`` identifies the model in tables. ``layers`` maps the dissection's layer names to the
    dotted module paths to hook (``{"conv5_3": "features.29"}``) for network models, None for
    models without inner units; the paths resolve in :attr:`module` (``module.get_submodule``),
    and :meth:`layer_module` does exactly that. Subclasses with ``layers`` override
    :attr:`module`.
    """

    name: str = ""
    layers: dict[str, str] | None = None

    @property
    def module(self) -> Any:
        """The network (``torch.nn.Module``) in which the paths of ``layers`` resolve, in eval
        mode; None for a model without inner units."""
        return None

    def layer_module(self, layer: str) -> Any:
        """The submodule of :attr:`module` behind the dissection layer ``layer`` (to hook)."""
        if not self.layers or layer not in self.layers:
            raise KeyError(f"{self.name or type(self).__name__} has no layer {layer!r}; known: "
                           f"{list(self.layers or {})}")
        root = self.module
        if root is None:
            raise DataError(self.name or type(self).__name__,
                            "names layers but exposes no module to resolve them in")
        return root.get_submodule(self.layers[layer])


class SaliencyModel(DissectableModel, ABC):
    """A saliency model: ``saliency_map(image) -> (H, W) float64`` at the image's own size
    (``name``, ``layers`` and ``module`` as for every :class:`DissectableModel`)."""

    @abstractmethod
    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        """``(H, W)`` float64 map at the size of ``image`` (higher = more salient)."""


class ProbabilisticModel(SaliencyModel):
    """A model of where people fixate: a probability over the image's pixels.

    ``log_density(image)`` is ``(H, W)`` float64, natural log, ``logsumexp == 0``;
    ``saliency_map`` is ``exp(log_density)``. ``observer_dependent`` models (gold standard)
    override :meth:`log_density_held_out`.
    """

    observer_dependent: ClassVar[bool] = False

    @abstractmethod
    def log_density(self, image: ImageLike) -> NDArray[np.float64]:
        """Natural-log density over the pixels of ``image`` (``logsumexp == 0``)."""

    def log_density_held_out(self, image: ImageLike, subject: int) -> NDArray[np.float64]:
        """The density used to score ``subject``'s fixations: for observer-independent models
        simply :meth:`log_density`; the gold standard leaves that subject's fixations out."""
        return self.log_density(image)

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        """The density itself, ``exp(log_density)`` (sums to 1 over the pixels)."""
        return np.exp(self.log_density(image))


# ---------------------------------------------------------------------------------- registry
ModelFactory = Callable[..., DissectableModel]
_F = TypeVar("_F", bound=ModelFactory)
_REGISTRY: dict[str, ModelFactory] = {}

#: Live view of the registered model names (after :func:`load_model` imported the built-ins).
MODEL_NAMES: KeysView[str] = _REGISTRY.keys()

#: Modules whose ``@register_model`` decorators :func:`load_model` runs on first use: the
#: baselines, DeepGaze I, the classical models, the readout, the scene classifier and ML-Net
#: (:mod:`dissect.models.builtin`), and implicit saliency, Grad-CAM and Guided Backprop
#: (:mod:`dissect.models.implicit`). A new model family adds its module here.
BUILTIN_MODULES: list[str] = [
    "dissect.models.baselines",
    "dissect.models.deepgaze",
    "dissect.models.builtin",
    "dissect.models.implicit",
]
_loaded_builtins = False


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator registering ``factory`` (a class or function of keyword params) as ``name``.

    Registering a second, different factory under a taken name is an error (a re-import of the
    same module re-registers the same qualified name and is accepted).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def deco(factory: _F) -> _F:
        old = _REGISTRY.get(name)
        if old is not None and (
            getattr(old, "__module__", None),
            getattr(old, "__qualname__", None),
        ) != (getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)):
            raise ValueError(f"model name {name!r} is already registered to {old!r}")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _loaded_builtins = True


def load_model(name: str, /, **params: Any) -> DissectableModel:
    """Build the model registered as ``name`` with keyword ``params``: any
    :class:`DissectableModel` (a :class:`SaliencyModel` for every saliency model). ``name`` is
    positional-only, so a factory's own ``name`` parameter (the label in tables) passes through:
    ``load_model("readout", checkpoint=..., name="readout_k1_s0")``.

    An unknown name or parameters the factory does not take → ``DataError`` naming the model and
    the known names / the parameters.
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise DataError(name, f"unknown saliency model; known: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as e:
        raise DataError(name, f"bad parameters {sorted(params)}: {e}") from None
    except ValueError:  # no signature (a builtin): let the call itself decide
        pass
    model = factory(**params)
    if not isinstance(model, DissectableModel):
        raise DataError(name, f"factory returned {type(model).__name__}, not a DissectableModel")
    return model
