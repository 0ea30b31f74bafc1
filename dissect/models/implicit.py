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
import hashlib
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
from dissect.models.base import (
    ImageLike,
    SaliencyModel,
    StimulusImage,
    image_array,
    register_model,
)

if TYPE_CHECKING:
    from dissect.backbones import Backbone
    from dissect.preprocess import Preprocess

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_LAYERS",
    "FeedForwardSaliencyModel",
    "GradCamModel",
    "GradientStatistics",
    "GradientStatisticsNet",
    "GuidedBackpropModel",
    "GuidedBackpropReLU6",
    "ImplicitSaliencyModel",
    "VarianceNorm",
    "default_layer",
    "feedforward_map",
    "feedforward_saliency_model",
    "gradcam_model",
    "gradient_statistics",
    "gradient_statistics_layers",
    "guided_backprop",
    "guided_backprop_model",
    "implicit_map",
    "implicit_saliency_model",
    "implicit_statistics",
    "normalise_variance",
    "statistics_backbone",
    "statistics_id",
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


def _forward_tail_batch(model: nn.Module, modules: Sequence[nn.Module], x: Tensor, batch: int,
                        source: str, *, slice_prefix: bool) -> tuple[Tensor, list[Tensor]]:
    """Logits ``(batch, N_out)`` of ``batch`` copies of ``x`` and, per module of ``modules`` (in
    the given order), its output ``(batch, K, h, w)`` in the graph: the module that runs first
    is replaced by a leaf ``f`` repeating its output ``batch`` times (the graph starts there);
    the later ones are the tensors the rest of the network is computed from.

    The model is called on ``batch`` copies (its forward may read the batch size from its
    input). With ``slice_prefix`` the first submodule to run cuts its input back to one row, so
    the layers before the first module run once; that module's output is then repeated to
    ``batch`` rows, and tensors of the prefix that the tail reuses (residual inputs) broadcast."""
    held: dict[int, Tensor] = {}
    sliced: list[bool] = []

    def first_call(_mod: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        if sliced or not args or not isinstance(args[0], Tensor) or args[0].shape[0] != batch:
            return None
        sliced.append(True)
        return (args[0][:1], *args[1:])

    def layer_hook(pos: int):
        def hook(_mod: nn.Module, _inp: object, out: object) -> Tensor:
            if not isinstance(out, Tensor):
                raise DataError(source, f"layer module returned {type(out).__name__}, not a "
                                        "tensor")
            if pos in held:
                raise DataError(source, "a layer module ran more than once in one forward; "
                                        "expected exactly once")
            leaves = list(held.values())
            if leaves and _depends_on(out, leaves):
                # a later layer, downstream of a leaf: already in its graph, at batch ``batch``
                if out.shape[0] != batch:
                    raise DataError(source, f"layer output has batch {out.shape[0]}, expected "
                                            f"{batch}")
                held[pos] = out
                # the rest of the network gets a copy, so an in-place op downstream cannot
                # modify the tensor we differentiate against
                return out.clone()
            # a leaf: the first layer to run, or one on a branch that no earlier leaf feeds (a
            # sibling: its gradient is the partial derivative along its own path)
            if out.shape[0] not in (1, batch):
                raise DataError(source, f"layer output has batch {out.shape[0]}, expected 1 or "
                                        f"{batch}")
            # channels-last rows: oneDNN's convolution backward is ~1.5x faster on CPU that way
            # (measured at Lite0 block10); the network's own weights are left as they are.
            fmt = torch.channels_last if out.ndim == 4 else torch.contiguous_format
            f = out.detach().expand(batch, *out.shape[1:]).contiguous(memory_format=fmt)
            f.requires_grad_(True)
            held[pos] = f
            # Hand the rest of the network a copy: an in-place op downstream
            # (ReLU(inplace=True)) must neither modify the leaf nor see it as a leaf.
            return f.clone()
        return hook

    handles = [m.register_forward_hook(layer_hook(i)) for i, m in enumerate(modules)]
    if slice_prefix:
        handles += [m.register_forward_pre_hook(first_call)
                    for name, m in model.named_modules() if name]
    try:
        with torch.enable_grad():
            z = model(x.expand(batch, *x.shape[1:]))
    finally:
        for h in handles:
            h.remove()
    if len(held) != len(modules):
        raise DataError(source, f"{len(modules) - len(held)} of the layer modules did not run "
                                "in the forward pass")
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] != batch:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise DataError(source, f"the network must return logits (B, N_out), got {shape}")
    return z, [held[i] for i in range(len(modules))]


