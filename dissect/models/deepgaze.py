"""DeepGaze I readout (Kümmerer, Theis & Bethge, "Deep Gaze I: Boosting saliency prediction with
feature maps trained on ImageNet", ICLR 2015 workshop, arXiv:1411.1045), trained on precomputed
features.

Model (paper §3, Eqs. 1–4)::

    R(x)  = Σ_c w_c · f_c(x)                 linear combination of feature maps, no bias
    O(x)  = (G_σ * R)(x) + α · log c(x)      Gaussian blur with learned σ, plus the weighted
                                             log centre bias
    log p(x) = O(x) − log Σ_x' exp O(x')     softmax over the grid's pixels (log-sum-exp)

trained by maximising the mean log-likelihood of the training fixations with an L1 penalty
``l1 · Σ_c |w_c|`` on the readout weights (the centre weight α and σ are not penalised).

Everything here works on a **grid**: the feature maps of the chosen layers of a frozen trunk,
each resized to one common ``(h, w)`` (:func:`to_grid`) and concatenated along channels. The
trunk never runs in this module: the trainer takes features as tensors (a mapping
``image id → (C, h, w)`` or a callable ``ids → (B, C, h, w)``, e.g. backed by the activation
cache), so a training epoch costs one linear combination, one blur and one softmax per image.
The image is fed to the trunk at a size that keeps its aspect ratio (the documented default is
half the image size, as DeepGaze I downsamples by 2: 300 × 400 for OSIE's 600 × 800); that
choice belongs to the feature extraction, not to this module.

Conventions (the choices the paper leaves open, all documented where they are made):

* **Feature normalisation** (:class:`FeatureNormaliser`): each channel is divided by its
  population standard deviation (ddof = 0) over all training images and grid positions, as the
  paper's "normalised to unit standard deviation". Features are *not* centred: adding a
  constant to a channel adds ``w_c · const`` to every pixel of ``R``, the blur (nearest-edge
  mode) keeps it constant and the softmax removes it, so centring cannot change any density or
  any gradient. A channel that is constant over the training set carries no information and
  gets scale 0 (listed in ``constant_channels``, never silently divided by ~0). The scales live
  in the model as the buffer ``feature_scale``, so the learned weights are those of unit-std
  features and a saved model is self-contained.
* **Blur**: separable Gaussian convolution with the kernel ``exp(−t²/2σ²)`` sampled at integer
  offsets ``|t| ≤ r``, ``r = int(truncate · σ + 0.5)`` (grows with σ), normalised to sum 1, and
  nearest-edge padding; with ``truncate = 3`` (DeepGaze's finaliser) this is exactly
  ``scipy.ndimage.gaussian_filter(x, σ, mode="nearest", truncate=3)``. It is computed as two
  banded matrix products (faster than padded convolutions on grids of tens of cells a side).
  σ is in grid pixels, parameterised as ``exp(log_sigma)`` (always positive) and clamped at
  ``max_sigma`` (default the larger grid side: a wider blur is already flat, and the cost of
  building the matrices grows with σ).
* **Densities on the grid vs on the image** (the package convention): the model's output is
  ``log_density`` on the grid, ``(B, h, w)`` with ``logsumexp == 0`` over the grid — a
  probability per grid cell. The log-likelihood of a fixation is reported *per image pixel*:
  the fixation's pixel ``(rint(y), rint(x))`` (:func:`dissect.metrics.conventions.pixel_indices`)
  falls in the cell whose area it belongs to under ``align_corners=False`` geometry
  (``cell_row = floor((row + ½) · h / H)``), and the cell's log probability is divided evenly
  over that cell's pixels: ``log p_pixel = log p_cell − log n_cell`` with ``n_cell`` the number of
  image pixels in the cell (``= H·W / (h·w)`` when the sides divide). This piecewise-constant
  image density sums to exactly 1 over the ``H × W`` pixels, so its log-likelihoods are directly
  comparable with those of densities defined at image size (the scorecard's). A log density *at
  the image's own size* (:func:`upsample_log_density`, :meth:`DeepGazeI.log_density_at`) is the
  grid log density bilinearly upsampled (``align_corners=False``) in log space, then
  renormalised so that ``Σ_{H×W} exp == 1``: interpolating the logs never produces a zero
  density (no −inf), and is how DeepGaze's own finaliser interpolates before normalising.
* **Likelihood averaging**: the loss is the mean over the *fixations* of a batch (every fixation
  weighs the same, as in the paper's mean log-likelihood), not a mean of per-image means.
* **Training** (:func:`train_deepgaze`): Adam (the paper used SFO; DeepGaze's PyTorch port uses
  Adam too), a step schedule (``StepLR(step_size, gamma)``, stepped once per epoch), early
  stopping when the validation log-likelihood has not improved for ``patience`` epochs, and the
  weights of the best validation epoch restored. Deterministic for a seed: ``torch.manual_seed``
  before the initialisation, a seeded ``torch.Generator`` for the shuffling, and
  ``torch.use_deterministic_algorithms(True)`` for the run (:func:`dissect.training.deterministic`).
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from dissect.errors import DataError
from dissect.metrics.conventions import CONSTANT_RTOL, pixel_indices
from dissect.models.base import ProbabilisticModel, image_array, register_model

__all__ = [
    "DEFAULT_TRUNCATE",
    "DeepGazeI",
    "DeepGazeModel",
    "DeepGazeResult",
    "FeatureNormaliser",
    "FixationCells",
    "fixation_cells",
    "channel_index",
    "gaussian_blur",
    "grid_features",
    "grid_size",
    "input_size",
    "load_deepgaze",
    "log_likelihood",
    "log_likelihood_loss",
    "save_deepgaze",
    "to_grid",
    "train_deepgaze",
    "upsample_log_density",
]

#: Kernel half-width in σ, as DeepGaze's finaliser (``GaussianFilterNd(..., truncate=3)``).
DEFAULT_TRUNCATE: float = 3.0

HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_ll", "val_ll", "sigma", "centre_weight", "l1_norm", "lr",
    "seconds",
)

FeatureSource: TypeAlias = (
    Mapping[str, torch.Tensor] | Callable[[Sequence[str]], torch.Tensor]
)
FixationSource: TypeAlias = (
    Mapping[str, tuple[ArrayLike, tuple[int, int]]]
    | Callable[[str], tuple[ArrayLike, tuple[int, int]]]
)


# ------------------------------------------------------------------------------------------------
# grid helpers


def to_grid(
    features: torch.Tensor, grid: tuple[int, int], *, antialias: bool = True
) -> torch.Tensor:
    """Resize feature maps ``(C, h', w')`` or ``(B, C, h', w')`` to the common ``grid = (h, w)``:
    bilinear, ``align_corners=False`` (the package's resampling), with antialiasing when
    shrinking. Maps already on the grid are returned unchanged."""
    x = torch.as_tensor(features)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise DataError("features", f"expected (C, h, w) or (B, C, h, w), got {tuple(x.shape)}")
    h, w = int(grid[0]), int(grid[1])
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                          antialias=antialias)
    return x[0] if squeeze else x


def _cell_index(pix: np.ndarray, n_img: int, n_grid: int) -> np.ndarray:
    """Grid cell of image pixel indices along one axis: ``floor((i + ½) · n_grid / n_img)``
    computed in integers (exact, no float ties)."""
    return ((2 * pix + 1) * n_grid) // (2 * n_img)


def _cell_counts(n_img: int, n_grid: int) -> np.ndarray:
    """Number of image pixels in each grid cell along one axis."""
    return np.bincount(_cell_index(np.arange(n_img), n_img, n_grid), minlength=n_grid)


@dataclass(frozen=True)
class FixationCells:
    """Fixations of one image mapped to the grid: flat cell index ``row · w + col`` and the
    per-pixel correction ``−log n_cell`` (see the module docstring)."""

    flat: np.ndarray  # int64 (N,)
    log_pixels: np.ndarray  # float64 (N,): log of the number of image pixels in the cell


def fixation_cells(
    points: ArrayLike, image_size: tuple[int, int], grid: tuple[int, int], *,
    source: str = "fixations",
) -> FixationCells:
    """Map 0-based ``(x, y)`` fixations of an ``image_size = (H, W)`` image to cells of the
    ``grid = (h, w)``. A NaN/inf coordinate, a point outside the image, a non-positive size or a
    grid larger than the image → :class:`DataError` naming ``source``."""
    H, W = (int(v) for v in image_size)
    h, w = (int(v) for v in grid)
    if H <= 0 or W <= 0:
        raise DataError(source, f"image size must be positive, got (H, W) = {image_size}")
    if h <= 0 or w <= 0 or h > H or w > W:
        raise DataError(source, f"grid {h}x{w} must be positive and no larger than the "
                                f"{H}x{W} image")
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DataError(source, f"fixations must be an (N, 2) array of (x, y), got shape "
                                f"{pts.shape}")
    rows, cols = pixel_indices(pts, name=source)
    out = (rows < 0) | (rows >= H) | (cols < 0) | (cols >= W)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(
            source,
            f"{int(out.sum())} of {len(pts)} fixation(s) lie outside the {H}x{W} image, e.g. "
            f"#{i} (x, y) = ({pts[i, 0]:g}, {pts[i, 1]:g})",
        )
    cr = _cell_index(rows, H, h)
    cc = _cell_index(cols, W, w)
    n = _cell_counts(H, h)[cr] * _cell_counts(W, w)[cc]
    return FixationCells(flat=(cr * w + cc).astype(np.int64), log_pixels=np.log(n.astype(float)))


# ------------------------------------------------------------------------------------------------
# blur


def _blur_matrix(n: int, kernel: torch.Tensor, r: int) -> torch.Tensor:
    """``(n, n)`` matrix of a 1-D convolution with ``kernel`` (length ``2r + 1``) under
    nearest-edge padding: row ``i`` holds ``kernel[t]`` at column ``clamp(i + t − r, 0, n − 1)``
    (summed where the clamp merges columns). Built by a one-hot contraction, deterministic on
    every device and differentiable in the kernel."""
    i = torch.arange(n, device=kernel.device).view(-1, 1)
    t = torch.arange(2 * r + 1, device=kernel.device).view(1, -1)
    cols = (i + t - r).clamp(0, n - 1)  # (n, 2r+1)
    onehot = F.one_hot(cols, n).to(kernel.dtype)  # (n, 2r+1, n)
    return torch.einsum("itj,t->ij", onehot, kernel)


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor | float, *, truncate: float = DEFAULT_TRUNCATE
) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., h, w)`` maps, differentiable in ``sigma``.

    Kernel ``exp(−t²/2σ²)`` at integer ``|t| ≤ int(truncate · σ + 0.5)``, normalised to sum 1,
    nearest-edge (replicate) padding: ``scipy.ndimage.gaussian_filter(x, σ, mode="nearest",
    truncate=truncate)`` (DeepGaze I §3 "blurred with a Gaussian kernel"; the truncation is
    DeepGaze's finaliser's). The radius follows σ's current value (an integer, not
    differentiated). Implemented as ``B_h · x · B_wᵀ`` with the two banded ``(h, h)``/``(w, w)``
    blur matrices (:func:`_blur_matrix`): on readout grids (tens of cells a side) two small
    matrix products are several times faster than padded 1-D convolutions, forward and
    backward."""
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    s = float(sig.detach())
    if not math.isfinite(s) or s < 0:
        raise DataError("sigma", f"blur sigma must be finite and >= 0, got {s}")
    r = int(truncate * s + 0.5)
    if r == 0:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sig) ** 2)
    k = k / k.sum()
    bh = _blur_matrix(x.shape[-2], k, r)
    bw = _blur_matrix(x.shape[-1], k, r)
    return bh @ x @ bw.transpose(0, 1)


