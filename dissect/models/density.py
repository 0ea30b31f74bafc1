"""From a saliency map to a density: the conversion the scorecard applies to models that give
only a saliency map, so that log-likelihood and information gain can score them.

Kümmerer, Wallis & Bethge (2015, PNAS) show that metric disagreements largely vanish once each
model is converted to its best density under the same protocol; the conversion is fitted on the
*training* images only (never on the images it is scored on). Here, for a saliency map ``s`` of
an image (any scale), with ``ŝ = (s − min s) / (max s − min s)`` (a constant map: uniform)::

    q_{σ,γ} ∝ (G_σ * ŝ)^γ                       (blur, then a power; normalised over pixels)
    p = (1 − w) · q_{σ,γ} + w · b                (mixture with the centre-bias density b)

with ``G_σ`` the Gaussian blur of :func:`scipy.ndimage.gaussian_filter` (σ in pixels, ``mode=
"nearest"``, truncated at 4σ; σ = 0: no blur), ``γ > 0`` and ``w ∈ [1e-6, 1 − 1e-6]``. σ and γ
are chosen on grids and ``w`` exactly for each (σ, γ) (the mean log-likelihood is concave in
``w``) by maximising the mean log-likelihood of the training fixations (all fixations weigh the
same). pysaliency's ``SaliencyMapConvertor`` fits a richer monotone nonlinearity; a blur, a
power and the centre-bias mixture are the minimum the issue asks for and keep the fit a small
grid search whose result is easy to report; the grid grows along σ or γ while the optimum sits
on its upper edge (:func:`fit_saliency_density`).

The other metrics (NSS, CC, AUC, …) score the raw map, never this density.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp

from dissect.errors import DataError
from dissect.metrics import point_pixels
from dissect.models.base import ImageLike, ProbabilisticModel, SaliencyModel, image_size
from dissect.models.baselines import _best_weight

__all__ = ["SaliencyDensity", "fit_saliency_density", "map_log_density"]

#: default grids: blur in pixels (OSIE: 24 px per degree) and power
SIGMAS = (0.0, 4.0, 8.0, 16.0, 32.0)
EXPONENTS = (0.5, 1.0, 2.0, 4.0)


def _unit(s: NDArray[np.float64], source: str) -> NDArray[np.float64]:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise DataError(source, f"a saliency map must be a 2-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise DataError(source, f"saliency map has {int((~np.isfinite(s)).sum())} non-finite "
                                "value(s)")
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones_like(s)
    return (s - lo) / (hi - lo)


def _log_q(s_unit: NDArray[np.float64], sigma: float, gamma: float) -> NDArray[np.float64]:
    """log of (G_σ * ŝ)^γ normalised over the pixels (−inf where the blurred map is 0)."""
    b = gaussian_filter(s_unit, sigma, mode="nearest", truncate=4.0) if sigma > 0 else s_unit
    with np.errstate(divide="ignore"):
        lq = gamma * np.log(np.clip(b, 0.0, None))
    return lq - logsumexp(lq)


def map_log_density(
    saliency_map: ArrayLike, centre_log_density: ArrayLike, sigma: float, gamma: float,
    weight: float, *, source: str = "saliency map",
) -> NDArray[np.float64]:  # fmt: skip
    """``log p`` of the module docstring for one map (natural log, normalised over pixels)."""
    s = _unit(np.asarray(saliency_map), source)
    b = np.asarray(centre_log_density, dtype=np.float64)
    if b.shape != s.shape:
        raise DataError(source, f"centre-bias density {b.shape} vs map {s.shape}")
    if not 0 < weight < 1:
        raise DataError(source, f"mixing weight must be in (0, 1), got {weight}")
    return np.logaddexp(np.log1p(-weight) + _log_q(s, sigma, gamma), np.log(weight) + b)


@dataclass
class SaliencyDensity(ProbabilisticModel):
    """A saliency model turned into a density (module docstring) with fitted ``sigma``,
    ``gamma``, ``weight``; ``centre_bias`` gives the log density ``b`` for an image size
    (e.g. :class:`dissect.models.baselines.CentreBiasModel`). ``fit_table`` holds every
    (σ, γ, w, mean log-likelihood in nats) evaluated."""

    model: SaliencyModel
    centre_bias: ProbabilisticModel
    sigma: float
    gamma: float
    weight: float
    fit_table: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        self.name = f"{getattr(self.model, 'name', 'model')}+density"
        self.layers = getattr(self.model, "layers", None)

    def log_density(self, image: ImageLike) -> NDArray[np.float64]:
        return self.log_density_of_map(self.model.saliency_map(image), image_size(image))

    def log_density_of_map(self, saliency: ArrayLike, size: tuple[int, int]
                           ) -> NDArray[np.float64]:
        """The log density of an image of ``size`` whose map (``self.model``'s) is
        ``saliency``: for a caller that has the map already (the scorecard scores the map
        and the density of every image, one forward pass)."""
        b = self.centre_bias.log_density(size)
        return map_log_density(np.asarray(saliency), b, self.sigma, self.gamma, self.weight,
                                source=self.name)

    def saliency_map(self, image: ImageLike) -> NDArray[np.float64]:
        """The raw map of the wrapped model: other metrics score the map, not the density."""
        return self.model.saliency_map(image)


def fit_saliency_density(
    maps: Mapping[str, ArrayLike],
    fixations: Mapping[str, ArrayLike],
    centre_log_densities: Mapping[str, ArrayLike],
    *,
    sigmas: Sequence[float] = SIGMAS,
    exponents: Sequence[float] = EXPONENTS,
    max_extensions: int = 3,
) -> tuple[float, float, float, pd.DataFrame]:
    """Fit (σ, γ, w) on training images: ``maps[id]`` the model's saliency map, ``fixations[id]``
    ``(N, 2)`` (x, y) points, ``centre_log_densities[id]`` the centre-bias log density, all at
    the image's size. Returns ``(sigma, gamma, weight, table)`` with the table of every
    (σ, γ) tried, its best ``w`` and the mean log-likelihood (nats per fixation). When the
    best (σ, γ) lies on the largest σ (> 0) or the largest γ of the grid, that edge is doubled
    and the new points evaluated, up to ``max_extensions`` times (an edge optimum is not an
    optimum; measured on OSIE: linear readout maps want γ ≥ 4, blurred maps σ ≥ 32 px)."""
    ids = [str(i) for i in maps]
    if not ids:
        raise DataError("density fit", "no training images")
    for name, values in (("sigmas", sigmas), ("exponents", exponents)):
        if not len(values):
            raise DataError("density fit", f"{name} is empty")
    if any(s < 0 for s in sigmas) or any(g <= 0 for g in exponents):
        raise DataError("density fit", "sigmas must be >= 0 and exponents > 0")
    units, pix, base = {}, {}, []
    for i in ids:
        if i not in fixations or i not in centre_log_densities:
            raise DataError(i, "no fixations or centre-bias density for this training image")
        units[i] = _unit(np.asarray(maps[i]), f"saliency map of image {i}")
        pts = np.asarray(fixations[i], dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise DataError(i, f"fixations must be (N, 2) with N >= 1, got {pts.shape}")
        rows, cols = point_pixels(pts, units[i].shape, name=f"fixations of image {i}")
        pix[i] = (rows, cols)
        b = np.asarray(centre_log_densities[i], dtype=np.float64)
        if b.shape != units[i].shape:
            raise DataError(i, f"centre-bias density {b.shape} vs map {units[i].shape}")
        base.append(np.exp(b[rows, cols]))
    b_at = np.concatenate(base)
    table: list[dict[str, float]] = []
    done: set[tuple[float, float]] = set()

    def evaluate(sig_values: Sequence[float], gam_values: Sequence[float]) -> None:
        for sigma in sig_values:
            todo = [g for g in gam_values if (float(sigma), float(g)) not in done]
            if not todo:
                continue
            blurred = {i: (gaussian_filter(u, sigma, mode="nearest", truncate=4.0)
                           if sigma > 0 else u) for i, u in units.items()}
            for gamma in todo:
                q = np.concatenate([np.exp(_log_q(blurred[i], 0.0, gamma)[pix[i]])
                                    for i in ids])
                w, ll = _best_weight(q, b_at, None)
                table.append({"sigma": float(sigma), "gamma": float(gamma), "weight": w,
                              "log_likelihood": ll})
                done.add((float(sigma), float(gamma)))

    sig_grid = sorted(float(v) for v in sigmas)
    gam_grid = sorted(float(v) for v in exponents)
    evaluate(sig_grid, gam_grid)
    # an optimum on the grid's upper edge is not an optimum: double that edge (at most
    # `max_extensions` times per axis) and evaluate the new row/column only
    for _ in range(int(max_extensions)):
        t = pd.DataFrame(table)
        best = t.loc[t["log_likelihood"].idxmax()]
        grow_s = best["sigma"] == sig_grid[-1] and sig_grid[-1] > 0
        grow_g = best["gamma"] == gam_grid[-1]
        if not (grow_s or grow_g):
            break
        if grow_s:
            sig_grid.append(2 * sig_grid[-1])
        if grow_g:
            gam_grid.append(2 * gam_grid[-1])
        evaluate(sig_grid, gam_grid)
    t = pd.DataFrame(table)
    best = t.loc[t["log_likelihood"].idxmax()]
    return float(best["sigma"]), float(best["gamma"]), float(best["weight"]), t