def _depends_on(t: Tensor, leaves: Sequence[Tensor]) -> bool:
    """Whether ``t`` was computed from one of the leaf tensors ``leaves`` (a walk of its
    autograd graph; the network's parameters are leaves too, so ``requires_grad`` cannot tell)."""
    targets = {id(leaf) for leaf in leaves}
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in targets:
            return True
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return False


def _same_logits(z: Tensor, z_ref: Tensor) -> bool:
    """Every row of the batched logits equals the plain forward's (float rounding aside)."""
    if z_ref.shape != (1, z.shape[1]):
        return False
    ref = z_ref.detach().double()
    tol = 1e-4 * float(ref.abs().max()) + 1e-6
    return bool(((z.detach().double() - ref).abs() <= tol).all())


def _check_first_gradient(gs: Sequence[Tensor], z_ref: Tensor, f_ref: Sequence[Tensor],
                          cot: Tensor, source: str) -> None:
    """The batched gradients of the first class equal the one-image backward: rows that the
    network mixes (a batch statistic in the tail) leave the logits of identical copies unchanged
    but not their gradients.

    "Equal" is ``‖g − g_ref‖ ≤ 1e-2 ‖g_ref‖`` per layer, not elementwise: in float32 the batched
    and the single-image passes round differently, and a unit at a ReLU/ReLU6 threshold (0 or 6)
    can fall on the other side in one of them, switching its gradient on or off at one position
    (seen on OSIE with EfficientNet-Lite0's float32 weights); a network mixing the rows changes
    the gradient as a whole."""
    refs = torch.autograd.grad(z_ref, list(f_ref), cot)
    for k, (g, g_ref) in enumerate(zip(gs, refs, strict=True)):
        ref = g_ref[0].detach().double()
        diff = float((g.detach().double() - ref).norm())
        scale = float(ref.norm())
        if diff > 1e-2 * scale + 1e-12:
            raise DataError(source, f"the network's gradients for a batch of copies of the "
                                    f"image differ from those of the image alone at layer "
                                    f"{k + 1} of {len(gs)} (relative difference "
                                    f"{diff / max(scale, 1e-300):.2g}): the rows of a batch are "
                                    "not independent")


@dataclass
class _Moments:
    """Running (count, mean, M2) of ``R`` over classes, float64, updated by whole chunks with
    the exact pairwise formula of Chan, Golub & LeVeque (stable where E[R²] − µ² would
    cancel)."""

    mean: Tensor
    m2: Tensor
    count: int = 0

    def add(self, r: Tensor) -> None:
        b = int(r.shape[0])
        # the chunk's own two-pass moments in the gradient's dtype (as precise as the
        # gradients themselves), then folded in float64
        c_mean = r.mean(dim=0)
        c_m2 = ((r - c_mean) ** 2).sum(dim=0).double()
        delta = c_mean.double() - self.mean
        total = self.count + b
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + c_m2 + delta**2 * (self.count * b / total)
        self.count = total


