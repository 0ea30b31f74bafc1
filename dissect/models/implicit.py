"""Implicit saliency (Sun, Prabhushankar & AlRegib, "Implicit Saliency in Deep Neural Networks",
ICIP 2020) and the two gradient maps the paper compares it with (Grad-CAM, Guided Backprop).

**Implicit saliency** reads a saliency map out of a pretrained classifier without eye-tracking
data, from the *expectancy mismatch* between the network's prediction and every "unexpected"
label. For an image ``x`` with logits ``z`` (``N_out`` outputs) and ``N`` classes ``i``:

* ``J(x, i) = −log softmax(z)_i``: the cross-entropy against the one-hot label ``e_i``;
* ``R_i = |∂J_i / ∂f|``: its gradient at a chosen layer ``f`` (``K`` channels × ``h × w``),
  in absolute value, per channel ``k`` and position ``(m, n)``;
* ``µ = (1/N) Σ_i R_i`` and ``V = (1/N) Σ_i (R_i − µ)²``: mean and (population, ddof = 0)
  variance over the classes, elementwise;
* ``S_C = (1/K) Σ_k (1 − V̂_k) ∘ µ_k``: the map, with ``V̂`` the normalised variance.

The paper does not say how ``V`` is normalised. Here (:func:`normalise_variance`, parameter
``variance_norm``) it is a min–max over each channel's ``h × w`` map, ``V̂_k = (V_k − min V_k) /
(max V_k − min V_k)`` (``"per_map"``, the default), or over the whole ``K × h × w`` tensor
(``"global"``). A map whose range is ≤ :data:`~dissect.metrics.conventions.CONSTANT_RTOL` × its
largest magnitude is *constant* and gets ``V̂ = 0`` (every class agrees equally everywhere, so
nothing is down-weighted) instead of a 0/0. ``S_C ≥ 0``; it is not rescaled.

**The feed-forward counterpart** ``S_F`` (:func:`feedforward_map`) applies the same statistics to
the activations ``A = f`` instead of the gradients. The activation does not depend on the label,
so it is the per-class quantity *constant over the classes*: ``R_i = |A|`` for every ``i``, hence
``µ = |A|``, ``V = 0``, ``V̂ = 0`` (constant-map rule) and ``S_F = (1/K) Σ_k |A_k|``, the mean
absolute activation over the channels (``= the mean activation`` for post-ReLU/ReLU6 units). It
is computed by the same :func:`implicit_map` with ``V = 0``.

**Computation** (:func:`gradient_statistics`). ``∂J_i/∂z = softmax(z) − e_i``, so the layer
gradient is the vector–Jacobian product ``g_i = Jᵀ(p − e_i) = s − r_i`` (``J = ∂z/∂f``, ``s = Jᵀp``,
``r_i = Jᵀe_i``). The cotangents ``p − e_i`` are fed directly (by linearity this *is* ``s − r_i``,
without the cancellation of subtracting two large vectors), in **chunks** of ``B`` classes:

1. one forward of the network on ``B`` copies of the image, in which the first submodule to run
   cuts its input back to one row (the layers before ``f`` run once) and the layer's output is
   replaced by a leaf ``f`` repeating it ``B`` times (channels-last, which makes oneDNN's
   convolution backward ~1.5× faster on CPU), so the graph starts at ``f`` and everything after
   it runs at batch ``B`` (prefix tensors the tail reuses, e.g. residual inputs, broadcast).
   A network where that fails (a concatenation with a prefix tensor) or changes the logits (a
   prefix that reshapes by the input's batch size) is run on the ``B`` copies throughout;
2. per chunk, one backward of the ``B`` cotangent rows ``p − e_i`` through that graph
   (``retain_graph``): row ``b`` of ``∂⟨C, z⟩/∂f`` is the ``g_i`` of the ``b``-th class;
3. ``R = |g|`` of the chunk is folded into running float64 statistics with the exact pairwise
   update of Chan, Golub & LeVeque (count, mean, sum of squared deviations), so memory holds one
   chunk (``B × K × h × w``) and the tail of the network at batch ``B``, never ``N × K × h × w``.

Two checks guard the batching: the batched logits equal a plain one-image forward, and the
first class's batched gradient equals its one-image backward (a tail that mixes the rows of a
batch leaves the logits of identical copies alone but not their gradients); either failing is a
``DataError``. The network must be in eval mode.

Why not ``torch.autograd.grad(..., is_grads_batched=True)`` (or ``torch.func`` ``vmap``) over
one batch-1 graph: on CPU, functorch runs ``convolution_backward`` under ``vmap`` as a loop
over the batch (measured: 200 classes at EfficientNet-Lite0 ``block10``, 224 × 224 input,
2.1 s batched vs 1.9 s for 200 plain backward passes), while a real batch of ``B`` copies turns
every convolution's backward into one large matrix product.

**Flat maps.** At a layer whose output feeds global average pooling directly (EfficientNet-Lite0
``head``, ResNet ``layer4.<last>``), ``∂z/∂f`` is the same at every position, so ``µ``, ``V``
and ``S_C`` are spatially constant: :class:`ImplicitSaliencyModel` refuses such a map with a
``DataError`` saying so (the statistics themselves, :func:`implicit_statistics`, are returned as
they are). The default layers (:data:`DEFAULT_LAYERS`) are mid layers. An image for which every
class gradient is zero at the layer (all paths to the logits switched off) has ``µ ≡ 0``: the
model raises a ``DataError`` naming the image (the statistics are, again, returned as zeros).

**Grad-CAM** (Selvaraju et al., ICCV 2017): ``captum.attr.LayerGradCam(...,
relu_attributions=True)`` at the chosen layer for the top-1 class (or a given one), bilinearly
upsampled (``align_corners=False``) to the image. **Guided Backprop** (Springenberg et al., ICLR
2015 workshop): captum's ``GuidedBackprop`` for ``nn.ReLU`` networks; captum only overrides
``nn.ReLU`` modules, so networks with ``nn.ReLU6`` (EfficientNet-Lite0) use
:class:`GuidedBackpropReLU6`, which applies captum's own hook to ``nn.ReLU6`` too. The map is
the largest absolute input gradient over the RGB channels (Simonyan et al., 2014), upsampled to
the image.

All four are :class:`~dissect.models.base.SaliencyModel` s: ``saliency_map(image)`` is ``(H, W)``
float64 at the image's own size; ``layers`` are the backbone's unit layers resolving in
``module`` (the backbone's network). Every network input is ``backbone.preprocess`` (optionally at
another ``input_size``), cast to the network's dtype and device.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum._utils.common import _register_backward_hook
from captum.attr import GuidedBackprop, LayerActivation, LayerGradCam
from numpy.typing import NDArray
from torch import Tensor, nn

from dissect.errors import DataError
from dissect.metrics.conventions import CONSTANT_RTOL
from dissect.models.base import ImageLike, SaliencyModel, StimulusImage, image_array

if TYPE_CHECKING:
    from dissect.backbones import Backbone
    from dissect.preprocess import Preprocess

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_LAYERS",
    "FeedForwardSaliencyModel",
    "GradCamModel",
    "GradientStatistics",
    "GuidedBackpropModel",
    "GuidedBackpropReLU6",
    "ImplicitSaliencyModel",
    "VarianceNorm",
    "default_layer",
    "feedforward_map",
    "feedforward_saliency_model",
    "gradcam_model",
    "gradient_statistics",
    "guided_backprop",
    "guided_backprop_model",
    "implicit_map",
    "implicit_saliency_model",
    "implicit_statistics",
    "normalise_variance",
    "upsample",
]

VarianceNorm = Literal["per_map", "global"]
VARIANCE_NORMS: tuple[str, ...] = ("per_map", "global")

#: Classes per batched backward pass (memory ∝ chunk × the network's tail).
DEFAULT_CHUNK: int = 32

#: Mid layers used when none is given (the last layers feed global average pooling: flat maps).
DEFAULT_LAYERS: dict[str, str] = {
    "efficientnet_lite0": "block10",
    "vgg16": "conv4_3",
    "resnet18": "layer3.1",
    "resnet50": "layer3.5",
}


# ------------------------------------------------------------------------------------------------
# statistics over classes


@dataclass(frozen=True)
class GradientStatistics:
    """Per-unit statistics of the class gradients at one layer, for one image (float64).

    ``mean`` = µ and ``var`` = V (population variance over the classes) of ``R_i = |∂J_i/∂f|``,
    ``activation`` = ``f`` itself; each ``(K, h, w)``, unit maps like activations, so they can be
    cached and dissected as such. ``classes``: the class indices ``i`` the statistics run over;
    ``probabilities``: ``softmax(z)`` over all ``N_out`` outputs (``(N_out,)``)."""

    layer: str
    classes: tuple[int, ...]
    mean: NDArray[np.float64]
    var: NDArray[np.float64]
    activation: NDArray[np.float64]
    probabilities: NDArray[np.float64]


def _class_indices(classes: int | Sequence[int] | None, n_out: int, source: str) -> list[int]:
    """``None`` → all outputs; an int ``n`` → ``0 … n−1``; a sequence → those (checked)."""
    if isinstance(classes, bool):
        raise DataError(source, f"classes must be None, a count or indices, got {classes!r}")
    if classes is None:
        idx = list(range(n_out))
    elif isinstance(classes, int | np.integer):
        if not 0 < int(classes) <= n_out:
            raise DataError(source, f"classes={int(classes)}: the network has {n_out} outputs")
        idx = list(range(int(classes)))
    else:
        idx = [int(c) for c in classes]
        bad = [c for c in idx if not 0 <= c < n_out]
        if bad:
            raise DataError(source, f"class indices {bad[:5]} out of range 0…{n_out - 1}")
        if len(set(idx)) != len(idx):
            raise DataError(source, "class indices must be unique")
    _at_least_two(len(idx), source)
    return idx


def _at_least_two(n: int, source: str) -> None:
    if n < 2:
        raise DataError(source, f"implicit saliency needs N >= 2 classes (a variance over the "
                                f"classes); got N = {n}")


def _check_eval(model: nn.Module, source: str) -> None:
    # The chunked forward relies on the rows of a batch being independent (eval-mode BatchNorm,
    # no dropout); a module left in training mode would mix them.
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise DataError(source, f"the network must be in eval mode; training: {training[:3]}")


def _forward_tail_batch(model: nn.Module, module: nn.Module, x: Tensor, batch: int, source: str,
                        *, slice_prefix: bool) -> tuple[Tensor, Tensor]:
    """Logits ``(batch, N_out)`` of ``batch`` copies of ``x`` and the leaf ``f``
    ``(batch, K, h, w)`` that replaces ``module``'s output, the graph starting at ``f``.

    The model is called on ``batch`` copies (its forward may read the batch size from its
    input). With ``slice_prefix`` the first submodule to run cuts its input back to one row, so
    the layers before ``module`` run once; the layer's output is then repeated to ``batch`` rows,
    and tensors of the prefix that the tail reuses (residual inputs) broadcast."""
    held: list[Tensor] = []
    sliced: list[bool] = []

    def first_call(_mod: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        if sliced or not args or not isinstance(args[0], Tensor) or args[0].shape[0] != batch:
            return None
        sliced.append(True)
        return (args[0][:1], *args[1:])

    def layer_hook(_mod: nn.Module, _inp: object, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise DataError(source, f"layer module returned {type(out).__name__}, not a tensor")
        if out.shape[0] not in (1, batch):
            raise DataError(source, f"layer output has batch {out.shape[0]}, expected 1 or "
                                    f"{batch}")
        # channels-last rows: oneDNN's convolution backward is ~1.5x faster on CPU that way
        # (measured at Lite0 block10); the network's own weights are left as they are.
        fmt = torch.channels_last if out.ndim == 4 else torch.contiguous_format
        f = out.detach().expand(batch, *out.shape[1:]).contiguous(memory_format=fmt)
        f.requires_grad_(True)
        held.append(f)
        # Hand the rest of the network a copy: an in-place op downstream (ReLU(inplace=True))
        # must neither modify the leaf we differentiate against nor see it as a leaf.
        return f.clone()

    handles = [module.register_forward_hook(layer_hook)]
    if slice_prefix:
        handles += [m.register_forward_pre_hook(first_call)
                    for name, m in model.named_modules() if name]
    try:
        with torch.enable_grad():
            z = model(x.expand(batch, *x.shape[1:]))
    finally:
        for h in handles:
            h.remove()
    if len(held) != 1:
        raise DataError(source, f"the layer module ran {len(held)} times in one forward; "
                                "expected exactly once")
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] != batch:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise DataError(source, f"the network must return logits (B, N_out), got {shape}")
    return z, held[0]


def _same_logits(z: Tensor, z_ref: Tensor) -> bool:
    """Every row of the batched logits equals the plain forward's (float rounding aside)."""
    if z_ref.shape != (1, z.shape[1]):
        return False
    ref = z_ref.detach().double()
    tol = 1e-4 * float(ref.abs().max()) + 1e-6
    return bool(((z.detach().double() - ref).abs() <= tol).all())