# ------------------------------------------------------------------------------------------------
# normaliser


class FeatureNormaliser:
    """Per-channel scale to unit standard deviation over the training images (DeepGaze I §3).

    ``fit`` pools every training image and grid position per channel (population std, ddof=0,
    float64 accumulation with a per-channel shift for accuracy); features are not centred (see
    the module docstring: centring cannot change the density). ``scale[c] = 1 / std[c]``, or 0
    for a channel whose std ≤ ``CONSTANT_RTOL`` × its max |value| (``constant_channels``).
    """

    def __init__(self, std: torch.Tensor | None = None):
        self.std: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.constant_channels: list[int] = []
        if std is not None:
            self._set(torch.as_tensor(std, dtype=torch.float64), None)

    def _set(self, std: torch.Tensor, max_abs: torch.Tensor | None) -> None:
        if std.dim() != 1:
            raise DataError("FeatureNormaliser", f"std must be (C,), got {tuple(std.shape)}")
        if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
            raise DataError("FeatureNormaliser", "std must be finite and >= 0")
        floor = CONSTANT_RTOL * (max_abs if max_abs is not None else torch.zeros_like(std))
        const = std <= floor
        self.std = std
        self.scale = torch.where(const, torch.zeros_like(std), 1.0 / torch.where(const, 1.0, std))
        self.constant_channels = [int(i) for i in torch.nonzero(const).flatten()]

    def fit(
        self, batches: Iterable[torch.Tensor], *, source: str = "features"
    ) -> FeatureNormaliser:
        """Fit on an iterable of ``(C, h, w)`` or ``(B, C, h, w)`` training feature tensors.
        NaN/inf → :class:`DataError`; no data → :class:`DataError`."""
        shift = s1 = s2 = mx = None
        n = 0
        for x in batches:
            x = torch.as_tensor(x).detach()
            if x.dim() == 3:
                x = x.unsqueeze(0)
            if x.dim() != 4:
                raise DataError(source, f"expected (C, h, w) or (B, C, h, w), got "
                                        f"{tuple(x.shape)}")
            _check_finite(x, source)
            v = x.to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)  # (C, N)
            if shift is None:
                shift = v.mean(dim=1, keepdim=True)
                s1 = torch.zeros(v.shape[0], dtype=torch.float64)
                s2 = torch.zeros_like(s1)
                mx = torch.zeros_like(s1)
            elif v.shape[0] != shift.shape[0]:
                raise DataError(source, f"channel count changed from {shift.shape[0]} to "
                                        f"{v.shape[0]}")
            d = v - shift
            s1 += d.sum(dim=1)
            s2 += (d * d).sum(dim=1)
            mx = torch.maximum(mx, v.abs().amax(dim=1))
            n += v.shape[1]
        if shift is None or n == 0:
            raise DataError(source, "no training features to fit the normaliser on")
        var = (s2 / n - (s1 / n) ** 2).clamp_min(0.0)
        self._set(var.sqrt(), mx)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``(C, h, w)`` or ``(B, C, h, w)`` features channel by channel."""
        if self.scale is None:
            raise DataError("FeatureNormaliser", "not fitted")
        s = self.scale.to(dtype=x.dtype, device=x.device)
        return x * s.view(-1, 1, 1)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value is finite; a NaN/inf makes the sum non-finite, so the (30× cheaper)
    sum is checked first and the elementwise test runs only when it fails (a sum can also
    overflow on finite values)."""
    if not x.is_floating_point():
        return True
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_finite(x: torch.Tensor, source: str) -> None:
    if not _all_finite(x):
        bad = ~torch.isfinite(x)
        raise DataError(source, f"{int(bad.sum())} non-finite feature value(s) "
                                f"({int(torch.isnan(x).sum())} NaN)")