def gradient_statistics_layers(
    model: nn.Module,
    modules: Sequence[nn.Module],
    x: Tensor,
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    *,
    source: str = "image",
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor, list[int]]:
    """µ, V and ``f`` at the output of every module of ``modules`` for one preprocessed image
    ``x`` ``(1, 3, h, w)``, from **one** batched backward per chunk of classes (the graph starts
    at the module that runs first; the gradients at the later ones come out of the same pass).

    Returns ``([(mean, var, activation) per module], probabilities, classes)``, float64:
    ``mean`` / ``var`` / ``activation`` ``(K, h', w')`` per module, ``probabilities``
    ``(N_out,)``. ``model(x)`` must give logits ``(B, N_out)``; each module must run exactly once
    per forward and return one tensor. See the module docstring for the chunked computation
    (chunks of ``chunk_size`` classes; the last one padded with zero cotangents). Errors name
    ``source``.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise DataError(source, f"expected one preprocessed image (1, C, h, w), got "
                                f"{tuple(x.shape)}")
    if isinstance(chunk_size, bool) or int(chunk_size) < 1:
        raise DataError(source, f"chunk_size must be >= 1, got {chunk_size!r}")
    modules = list(modules)
    if not modules or len({id(m) for m in modules}) != len(modules):
        raise DataError(source, "give one or more distinct layer modules")
    _check_eval(model, source)
    # The batch size: the chunk, or fewer rows when fewer classes were asked for (a count that
    # is wrong whatever the network is refused before any forward).
    batch = int(chunk_size)
    if classes is not None:
        n_asked = int(classes) if isinstance(classes, int | np.integer) else len(classes)
        _at_least_two(n_asked, source)
        batch = min(batch, n_asked)

    # The plain one-image forward (graph from the first layer on), against which the batched
    # forward and the first class's batched gradients are checked.
    z_ref, f_ref = _forward_tail_batch(model, modules, x, 1, source, slice_prefix=False)
    z = None
    fs: list[Tensor] = []
    for slice_prefix in (True, False):
        try:
            z, fs = _forward_tail_batch(model, modules, x, batch, source,
                                        slice_prefix=slice_prefix)
        except RuntimeError:
            # The tail mixed a one-row prefix tensor with the batch in a way broadcasting does
            # not cover (e.g. a concatenation): run the whole network on the copies instead.
            continue
        if _same_logits(z, z_ref):
            break
        z = None
    if z is None:
        raise DataError(source, "the network's logits for a batch of copies of the image differ "
                                "from its logits for the image alone: the rows of a batch are "
                                "not independent")
    n_out = int(z.shape[1])
    idx = _class_indices(classes, n_out, source)
    p = torch.softmax(z[0].detach().double(), dim=0)

    moments = [_Moments(torch.zeros(f.shape[1:], dtype=torch.float64, device=f.device),
                        torch.zeros(f.shape[1:], dtype=torch.float64, device=f.device))
               for f in fs]
    rows = torch.arange(batch, device=z.device)
    for start in range(0, len(idx), batch):
        chunk = torch.as_tensor(idx[start:start + batch], device=z.device)
        b = len(chunk)
        # ∂J_i/∂z = p − e_i (one row per class); padding rows stay zero.
        cot = torch.zeros(batch, n_out, dtype=torch.float64, device=z.device)
        cot[:b] = p
        cot[rows[:b], chunk] -= 1.0
        gs = torch.autograd.grad(z, fs, cot.to(z.dtype), retain_graph=True)
        if start == 0:
            _check_first_gradient([g[0] for g in gs], z_ref, f_ref, cot[:1].to(z.dtype),
                                  source)
            del z_ref, f_ref
        for mom, g in zip(moments, gs, strict=True):
            mom.add(g[:b].detach().abs())  # R_i = |g_i|, (b, K, h, w)
    out = [(m.mean, m.m2 / m.count, f[0].detach().double()) for m, f in zip(moments, fs,
                                                                             strict=True)]
    return out, p, idx


def gradient_statistics(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    *,
    source: str = "image",
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """µ, V and ``f`` at one ``module``'s output (:func:`gradient_statistics_layers` with one
    module): float64 ``(mean, var, activation, probabilities, classes)``."""
    [(mean, var, act)], p, idx = gradient_statistics_layers(model, [module], x, classes,
                                                            chunk_size, source=source)
    return mean, var, act, p, idx


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
    layer, ``layers`` / ``module`` of the shared interface.

    The maps hook the modules of the backbone's network while they run, so they are computed
    under that network's lock (:func:`dissect.cache._model_lock`, the lock the activation cache
    takes too): two models sharing one backbone, or one model on two threads (``evaluate``'s Dask
    tasks), run one map at a time; models on separate backbones run in parallel."""

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

    @property
    def lock(self) -> threading.Lock:
        """The lock of the backbone's network (one per ``nn.Module``, shared by every user)."""
        from dissect.cache import _model_lock

        return _model_lock(self.backbone.model)

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        with self.lock:
            return self._map(image)

    def _map(self, image: ImageLike) -> NDArray[np.float64]:
        raise NotImplementedError