def _check_first_gradient(g: Tensor, z_ref: Tensor, f_ref: Tensor, cot: Tensor,
                          source: str) -> None:
    """The batched gradient of the first class equals the one-image backward: rows that the
    network mixes (a batch statistic in the tail) leave the logits of identical copies unchanged
    but not their gradients."""
    (g_ref,) = torch.autograd.grad(z_ref, f_ref, cot)
    ref = g_ref[0].detach().double()
    tol = 1e-4 * float(ref.abs().max()) + 1e-12
    if not bool(((g.detach().double() - ref).abs() <= tol).all()):
        raise DataError(source, "the network's gradients for a batch of copies of the image "
                                "differ from those of the image alone: the rows of a batch are "
                                "not independent")


def gradient_statistics(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    *,
    source: str = "image",
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """µ, V and ``f`` at ``module``'s output for one preprocessed image ``x`` ``(1, 3, h, w)``.

    Returns float64 ``(mean, var, activation, probabilities, classes)``: ``mean`` / ``var`` /
    ``activation`` ``(K, h', w')``, ``probabilities`` ``(N_out,)``. ``model(x)`` must give logits
    ``(B, N_out)``; ``module`` must run exactly once per forward and return one tensor. See the
    module docstring for the chunked computation (chunks of ``chunk_size`` classes; the last one
    padded with zero cotangents). Errors name ``source``.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise DataError(source, f"expected one preprocessed image (1, C, h, w), got "
                                f"{tuple(x.shape)}")
    if isinstance(chunk_size, bool) or int(chunk_size) < 1:
        raise DataError(source, f"chunk_size must be >= 1, got {chunk_size!r}")
    _check_eval(model, source)
    # The batch size: the chunk, or fewer rows when fewer classes were asked for (a count that
    # is wrong whatever the network is refused before any forward).
    batch = int(chunk_size)
    if classes is not None:
        n_asked = int(classes) if isinstance(classes, int | np.integer) else len(classes)
        _at_least_two(n_asked, source)
        batch = min(batch, n_asked)

    # The plain one-image forward (graph from the layer on), against which the batched forward
    # and the first class's batched gradient are checked.
    z_ref, f_ref = _forward_tail_batch(model, module, x, 1, source, slice_prefix=False)
    z = f = None
    for slice_prefix in (True, False):
        try:
            z, f = _forward_tail_batch(model, module, x, batch, source,
                                       slice_prefix=slice_prefix)
        except RuntimeError:
            # The tail mixed a one-row prefix tensor with the batch in a way broadcasting does
            # not cover (e.g. a concatenation): run the whole network on the copies instead.
            continue
        if _same_logits(z, z_ref):
            break
        z = f = None
    if z is None or f is None:
        raise DataError(source, "the network's logits for a batch of copies of the image differ "
                                "from its logits for the image alone: the rows of a batch are "
                                "not independent")
    n_out = int(z.shape[1])
    idx = _class_indices(classes, n_out, source)
    p = torch.softmax(z[0].detach().double(), dim=0)

    count = 0
    mean = torch.zeros(f.shape[1:], dtype=torch.float64, device=f.device)
    m2 = torch.zeros_like(mean)
    rows = torch.arange(batch, device=z.device)
    for start in range(0, len(idx), batch):
        chunk = torch.as_tensor(idx[start:start + batch], device=z.device)
        b = len(chunk)
        # ∂J_i/∂z = p − e_i (one row per class); padding rows stay zero.
        cot = torch.zeros(batch, n_out, dtype=torch.float64, device=z.device)
        cot[:b] = p
        cot[rows[:b], chunk] -= 1.0
        (g,) = torch.autograd.grad(z, f, cot.to(z.dtype), retain_graph=True)
        if start == 0:
            _check_first_gradient(g[0], z_ref, f_ref, cot[:1].to(z.dtype), source)
            del z_ref, f_ref
        r = g[:b].detach().abs()  # R_i = |g_i|, (b, K, h, w), in the network's dtype
        # Chan, Golub & LeVeque's pairwise update of (count, mean, M2) in float64: exact, and
        # stable where E[R²] − µ² would cancel. The chunk's own two-pass moments are taken in
        # the gradient's dtype (they are as precise as the gradients themselves).
        c_mean = r.mean(dim=0)
        c_m2 = ((r - c_mean) ** 2).sum(dim=0).double()
        c_mean = c_mean.double()
        delta = c_mean - mean
        total = count + b
        mean = mean + delta * (b / total)
        m2 = m2 + c_m2 + delta**2 * (count * b / total)
        count = total
    var = m2 / count
    return mean, var, f[0].detach().double(), p, idx


# ------------------------------------------------------------------------------------------------
# the maps


def normalise_variance(var: Tensor, mode: VarianceNorm = "per_map") -> Tensor:
    """``V̂`` of ``V`` ``(K, h, w)``: min–max over each channel's map (``"per_map"``) or over the
    whole tensor (``"global"``); a constant map (range ≤ ``CONSTANT_RTOL`` × max|V|) → 0."""
    if mode not in VARIANCE_NORMS:
        raise DataError("variance_norm", f"unknown {mode!r}; choose one of {VARIANCE_NORMS}")
    if var.ndim != 3:
        raise DataError("variance", f"expected (K, h, w), got {tuple(var.shape)}")
    dims = (1, 2) if mode == "per_map" else (0, 1, 2)
    lo = var.amin(dim=dims, keepdim=True)
    span = var.amax(dim=dims, keepdim=True) - lo
    scale = var.abs().amax(dim=dims, keepdim=True)
    constant = span <= CONSTANT_RTOL * scale
    out = (var - lo) / torch.where(constant, torch.ones_like(span), span)
    return torch.where(constant, torch.zeros_like(out), out)


def implicit_map(mean: Tensor, var: Tensor, variance_norm: VarianceNorm = "per_map") -> Tensor:
    """``S = (1/K) Σ_k (1 − V̂_k) ∘ µ_k`` (Sun et al. 2020, the map ``S_C``), ``(h, w)``, from
    ``µ`` and ``V`` ``(K, h, w)`` (:func:`normalise_variance` gives ``V̂``)."""
    if mean.shape != var.shape:
        raise DataError("statistics", f"mean {tuple(mean.shape)} and variance "
                                      f"{tuple(var.shape)} differ in shape")
    return ((1.0 - normalise_variance(var, variance_norm)) * mean).mean(dim=0)


def feedforward_map(activation: Tensor, variance_norm: VarianceNorm = "per_map") -> Tensor:
    """``S_F``: :func:`implicit_map` of the activations taken as the per-class quantity,
    constant over the classes (``µ = |A|``, ``V = 0``), i.e. ``(1/K) Σ_k |A_k|``, ``(h, w)``."""
    a = activation.abs()
    return implicit_map(a, torch.zeros_like(a), variance_norm)


def upsample(saliency: Tensor, size: tuple[int, int]) -> NDArray[np.float64]:
    """A ``(h, w)`` map bilinearly resized (``align_corners=False``) to ``size``, float64."""
    m = saliency.detach().double()[None, None]
    out = F.interpolate(m, size=tuple(int(s) for s in size), mode="bilinear",
                        align_corners=False)
    return out[0, 0].cpu().numpy()


# ------------------------------------------------------------------------------------------------
# guided backprop


class GuidedBackpropReLU6(GuidedBackprop):
    """captum's ``GuidedBackprop`` that also guides ``nn.ReLU6`` modules.

    captum registers its gradient override only on ``nn.ReLU`` (``_register_hooks``). Its hook
    replaces the gradient at the activation's input by ``relu(grad_input)``; for ReLU6,
    ``grad_input = 1[0 < x < 6] · grad_output``, so the same hook gives ``1[0 < x < 6] ·
    relu(grad_output)``, exactly guided backprop's rule (only positive gradients pass, only
    through the active range). So the only hand-written part is registering that hook on ReLU6.
    """

    def _register_hooks(self, module: nn.Module) -> None:
        if isinstance(module, nn.ReLU6):
            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))
        else:
            super()._register_hooks(module)


_UNGUIDED = (nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU)


def guided_backprop(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """Guided-backprop gradient of logit ``target`` w.r.t. the input ``x`` (same shape).

    captum's ``GuidedBackprop`` when the network has no ``nn.ReLU6``, else
    :class:`GuidedBackpropReLU6`. Activations applied functionally (``F.relu``) or of other
    kinds are not guided (a warning names the latter)."""
    kinds = {type(m) for m in model.modules()}
    other = sorted(k.__name__ for k in kinds if issubclass(k, _UNGUIDED))
    if other:
        warnings.warn(f"guided backprop guides ReLU/ReLU6 only; not {other}", stacklevel=2)
    cls = GuidedBackpropReLU6 if any(issubclass(k, nn.ReLU6) for k in kinds) else GuidedBackprop
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        inp = x.detach().clone().requires_grad_(True)
        return cls(model).attribute(inp, target=int(target)).detach()


# ------------------------------------------------------------------------------------------------
# models of the shared interface


def _param(model: nn.Module) -> Tensor:
    p = next(model.parameters(), None)
    return p if p is not None else torch.zeros(())


class _BackboneSaliency(SaliencyModel):
    """Shared parts: the backbone, its preprocessing (optionally at ``input_size``), the chosen
    layer, ``layers`` / ``module`` of the shared interface."""

    def __init__(self, backbone: Backbone, layer: str | None, input_size: tuple[int, int] | None,
                 name: str):
        self.backbone = backbone
        if layer is not None and layer not in backbone.layers:
            raise DataError(layer, f"{backbone.name} has no layer {layer!r}; known: "
                                   f"{list(backbone.layers)}")
        self.layer = layer
        pre = backbone.preprocess
        self.preprocess: Preprocess = (
            pre if input_size is None else dataclasses.replace(pre, size=tuple(input_size))
        )
        self.name = name
        self.layers = dict(backbone.layers)

    @property
    def module(self) -> nn.Module:
        return self.backbone.model

    def _input(self, image: ImageLike) -> tuple[Tensor, tuple[int, int], str]:
        arr = image_array(image)
        source = image.id if isinstance(image, StimulusImage) else "image"
        p = _param(self.backbone.model)
        x = self.preprocess(arr).to(p.device, p.dtype)
        return x, (int(arr.shape[0]), int(arr.shape[1])), source

    def _top1(self, x: Tensor) -> int:
        with torch.no_grad():
            return int(self.backbone.model(x)[0].argmax())


class ImplicitSaliencyModel(_BackboneSaliency):
    """``S_C`` of Sun et al. at one layer (see the module docstring), upsampled to the image.

    ``classes``: None (all outputs), ``n`` (classes ``0 … n−1``) or indices; ``chunk_size``:
    classes per batched backward; ``variance_norm``: ``"per_map"`` or ``"global"``. A spatially
    constant map (a layer feeding global average pooling) or all-zero class gradients →
    ``DataError`` naming the image."""

    def __init__(self, backbone: Backbone, layer: str, *, classes: int | Sequence[int] | None,
                 chunk_size: int = DEFAULT_CHUNK, variance_norm: VarianceNorm = "per_map",
                 input_size: tuple[int, int] | None = None, name: str | None = None):
        if variance_norm not in VARIANCE_NORMS:
            raise DataError("variance_norm", f"unknown {variance_norm!r}; choose one of "
                                             f"{VARIANCE_NORMS}")
        super().__init__(backbone, layer, input_size, name or f"implicit_{layer}")
        self.classes = classes
        self.chunk_size = int(chunk_size)
        self.variance_norm: VarianceNorm = variance_norm

    def statistics(self, image: ImageLike) -> GradientStatistics:
        """µ, V and the activation at the layer for ``image`` (:func:`implicit_statistics`)."""
        x, _, source = self._input(image)
        return _statistics(self.backbone, str(self.layer), x, self.classes, self.chunk_size,
                           source)

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        x, size, source = self._input(image)
        st = _statistics(self.backbone, str(self.layer), x, self.classes, self.chunk_size, source)
        mean, var = torch.from_numpy(st.mean), torch.from_numpy(st.var)
        if not bool((mean > 0).any()):
            raise DataError(source, f"every class gradient is zero at layer {self.layer}: no "
                                    "path from the logits to this layer is active for this image")
        s = implicit_map(mean, var, self.variance_norm)
        if float(s.max() - s.min()) <= CONSTANT_RTOL * float(s.abs().max()):
            raise DataError(source, f"S_C at layer {self.layer} is spatially constant: the class "
                                    "gradients are the same at every position (the layer feeds "
                                    "global average pooling, or its map is 1x1); use a mid layer, "
                                    f"e.g. {DEFAULT_LAYERS.get(self.backbone.name, 'an earlier')}")
        return upsample(s, size)


class FeedForwardSaliencyModel(_BackboneSaliency):
    """``S_F`` at one layer: :func:`feedforward_map` of the activations (captum
    ``LayerActivation``), upsampled to the image."""

    def __init__(self, backbone: Backbone, layer: str, *,
                 input_size: tuple[int, int] | None = None, name: str | None = None):
        super().__init__(backbone, layer, input_size, name or f"feedforward_{layer}")

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        x, size, _ = self._input(image)
        module = self.backbone.module(str(self.layer))
        with torch.no_grad():
            act = LayerActivation(self.backbone.model, module).attribute(x)
        return upsample(feedforward_map(act[0].double()), size)


class GradCamModel(_BackboneSaliency):
    """Grad-CAM at one layer: ``captum.attr.LayerGradCam(..., relu_attributions=True)`` for
    ``target`` (None: the top-1 class), bilinearly upsampled to the image."""

    def __init__(self, backbone: Backbone, layer: str, *, target: int | None = None,
                 input_size: tuple[int, int] | None = None, name: str | None = None):
        super().__init__(backbone, layer, input_size, name or f"gradcam_{layer}")
        self.target = target

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        x, size, _ = self._input(image)
        target = self._top1(x) if self.target is None else int(self.target)
        cam = LayerGradCam(self.backbone.model, self.backbone.module(str(self.layer)))
        attr = cam.attribute(x, target=target, relu_attributions=True)
        return upsample(attr[0, 0], size)


class GuidedBackpropModel(_BackboneSaliency):
    """Guided Backprop (:func:`guided_backprop`) for ``target`` (None: the top-1 class); the map
    is ``max_c |∂/∂x_c|`` over the RGB channels of the network input, upsampled to the image."""

    def __init__(self, backbone: Backbone, *, target: int | None = None,
                 input_size: tuple[int, int] | None = None, name: str | None = None):
        super().__init__(backbone, None, input_size, name or "guided_backprop")
        self.target = target

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        x, size, _ = self._input(image)
        target = self._top1(x) if self.target is None else int(self.target)
        grad = guided_backprop(self.backbone.model, x, target)
        return upsample(grad[0].abs().amax(dim=0), size)


# ------------------------------------------------------------------------------------------------
# functions and factories


def _statistics(backbone: Backbone, layer: str, x: Tensor, classes: int | Sequence[int] | None,
                chunk_size: int, source: str) -> GradientStatistics:
    if layer not in backbone.layers:
        raise DataError(layer, f"{backbone.name} has no layer {layer!r}; known: "
                               f"{list(backbone.layers)}")
    mean, var, act, p, idx = gradient_statistics(
        backbone.model, backbone.module(layer), x, classes, chunk_size, source=source)
    arrays = [np.ascontiguousarray(t.cpu().numpy()) for t in (mean, var, act, p)]
    return GradientStatistics(layer, tuple(idx), *arrays)


def implicit_statistics(
    backbone: Backbone,
    image: ImageLike,
    layer: str | None = None,
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    input_size: tuple[int, int] | None = None,
) -> GradientStatistics:
    """Per-unit gradient statistics (µ, V: ``(K, h, w)`` float64) and activations of ``image``
    at ``layer`` (default :func:`default_layer`), for caching and dissecting like activations.
    Zero gradients and flat maps are returned as they are (only the maps refuse them)."""
    model = ImplicitSaliencyModel(backbone, layer or default_layer(backbone), classes=classes,
                                  chunk_size=chunk_size, input_size=input_size)
    return model.statistics(image)


def default_layer(backbone: Backbone) -> str:
    """:data:`DEFAULT_LAYERS` for the backbone, else its middle unit layer."""
    if backbone.name in DEFAULT_LAYERS and DEFAULT_LAYERS[backbone.name] in backbone.layers:
        return DEFAULT_LAYERS[backbone.name]
    names = list(backbone.layers)
    return names[(len(names) - 1) // 2]


def _backbone(backbone: str | Backbone, weights: str | None) -> Backbone:
    if isinstance(backbone, str):
        from dissect.backbones import load_backbone

        return load_backbone(backbone, weights=weights)  # type: ignore[arg-type]
    return backbone


# These factories get registered (``@register_model("implicit_saliency")``, ``"feedforward_
# saliency"``, ``"gradcam"``, ``"guided_backprop"``) when this module joins
# dissect.models.base.BUILTIN_MODULES; until then they are plain functions.


def implicit_saliency_model(
    backbone: str | Backbone = "efficientnet_lite0",
    layer: str | None = None,
    weights: str | None = "imagenet",
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    variance_norm: VarianceNorm = "per_map",
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> ImplicitSaliencyModel:
    """Implicit saliency ``S_C`` (Sun et al. 2020) of a backbone (by name, loaded with
    ``weights``, or a built ``Backbone``) at ``layer`` (default :func:`default_layer`)."""
    bb = _backbone(backbone, weights)
    return ImplicitSaliencyModel(bb, layer or default_layer(bb), classes=classes,
                                 chunk_size=chunk_size, variance_norm=variance_norm,
                                 input_size=input_size, name=name)


def feedforward_saliency_model(
    backbone: str | Backbone = "efficientnet_lite0",
    layer: str | None = None,
    weights: str | None = "imagenet",
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> FeedForwardSaliencyModel:
    """The feed-forward counterpart ``S_F`` (mean absolute activation over the channels)."""
    bb = _backbone(backbone, weights)
    return FeedForwardSaliencyModel(bb, layer or default_layer(bb), input_size=input_size,
                                    name=name)


def gradcam_model(
    backbone: str | Backbone = "efficientnet_lite0",
    layer: str | None = None,
    weights: str | None = "imagenet",
    target: int | None = None,
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> GradCamModel:
    """Grad-CAM (captum ``LayerGradCam``) at ``layer`` for ``target`` (None: top-1)."""
    bb = _backbone(backbone, weights)
    return GradCamModel(bb, layer or default_layer(bb), target=target, input_size=input_size,
                        name=name)


def guided_backprop_model(
    backbone: str | Backbone = "efficientnet_lite0",
    weights: str | None = "imagenet",
    target: int | None = None,
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> GuidedBackpropModel:
    """Guided Backprop (captum, ReLU6 included) for ``target`` (None: top-1)."""
    return GuidedBackpropModel(_backbone(backbone, weights), target=target,
                               input_size=input_size, name=name)