# ------------------------------------------------------------------------------------------------
# model


class DeepGazeI(nn.Module):
    """The DeepGaze I readout on a ``grid = (h, w)`` of ``n_channels`` feature maps.

    Parameters: ``weights`` (C,), ``log_sigma`` (σ = exp, in grid pixels, clamped at
    ``max_sigma``), ``centre_weight`` (α). Buffers: ``feature_scale`` (C,) applied to the input
    features (the fitted :class:`FeatureNormaliser`; ones until set) and
    ``centre_log_density`` (h, w), the log centre bias on the grid (any finite log map; a
    uniform prior is zeros). ``forward`` returns the grid log density ``(B, h, w)`` with
    ``logsumexp == 0`` over each image's grid.
    """

    def __init__(
        self,
        n_channels: int,
        centre_log_density: torch.Tensor,
        *,
        init_sigma: float = 1.0,
        init_centre_weight: float = 1.0,
        init_weight_std: float = 0.01,
        max_sigma: float | None = None,
        truncate: float = DEFAULT_TRUNCATE,
    ):
        super().__init__()
        centre = torch.as_tensor(centre_log_density, dtype=torch.float32)
        if centre.dim() != 2:
            raise DataError("centre_log_density", f"must be (h, w), got {tuple(centre.shape)}")
        if not bool(torch.isfinite(centre).all()):
            raise DataError("centre_log_density", "contains NaN/inf (a zero centre-bias density "
                            "has log −inf: mix it with a uniform density first)")
        if n_channels < 1:
            raise DataError("n_channels", f"must be >= 1, got {n_channels}")
        if not init_sigma > 0:
            raise DataError("init_sigma", f"must be > 0, got {init_sigma}")
        self.grid = (int(centre.shape[0]), int(centre.shape[1]))
        self.truncate = float(truncate)
        self.max_sigma = float(max(self.grid) if max_sigma is None else max_sigma)
        self.weights = nn.Parameter(torch.randn(n_channels) * init_weight_std)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(init_sigma)))
        self.centre_weight = nn.Parameter(torch.tensor(float(init_centre_weight)))
        self.register_buffer("feature_scale", torch.ones(n_channels))
        self.register_buffer("centre_log_density", centre.clone())

    @property
    def n_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def sigma(self) -> torch.Tensor:
        """Blur σ in grid pixels: ``exp(log_sigma)`` clamped at ``max_sigma``."""
        return self.log_sigma.exp().clamp(max=self.max_sigma)

    def set_normaliser(self, normaliser: FeatureNormaliser) -> None:
        """Store the fitted per-channel scales in the ``feature_scale`` buffer."""
        if normaliser.scale is None or normaliser.scale.shape != (self.n_channels,):
            raise DataError("normaliser", f"needs {self.n_channels} fitted channel scales")
        self.feature_scale.copy_(normaliser.scale.to(self.feature_scale))

    def _check(self, features: torch.Tensor, source: str,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
        x = torch.as_tensor(features)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        grid = self.grid if grid is None else grid
        if x.dim() != 4 or x.shape[1] != self.n_channels or tuple(x.shape[-2:]) != grid:
            raise DataError(source, f"features must be (B, {self.n_channels}, {grid[0]}, "
                                    f"{grid[1]}), got {tuple(x.shape)}")
        _check_finite(x, source)
        return x.to(dtype=self.weights.dtype, device=self.weights.device)

    def forward(
        self, features: torch.Tensor, centre_log_density: torch.Tensor | None = None,
        *, source: str = "features",
    ) -> torch.Tensor:
        """Grid log density ``(B, h, w)`` of ``(B, C, h, w)`` raw features (scaled here by
        ``feature_scale``). ``centre_log_density`` ((h, w) or (B, h, w)) overrides the stored
        centre bias, e.g. a uniform prior (zeros) for the pop-out arrays; with an override the
        features may lie on another grid (an image of another size), the override's."""
        grid = None if centre_log_density is None else tuple(
            torch.as_tensor(centre_log_density).shape[-2:])
        x = self._check(features, source, grid)
        # Σ_c w_c · (s_c f_c) = Σ_c (w_c s_c) f_c: the scales fold into the weights (no copy of
        # the features); one vector-matrix product per image is ~25× faster on CPU than a
        # batched einsum/bmm over (B, C, h·w)
        w = self.weights * self.feature_scale
        b, c, h, wd = x.shape
        r = torch.stack([w @ xi.reshape(c, h * wd) for xi in x]).view(b, h, wd)
        o = gaussian_blur(r, self.sigma, truncate=self.truncate)
        c = self.centre_log_density if centre_log_density is None else torch.as_tensor(
            centre_log_density, dtype=o.dtype, device=o.device)
        o = o + self.centre_weight * c
        return o - torch.logsumexp(o.flatten(1), dim=1).view(-1, 1, 1)

    def log_density_at(
        self, features: torch.Tensor, size: tuple[int, int],
        centre_log_density: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log density at the image's own ``size = (H, W)`` (float64; ``(H, W)`` for one image's
        ``(C, h, w)`` features, else ``(B, H, W)``): :func:`upsample_log_density` of
        :meth:`forward`."""
        single = torch.as_tensor(features).dim() == 3
        with torch.no_grad():
            out = upsample_log_density(self(features, centre_log_density), size)
        return out[0] if single else out


def upsample_log_density(log_density: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grid log density ``(h, w)`` or ``(B, h, w)`` → float64 log density at ``size = (H, W)``:
    bilinear upsampling of the log values (``align_corners=False``), then renormalised so that
    ``Σ exp`` over the ``H × W`` pixels is 1 (the package convention; see the module
    docstring)."""
    x = torch.as_tensor(log_density).to(torch.float64)
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise DataError("size", f"image size must be positive, got {size}")
    up = F.interpolate(x.unsqueeze(1), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    up = up - torch.logsumexp(up.flatten(1), dim=1).view(-1, 1, 1)
    return up[0] if single else up


# ------------------------------------------------------------------------------------------------
# likelihood


def _gather(
    log_density_grid: torch.Tensor,
    fixations: Sequence[ArrayLike | FixationCells],
    image_sizes: Sequence[tuple[int, int]] | None,
    sources: Sequence[str] | None,
) -> torch.Tensor:
    if log_density_grid.dim() != 3:
        raise DataError("log_density_grid", f"must be (B, h, w), got "
                                            f"{tuple(log_density_grid.shape)}")
    b, h, w = log_density_grid.shape
    if len(fixations) != b:
        raise DataError("fixations", f"{len(fixations)} fixation sets for {b} images")
    if image_sizes is not None and len(image_sizes) != b:
        raise DataError("image_sizes", f"{len(image_sizes)} sizes for {b} images")
    flat = log_density_grid.reshape(b, -1)
    parts = []
    for i, fx in enumerate(fixations):
        src = sources[i] if sources is not None else f"image #{i}"
        if not isinstance(fx, FixationCells):
            if image_sizes is None:
                raise DataError(src, "image_sizes are required for raw (x, y) fixations")
            fx = fixation_cells(fx, image_sizes[i], (h, w), source=src)
        idx = torch.as_tensor(fx.flat, device=flat.device)
        corr = torch.as_tensor(fx.log_pixels, dtype=flat.dtype, device=flat.device)
        parts.append(flat[i, idx] - corr)
    vals = torch.cat(parts) if parts else flat.new_zeros(0)
    if vals.numel() == 0:
        raise DataError("fixations", "no fixations: the log-likelihood is undefined")
    return vals


def log_likelihood(
    log_density_grid: torch.Tensor,
    fixations: Sequence[ArrayLike | FixationCells],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    *,
    sources: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean over all fixations of the batch of the per-image-pixel log density (nats):
    ``log p_cell − log n_cell`` at each fixation's cell (module docstring). ``fixations[i]`` is
    an ``(N_i, 2)`` array of 0-based ``(x, y)`` in image ``i``'s pixels (``image_sizes[i] =
    (H, W)``) or precomputed :class:`FixationCells`; ``sources`` names the images in errors."""
    return _gather(log_density_grid, fixations, image_sizes, sources).mean()


def log_likelihood_loss(
    log_density_grid: torch.Tensor,
    fixations: Sequence[ArrayLike | FixationCells],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    *,
    weights: torch.Tensor | None = None,
    l1: float = 0.0,
    sources: Sequence[str] | None = None,
) -> torch.Tensor:
    """Training loss: ``−`` :func:`log_likelihood` ``+ l1 · Σ|weights|`` (DeepGaze I §3, the
    negative mean log-likelihood with the L1 sparsity penalty on the readout weights)."""
    loss = -log_likelihood(log_density_grid, fixations, image_sizes, sources=sources)
    if l1:
        if weights is None:
            raise DataError("weights", "l1 > 0 needs the readout weights")
        loss = loss + l1 * weights.abs().sum()
    return loss


# ------------------------------------------------------------------------------------------------
# training


@dataclass
class DeepGazeResult:
    """Outcome of :func:`train_deepgaze`; ``model`` holds the best-validation-epoch state."""

    model: DeepGazeI
    history: pd.DataFrame
    best_epoch: int
    best_val_ll: float
    normaliser: FeatureNormaliser
    config: dict[str, Any] = field(default_factory=dict)


def _feature_getter(features_fn: FeatureSource) -> Callable[[Sequence[str]], torch.Tensor]:
    if isinstance(features_fn, Mapping):
        table = features_fn

        def get(ids: Sequence[str]) -> torch.Tensor:
            missing = [i for i in ids if i not in table]
            if missing:
                raise DataError(missing[0], f"no features for {len(missing)} image(s)")
            return torch.stack([torch.as_tensor(table[i]) for i in ids])

        return get
    if not callable(features_fn):
        raise DataError("features_fn", "must be a mapping id → (C, h, w) or a callable "
                                       "ids → (B, C, h, w)")
    return features_fn


def _fixation_getter(fixations_fn: FixationSource) -> Callable[[str], Any]:
    if isinstance(fixations_fn, Mapping):
        table = fixations_fn

        def get(i: str) -> Any:
            if i not in table:
                raise DataError(i, "no fixations for this image")
            return table[i]

        return get
    return fixations_fn


def _batch_features(get: Callable[[Sequence[str]], torch.Tensor], ids: Sequence[str],
                    n_channels: int | None, grid: tuple[int, int]) -> torch.Tensor:
    x = torch.as_tensor(get(list(ids)))
    label = ids[0] if len(ids) == 1 else f"features of {ids[0]}…{ids[-1]}"
    if x.dim() != 4 or x.shape[0] != len(ids) or tuple(x.shape[-2:]) != grid or (
            n_channels is not None and x.shape[1] != n_channels):
        c = "C" if n_channels is None else n_channels
        raise DataError(label, f"features must be ({len(ids)}, {c}, {grid[0]}, {grid[1]}), got "
                               f"{tuple(x.shape)}")
    if not _all_finite(x):
        bad = [ids[j] for j in range(len(ids)) if not bool(torch.isfinite(x[j]).all())]
        raise DataError(bad[0], f"non-finite (NaN/inf) features in {len(bad)} image(s): "
                                f"{bad[:5]}")
    return x


def _evaluate(model: DeepGazeI, get: Callable, cells: dict[str, FixationCells],
              ids: Sequence[str], batch_size: int) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(ids), batch_size):
            chunk = list(ids[b : b + batch_size])
            x = _batch_features(get, chunk, model.n_channels, model.grid)
            vals = _gather(model(x), [cells[i] for i in chunk], None, chunk)
            total += float(vals.to(torch.float64).sum())
            n += vals.numel()
    return total / n


def train_deepgaze(
    features_fn: FeatureSource,
    centre_log_density: torch.Tensor,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    fixations_fn: FixationSource,
    *,
    epochs: int = 50,
    lr: float = 0.01,
    l1: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    patience: int | None = 5,
    min_delta: float = 0.0,
    step_size: int = 20,
    gamma: float = 0.5,
    init_sigma: float = 1.0,
    truncate: float = DEFAULT_TRUNCATE,
    heldout_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool = False,
    desc: str = "train DeepGaze I",
) -> DeepGazeResult:
    """Fit a :class:`DeepGazeI` readout on precomputed features (DeepGaze I §3).

    ``features_fn``: a mapping ``id → (C, h, w)`` or a callable ``ids → (B, C, h, w)`` of raw
    (un-normalised) features already on the grid of ``centre_log_density`` ``(h, w)``.
    ``fixations_fn``: a mapping or callable ``id → (points (N, 2) 0-based (x, y), (H, W))``.
    ``val_ids`` (a slice of the training split, disjoint from ``train_ids``) drive early
    stopping; pass the held-out ids as ``heldout_ids`` to have any leak refused.

    Steps: fit the :class:`FeatureNormaliser` on the training features (one pass), map every
    fixation to its grid cell once (bad fixations raise here, before any training), then per
    epoch shuffle (seeded generator), minimise :func:`log_likelihood_loss` with Adam, evaluate
    the validation log-likelihood (nats per fixation, per image pixel), step the
    ``StepLR(step_size, gamma)`` schedule; stop after ``patience`` epochs without an improvement
    larger than ``min_delta``; restore the best epoch (the last one without validation images).
    ``history`` columns: ``epoch, train_loss, train_ll, val_ll, sigma, centre_weight, l1_norm,
    lr, seconds``. Deterministic for a ``seed`` and thread count (module docstring).
    ``progress`` is called with each epoch's history row; ``progress_bar`` shows a tqdm bar
    (epochs done / ``epochs``, ETA, the last training and validation log-likelihoods) named
    ``desc`` on stderr. Neither changes what is computed.
    """
    from tqdm.auto import tqdm

    from dissect.training import deterministic  # lazy: keeps models/ free of import cycles

    train_ids = [str(i) for i in train_ids]
    val_ids = [str(i) for i in val_ids]
    if not train_ids:
        raise DataError("train_ids", "empty")
    for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
        if len(set(ids)) != len(ids):
            raise DataError(name, "contains duplicates")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise DataError("val_ids", f"overlap train_ids ({len(overlap)} images, e.g. "
                                   f"{min(overlap)})")
    leak = (set(train_ids) | set(val_ids)) & {str(i) for i in (heldout_ids or ())}
    if leak:
        raise DataError("heldout_ids", f"{len(leak)} held-out image(s) passed for training/"
                                       f"validation, e.g. {min(leak)}")
    if epochs < 1:
        raise DataError("epochs", f"must be >= 1, got {epochs}")
    if batch_size < 1:
        raise DataError("batch_size", f"must be >= 1, got {batch_size}")
    if patience is not None and patience < 1:
        raise DataError("patience", f"must be >= 1 or None, got {patience}")
    if l1 < 0 or not math.isfinite(l1):
        raise DataError("l1", f"must be finite and >= 0, got {l1}")
    device = torch.device(device)
    centre = torch.as_tensor(centre_log_density, dtype=torch.float32)
    if centre.dim() != 2:
        raise DataError("centre_log_density", f"must be (h, w), got {tuple(centre.shape)}")
    grid = (int(centre.shape[0]), int(centre.shape[1]))
    get_feats = _feature_getter(features_fn)
    get_fix = _fixation_getter(fixations_fn)
    config = {
        "epochs": epochs, "lr": lr, "l1": l1, "batch_size": batch_size, "seed": seed,
        "patience": patience, "min_delta": min_delta, "step_size": step_size, "gamma": gamma,
        "init_sigma": init_sigma, "truncate": truncate, "grid": list(grid),
        "n_train": len(train_ids), "n_val": len(val_ids), "optimizer": "adam",
        "lr_schedule": "step",
    }

    # fixations → grid cells, once (all errors before training)
    cells: dict[str, FixationCells] = {}
    for i in train_ids + val_ids:
        item = get_fix(i)
        try:
            points, size = item
        except (TypeError, ValueError) as e:
            raise DataError(i, "fixations_fn must return (points (N, 2), (H, W))") from e
        fc = fixation_cells(points, size, grid, source=i)
        if fc.flat.size == 0:
            raise DataError(i, "image has no fixations (its log-likelihood is undefined)")
        cells[i] = fc

    with deterministic():
        normaliser = FeatureNormaliser().fit(
            (_batch_features(get_feats, train_ids[b : b + batch_size], None, grid)
             for b in range(0, len(train_ids), batch_size)),
            source="training features",
        )
        n_channels = int(normaliser.scale.shape[0])
        torch.manual_seed(seed)
        model = DeepGazeI(n_channels, centre, init_sigma=init_sigma, truncate=truncate)
        model.set_normaliser(normaliser)
        model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
        gen = torch.Generator().manual_seed(seed)

        rows: list[dict[str, Any]] = []
        best_ll, best_epoch = -math.inf, 0
        best_state = copy.deepcopy(model.state_dict())
        since_best = 0
        bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not progress_bar)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            cur_lr = opt.param_groups[0]["lr"]
            model.train()
            loss_sum = ll_sum = 0.0
            n_fix = 0
            order = torch.randperm(len(train_ids), generator=gen).tolist()
            for b in range(0, len(order), batch_size):
                chunk = [train_ids[j] for j in order[b : b + batch_size]]
                x = _batch_features(get_feats, chunk, n_channels, grid)
                vals = _gather(model(x), [cells[i] for i in chunk], None, chunk)
                ll = vals.mean()
                loss = -ll + l1 * model.weights.abs().sum()
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(f"epoch {epoch}: non-finite loss on images "
                                             f"{chunk[:3]}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                k = vals.numel()
                loss_sum += float(loss.detach()) * k
                ll_sum += float(ll.detach()) * k
                n_fix += k
            sched.step()
            model.eval()
            val_ll = _evaluate(model, get_feats, cells, val_ids, batch_size) if val_ids \
                else math.nan
            rows.append({
                "epoch": epoch, "train_loss": loss_sum / n_fix, "train_ll": ll_sum / n_fix,
                "val_ll": val_ll, "sigma": float(model.sigma.detach()),
                "centre_weight": float(model.centre_weight.detach()),
                "l1_norm": float(model.weights.detach().abs().sum()), "lr": cur_lr,
                "seconds": time.perf_counter() - t0,
            })
            if progress is not None:
                progress(rows[-1])
            bar.set_postfix_str(f"train LL {rows[-1]['train_ll']:.4f}, val LL {val_ll:.4f} "
                                "nats/fix", refresh=False)
            bar.update()
            if not val_ids or val_ll > best_ll + min_delta:
                best_ll, best_epoch = (val_ll if val_ids else math.nan), epoch
                best_state = copy.deepcopy(model.state_dict())
                since_best = 0
            else:
                since_best += 1
            if patience is not None and val_ids and since_best >= patience:
                break
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
    return DeepGazeResult(
        model=model, history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
        best_epoch=best_epoch, best_val_ll=float(best_ll), normaliser=normaliser, config=config,
    )


# ------------------------------------------------------------------------------------------------
# the trained readout as a model of the shared interface (registered as "deepgaze")

#: DeepGaze I feeds the image at half its size (300 × 400 for OSIE's 600 × 800).
DEFAULT_INPUT_SCALE: float = 0.5
#: The common grid is the trunk's stride-16 resolution of the fed image (19 × 25 for 300 × 400).
DEFAULT_GRID_STRIDE: int = 16


def input_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Size the trunk is fed for an image of ``size = (H, W)``: ``(round(H·s), round(W·s))``
    (the aspect ratio kept up to rounding), at least 1 × 1."""
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def grid_size(size: tuple[int, int], scale: float, stride: int) -> tuple[int, int]:
    """The common feature grid for an image of ``size``: the fed size divided by ``stride``,
    rounded up (the size of a stride-``stride`` map of padded convolutions)."""
    h, w = input_size(size, scale)
    return -(-h // int(stride)), -(-w // int(stride))


def grid_features(
    acts: Mapping[str, torch.Tensor], layers: Sequence[str], grid: tuple[int, int]
) -> torch.Tensor:
    """Concatenate the maps of ``layers`` (``acts[layer]``: (B, C_l, h_l, w_l)) on ``grid``
    (:func:`to_grid`) along channels, float32, in the order of ``layers``: the readout's
    channel ``j`` is unit ``j − offset(layer)`` of its layer (:func:`channel_index`)."""
    missing = [name for name in layers if name not in acts]
    if missing:
        raise DataError("features", f"no activations for layer(s) {missing}")
    return torch.cat([to_grid(torch.as_tensor(acts[name]).float(), grid) for name in layers],
                     dim=1)


def channel_index(layer_units: Mapping[str, int]) -> pd.DataFrame:
    """The readout's channels as dissection units: one row per channel with ``channel``,
    ``layer`` and ``unit`` (the unit index within its layer), layers in the given order."""
    rows = [(layer, u) for layer, n in layer_units.items() for u in range(int(n))]
    return pd.DataFrame({"channel": np.arange(len(rows)),
                         "layer": [r[0] for r in rows], "unit": [r[1] for r in rows]})


class DeepGazeModel(ProbabilisticModel):
    """A trained :class:`DeepGazeI` readout on a frozen trunk, answering the shared model
    interface (:class:`dissect.models.base.ProbabilisticModel`: ``log_density(image)`` at the
    image's own size, ``saliency_map`` its exponential, ``layers`` the trunk's hookable units).

    For an ``(H, W)`` image: the trunk is fed the image resized to :func:`input_size`
    (``input_scale``, default ½), the maps of ``feature_layers`` are brought to the grid
    :func:`grid_size` (``grid_stride``, default 16) and concatenated (:func:`grid_features`),
    the readout gives the grid log density with the prior's log density on that grid as its
    centre bias (``prior``: a probabilistic model evaluated at the grid size, e.g. the fitted
    :class:`~dissect.models.baselines.CentreBiasModel`; None → a uniform prior, zeros), and
    :func:`upsample_log_density` brings it to the image. The trunk's preprocessing is that of
    the activation cache the readout was trained on (same resize, mean and std), so an image
    gets the features the readout saw up to the cache's float16 rounding.
    """

    def __init__(self, readout: DeepGazeI, backbone: Any, feature_layers: Sequence[str], *,
                 prior: Any = None, input_scale: float = DEFAULT_INPUT_SCALE,
                 grid_stride: int = DEFAULT_GRID_STRIDE, name: str = "deepgaze",
                 device: str | torch.device = "cpu"):
        self.readout = readout.eval()
        self.backbone = backbone
        self.feature_layers = list(feature_layers)
        unknown = [n for n in self.feature_layers if n not in backbone.layers]
        if unknown:
            raise DataError(name, f"{backbone.name} has no layer(s) {unknown}")
        self.prior = prior
        self.input_scale = float(input_scale)
        self.grid_stride = int(grid_stride)
        self.name = name
        self.device = torch.device(device)
        self.layers = {n: backbone.layers[n] for n in self.feature_layers}

    @property
    def module(self) -> Any:
        """The trunk's network, in which :attr:`layers` resolve (hook its units)."""
        return self.backbone.model

    def features(self, image: Any) -> torch.Tensor:
        """``(C, h, w)`` raw grid features of one image (``(H, W, 3)`` uint8 or a
        ``StimulusImage``)."""
        from dissect.capture import LayerCapture
        from dissect.preprocess import Preprocess

        arr = image_array(image)
        size = arr.shape[:2]
        pre = Preprocess(input_size(size, self.input_scale), self.backbone.preprocess.mean,
                         self.backbone.preprocess.std)
        with LayerCapture(self.backbone, self.feature_layers) as cap:
            acts = cap.attribute(pre(arr).to(self.device))
        return grid_features(acts, self.feature_layers,
                             grid_size(size, self.input_scale, self.grid_stride))[0]

    def prior_log_density(self, grid: tuple[int, int]) -> torch.Tensor:
        """The centre-bias term's log map on ``grid`` (zeros for a uniform prior)."""
        if self.prior is None:
            return torch.zeros(grid)
        return torch.as_tensor(np.asarray(self.prior.log_density(tuple(grid))),
                               dtype=torch.float32)

    def log_density(self, image: Any) -> np.ndarray:
        arr = image_array(image)
        feats = self.features(image)
        centre = self.prior_log_density(tuple(feats.shape[-2:]))
        with torch.no_grad():
            grid_ld = self.readout(feats.unsqueeze(0).to(self.device), centre.to(self.device),
                                   source=f"{self.name} features")
        return upsample_log_density(grid_ld[0].cpu(), arr.shape[:2]).numpy()



def save_deepgaze(model: DeepGazeI, path: str | Path, *, feature_layers: Sequence[str],
                  layer_units: Mapping[str, int], meta: Mapping[str, Any]) -> Path:
    """Save a trained readout with what is needed to rebuild it (atomic: temporary + rename):
    its state dict, ``grid``, ``truncate``, ``max_sigma``, the feature layers and their unit
    counts, and ``meta`` (backbone, weights id, input scale, grid stride, training config)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "grid": list(model.grid),
                "truncate": model.truncate, "max_sigma": model.max_sigma,
                "feature_layers": list(feature_layers),
                "layer_units": {k: int(v) for k, v in layer_units.items()},
                "meta": dict(meta)}, tmp)
    os.replace(tmp, path)
    return path


def load_deepgaze(path: str | Path) -> tuple[DeepGazeI, dict[str, Any]]:
    """Rebuild a readout saved by :func:`save_deepgaze`: ``(model, record)`` (record: every
    saved key except the state dict). A missing or malformed file → ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "DeepGaze I checkpoint missing: run the `deepgaze` stage first")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        sd = ck["state_dict"]
        model = DeepGazeI(int(sd["weights"].shape[0]), sd["centre_log_density"],
                          max_sigma=float(ck["max_sigma"]), truncate=float(ck["truncate"]))
        model.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise DataError(path, f"not a DeepGaze I checkpoint: {e}") from e
    model.eval()
    return model, {k: v for k, v in ck.items() if k != "state_dict"}


@register_model("deepgaze")
def deepgaze_model(checkpoint: str | Path, backbone: Any, *, prior: Any = None,
                   uniform_prior: bool = False, name: str = "deepgaze",
                   device: str | torch.device = "cpu") -> DeepGazeModel:
    """A trained DeepGaze I readout from its checkpoint on ``backbone`` (a built
    :class:`~dissect.backbones.Backbone`, the trunk it was trained on: its weights id is
    checked); ``prior``: the centre-bias model (None with ``uniform_prior=True``: a uniform
    prior, as for the pop-out arrays)."""
    readout, rec = load_deepgaze(checkpoint)
    meta = rec.get("meta", {})
    wid = meta.get("weights_id")
    if wid is not None and wid != getattr(backbone, "weights_id", wid):
        raise DataError(checkpoint, f"trained on trunk weights {wid}, given "
                                    f"{backbone.weights_id}")
    if prior is None and not uniform_prior:
        raise DataError(name, "pass the centre-bias prior= or uniform_prior=True")
    return DeepGazeModel(readout.to(device), backbone, rec["feature_layers"],
                         prior=None if uniform_prior else prior,
                         input_scale=float(meta.get("input_scale", DEFAULT_INPUT_SCALE)),
                         grid_stride=int(meta.get("grid_stride", DEFAULT_GRID_STRIDE)),
                         name=name, device=device)