class ImplicitSaliencyModel(_BackboneSaliency):
    """``S_C`` of Sun et al. at one layer (see the module docstring), upsampled to the image.

    ``classes``: None (all outputs), ``n`` (classes ``0 … n−1``) or indices; ``chunk_size``:
    classes per batched backward; ``variance_norm``: ``"per_map"`` or ``"global"``; ``store``
    and ``images``: a gradient-statistics store (:func:`statistics_backbone`) of images of the
    dataset ``images``, read for a stimulus that is one of them (:class:`_StatisticsStore`). A
    spatially constant map (a layer feeding global average pooling) or all-zero class gradients
    → ``DataError`` naming the image."""

    def __init__(self, backbone: Backbone, layer: str, *, classes: int | Sequence[int] | None,
                 chunk_size: int = DEFAULT_CHUNK, variance_norm: VarianceNorm = "per_map",
                 input_size: tuple[int, int] | None = None, name: str | None = None,
                 store: str | Path | None = None, images: object | None = None):
        if variance_norm not in VARIANCE_NORMS:
            raise DataError("variance_norm", f"unknown {variance_norm!r}; choose one of "
                                             f"{VARIANCE_NORMS}")
        super().__init__(backbone, layer, input_size, name or f"implicit_{layer}")
        self.classes = classes
        self.chunk_size = int(chunk_size)
        self.variance_norm: VarianceNorm = variance_norm
        self.store = None if store is None else _StatisticsStore(
            Path(store), statistics_id(backbone, classes, self.chunk_size), self.preprocess,
            layer, images)

    def statistics(self, image: ImageLike) -> GradientStatistics:
        """µ, V and the activation at the layer for ``image`` (:func:`implicit_statistics`)."""
        x, _, source = self._input(image)
        with self.lock:
            return _statistics(self.backbone, str(self.layer), x, self.classes,
                               self.chunk_size, source)

    def _map(self, image: ImageLike) -> NDArray[np.float64]:
        cached = self.store.get(image) if self.store is not None else None
        if cached is not None:
            mean, var = cached
            size = image_array(image).shape[:2]
            source = image.id if isinstance(image, StimulusImage) else "image"
        else:
            x, size, source = self._input(image)
            st = _statistics(self.backbone, str(self.layer), x, self.classes, self.chunk_size,
                             source)
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
        return upsample(s, (int(size[0]), int(size[1])))


class FeedForwardSaliencyModel(_BackboneSaliency):
    """``S_F`` at one layer: :func:`feedforward_map` of the activations (captum
    ``LayerActivation``), upsampled to the image."""

    def __init__(self, backbone: Backbone, layer: str, *,
                 input_size: tuple[int, int] | None = None, name: str | None = None):
        super().__init__(backbone, layer, input_size, name or f"feedforward_{layer}")

    def _map(self, image: ImageLike) -> NDArray[np.float64]:
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

    def _map(self, image: ImageLike) -> NDArray[np.float64]:
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

    def _map(self, image: ImageLike) -> NDArray[np.float64]:
        x, size, _ = self._input(image)
        target = self._top1(x) if self.target is None else int(self.target)
        grad = guided_backprop(self.backbone.model, x, target)
        return upsample(grad[0].abs().amax(dim=0), size)


# ------------------------------------------------------------------------------------------------
# the gradient-statistics cache: µ and V per unit, stored and dissected like activations

#: Store layer name of a layer's variance map (its µ map is stored under the layer's own name).
VAR_SUFFIX = "_var"


def statistics_id(backbone: Backbone, classes: int | Sequence[int] | None,
                  chunk_size: int = DEFAULT_CHUNK) -> str:
    """What the statistics depend on besides the image and the preprocessing: the backbone's
    weights, the classes, the chunk size (float rounding) and the source of the code computing
    them (:data:`_STATISTICS_CODE`; an edit elsewhere in this module, e.g. to Grad-CAM, keeps
    the store). The activation cache keys a store by it (``weights_id``), so a change to any of
    them rebuilds the store rather than reusing it."""
    import inspect

    code = hashlib.sha256("".join(inspect.getsource(o) for o in _STATISTICS_CODE).encode())
    if classes is None:
        cls = "all"
    elif isinstance(classes, int | np.integer):
        cls = f"first{int(classes)}"
    else:
        cls = ",".join(str(int(c)) for c in classes)
    text = f"{backbone.weights_id}|{cls}|{int(chunk_size)}|{code.hexdigest()[:16]}"
    return "implicit-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class GradientStatisticsNet(nn.Module):
    """A network whose "units" are the class-gradient statistics of another's layers.

    ``forward(x)`` runs :func:`gradient_statistics_layers` on each image of the batch (one
    batched backward per chunk of classes for all ``layers`` at once) and passes µ of layer
    ``L`` through the identity module ``mean.L`` and V through ``var.L`` (float32), so the
    activation cache (:mod:`dissect.cache`, via :func:`statistics_backbone`) stores them with
    its locks, checksums and resumption. Returns ``softmax(z)`` ``(B, N_out)``."""

    def __init__(self, backbone: Backbone, layers: Sequence[str],
                 classes: int | Sequence[int] | None = None, chunk_size: int = DEFAULT_CHUNK):
        super().__init__()
        unknown = [n for n in layers if n not in backbone.layers]
        if unknown or not layers:
            raise DataError(backbone.name, f"no layer(s) {unknown or '(none given)'}; known: "
                                           f"{list(backbone.layers)}")
        order = list(backbone.layers)
        self.layer_names = sorted(dict.fromkeys(layers), key=order.index)
        self.paths = [backbone.layers[n] for n in self.layer_names]
        self.net = backbone.model
        self.classes = classes
        self.chunk_size = int(chunk_size)
        self.mean = nn.ModuleDict({n: nn.Identity() for n in self.layer_names})
        self.var = nn.ModuleDict({n: nn.Identity() for n in self.layer_names})
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        modules = [self.net.get_submodule(p) for p in self.paths]
        x = x.to(_param(self.net).dtype)  # the cache feeds float32
        means: list[list[Tensor]] = [[] for _ in modules]
        variances: list[list[Tensor]] = [[] for _ in modules]
        probs = []
        with torch.enable_grad():
            for b in range(x.shape[0]):
                stats, p, _ = gradient_statistics_layers(
                    self.net, modules, x[b:b + 1], self.classes, self.chunk_size,
                    source=f"image {b} of the batch")
                for j, (mean, var, _act) in enumerate(stats):
                    means[j].append(mean.float())
                    variances[j].append(var.float())
                probs.append(p.float())
        for j, n in enumerate(self.layer_names):
            self.mean[n](torch.stack(means[j]))
            self.var[n](torch.stack(variances[j]))
        return torch.stack(probs)


def statistics_backbone(backbone: Backbone, layers: Sequence[str],
                        classes: int | Sequence[int] | None = None,
                        chunk_size: int = DEFAULT_CHUNK) -> Backbone:
    """:class:`GradientStatisticsNet` as a dissect :class:`~dissect.backbones.Backbone` with
    the backbone's preprocessing: unit layer ``L`` = µ of layer ``L``, ``L`` +
    :data:`VAR_SUFFIX` = V; ``weights_id`` = :func:`statistics_id`. Fill a store with
    ``dissect.cache.extract_activations`` (or the ``extract`` stage's ``extract_store``) in
    ``float32`` (float16 flushes small variances to zero)."""
    from dissect.backbones import Backbone as _Backbone

    clash = [n for n in layers if n + VAR_SUFFIX in backbone.layers]
    if clash:
        raise DataError(backbone.name, f"layer(s) {clash}: the backbone also has layers named "
                                       f"<layer>{VAR_SUFFIX}, the store's names for V")
    net = GradientStatisticsNet(backbone, layers, classes, chunk_size)
    units = {n: f"mean.{n}" for n in net.layer_names}
    units.update({n + VAR_SUFFIX: f"var.{n}" for n in net.layer_names})
    return _Backbone(f"{backbone.name}_class_gradients", net, [("statistics", net)], units,
                     statistics_id(backbone, classes, chunk_size), backbone.preprocess)


#: The code the cached statistics come from (:func:`statistics_id` hashes its source).
_STATISTICS_CODE = (_class_indices, _forward_tail_batch, _depends_on, _same_logits,
                    _check_first_gradient, _Moments, gradient_statistics_layers,
                    GradientStatisticsNet)


class _StatisticsStore:
    """µ and V of one layer read from a gradient-statistics store, for the images it holds.

    Opened only if it was computed with the same statistics (:func:`statistics_id`) and
    preprocessing as the model. A stimulus is read from the store only if it *is* a stored
    image of the dataset ``images``: its id is stored and its pixels equal
    ``images.load_image(id)`` (a blurred or otherwise altered copy under the same id is
    computed, not read); and then the image's content fingerprint
    (:func:`dissect.cache.image_fingerprints`) must equal the store's — a stale store is a
    ``DataError``, never a silent reuse."""

    def __init__(self, path: Path, expected_id: str, preprocess: Preprocess, layer: str,
                 images: object | None):
        from dissect.cache import open_activations, store_metadata

        if images is None or not hasattr(images, "load_image"):
            raise DataError(path, "reading a gradient-statistics store needs the dataset of its "
                                  "images (images=…), to check a stimulus against them")
        meta = store_metadata(path)
        if meta.get("weights_id") != expected_id:
            raise DataError(path, f"gradient statistics of other weights, classes or code "
                                  f"({meta.get('weights_id')} ≠ {expected_id}); recompute it")
        if meta.get("preprocess") != preprocess.to_dict():
            def text(d) -> str:
                return ", ".join(f"{k}={v}" for k, v in (d or {}).items()) or "none recorded"

            raise DataError(path, f"computed with preprocessing ({text(meta.get('preprocess'))})"
                                  f", the model uses ({text(preprocess.to_dict())})")
        missing = [n for n in (layer, layer + VAR_SUFFIX) if n not in meta["layers"]]
        if missing:
            raise DataError(path, f"no layer(s) {missing}; stored: {meta['layers']}")
        self.path = path
        self.images = images
        self.mean = open_activations(path, layer)
        self.var = open_activations(path, layer + VAR_SUFFIX)
        self.stored: dict[str, str] = dict(meta.get("image_sha256") or {})

    def get(self, image: ImageLike) -> tuple[Tensor, Tensor] | None:
        from dissect.cache import image_fingerprints

        if not isinstance(image, StimulusImage) or image.id not in self.stored:
            return None
        if image.image is None or not np.array_equal(
                image.image, self.images.load_image(image.id)):  # type: ignore[attr-defined]
            return None  # another stimulus under a stored id (e.g. a blurred copy)
        now = image_fingerprints(self.images, [image.id])[image.id]  # type: ignore[arg-type]
        if now != self.stored[image.id]:
            raise DataError(image.id, f"{self.path}: the stored gradient statistics are of "
                                      f"another image content (fingerprint {self.stored[image.id]}"
                                      f" ≠ {now}); recompute the store")
        mean = np.asarray(self.mean.sel(image=image.id).values, dtype=np.float64)
        var = np.asarray(self.var.sel(image=image.id).values, dtype=np.float64)
        return torch.from_numpy(mean), torch.from_numpy(var)


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


@register_model("implicit_saliency")
def implicit_saliency_model(
    backbone: str | Backbone = "efficientnet_lite0",
    layer: str | None = None,
    weights: str | None = "imagenet",
    classes: int | Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    variance_norm: VarianceNorm = "per_map",
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
    store: str | Path | None = None,
    images: object | None = None,
) -> ImplicitSaliencyModel:
    """Implicit saliency ``S_C`` (Sun et al. 2020) of a backbone (by name, loaded with
    ``weights``, or a built ``Backbone``) at ``layer`` (default :func:`default_layer`).
    ``store``: a gradient-statistics cache (:func:`statistics_backbone`) of images of the
    dataset ``images``; a stimulus that *is* one of them (same id, same pixels) is read from it,
    any other is computed (see :class:`_StatisticsStore`)."""
    bb = _backbone(backbone, weights)
    return ImplicitSaliencyModel(bb, layer or default_layer(bb), classes=classes,
                                 chunk_size=chunk_size, variance_norm=variance_norm,
                                 input_size=input_size, name=name, store=store,
                                 images=images)


@register_model("feedforward_saliency")
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


@register_model("gradcam")
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


@register_model("guided_backprop")
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


