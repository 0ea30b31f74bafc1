"""Baseline models of where people look: uniform, centre bias, and the inter-observer gold standard.

All three are :class:`~dissect.models.base.ProbabilisticModel` s: ``log_density`` is a natural-log
density over the image's pixels (``sum(exp) == 1``), the reference points of information gain
(Kümmerer, Wallis & Bethge 2015, PNAS 112:16054, "Information-theoretic model comparison unifies
saliency metrics"). Fixations are the dataset's 0-based ``(x, y)``; a fixation's pixel is
``(rint(y), rint(x))`` (:func:`dissect.metrics.conventions.pixel_indices`), pixel ``(r, c)`` has
its centre at ``(x, y) = (c, r)``. The Gaussian kernel is ``φ_h(d) = exp(−d²/2h²)/(√(2π) h)``.

**Uniform**: ``log p = −log(H·W)``.

**Centre bias** (pysaliency's ``CrossvalidatedBaselineModel`` convention). Each training fixation
is mapped to the unit square, ``u = (x + ½)/W``, ``v = (y + ½)/H`` (the image spans
``[−½, W − ½) × [−½, H − ½)``), and binned into a ``G × G`` histogram ``T`` (``bins = G``, default
256: cells of 1/256 of the side, well below the bandwidths chosen; the binning is the one
approximation, exact where fixations sit on cell centres). On an ``H × W`` image the density is
evaluated at the pixel centres ``((c + ½)/W, (r + ½)/H)``::

    D[r, c] = Σ_{a,b} T[a, b] φ_h(v_r − c_a) φ_h(u_c − c_b)        (c_a = (a + ½)/G)
    p       = (1 − w) · D / Σ D + w / (H·W)

an isotropic Gaussian KDE of bandwidth ``h`` in unit-square units (so anisotropic in pixels on a
non-square image), normalised over the image's pixels, mixed with a uniform weight ``w``.
``h`` and ``w`` maximise the leave-one-image-out log-likelihood of the training fixations: the
fixations of image *i* are scored under the KDE of all *other* training images' fixations,
normalised over the ``G × G`` cells (the pixels of a ``G × G`` image)::

    LOO(h, w) = mean_f log2((1 − w)·G²·p_{−i(f)}(cell_f) + w)     [bits/fixation over uniform]

``h`` over a log-spaced grid (default 25 values 0.004…0.4), refined by a bounded scalar search
between the best value's neighbours; for each ``h`` the best ``w`` is found exactly (the
objective is concave in ``w``, searched on ``[1e-6, 1 − 1e-6]``) unless a grid of weights is
given; ``w`` may end at its lower bound 1e-6 when no training fixation falls where the KDE is
negligible (measured on OSIE: 500 training images → ``h ≈ 0.041``, ``w = 1e-6``). The table
of every evaluated ``(h, w, LOO)`` is kept in ``cv_``. pysaliency reports ``h ≈ 0.0215`` on
MIT1003.

**Gold standard** (the "Human IO" of the benchmarks): per image, a Gaussian KDE of the fixations
of the *other* observers, bandwidth ``h`` in **pixels** (isotropic in pixels, i.e. in visual
angle, so a fixation spreads equally in x and y), normalised over the pixels, mixed with a
baseline (the centre bias if given, else uniform)::

    K[r, c] = Σ_{j ∉ s} φ_h(r − y_j) φ_h(c − x_j)
    p_{−s}  = (1 − w) · K / Σ K + w · p_baseline

``h`` and ``w`` maximise the leave-one-subject-out log-likelihood pooled over the fixations of
the training images (each subject's fixations scored under the KDE of the others'), with
``Σ K`` computed exactly as ``Σ_j (Σ_r φ_h(r − y_j))(Σ_c φ_h(c − x_j))`` (measured on OSIE,
100 training images, centre-bias baseline: ``h ≈ 15.8 px``, ``w ≈ 0.088``; 2.35 bits/fixation
over the centre bias on 20 held-out images). The density of one
image is ``log_density_for(image_id, held_out_subject)``; the model interface's
``log_density(StimulusImage)`` uses every observer, and ``log_density_held_out(stimulus, s)``
leaves subject ``s`` out — what a scorecard uses to score ``s`` (see
:func:`dissect.scoring.fixation_log_densities`).

**Starting fixations**: ``drop_first=True`` (default) ignores each scanpath's ``order == 0``
fixation (OSIE's central start), in fitting and in the gold standard's KDE.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar

from dissect.data.osie import FixationDataset
from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices
from dissect.models.base import (
    ImageLike,
    ProbabilisticModel,
    StimulusImage,
    image_size,
    register_model,
    stimulus_id,
)

__all__ = [
    "CentreBiasModel",
    "GoldStandardModel",
    "UniformModel",
    "gaussian_kernel",
    "load_centre_bias",
    "save_centre_bias",
    "unit_square",
]

_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
_W_BOUNDS = (1e-6, 1.0 - 1e-6)


def gaussian_kernel(d: NDArray[np.float64], h: float) -> NDArray[np.float64]:
    """The 1-D Gaussian kernel ``φ_h(d) = exp(−d²/2h²) / (√(2π) h)`` (elementwise)."""
    return np.exp(-0.5 * (np.asarray(d, dtype=np.float64) / h) ** 2) / (_SQRT_2PI * h)


def unit_square(points: NDArray[np.float64], size: tuple[int, int]) -> NDArray[np.float64]:
    """``(N, 2)`` 0-based pixel ``(x, y)`` → unit-square ``(u, v) = ((x + ½)/W, (y + ½)/H)``."""
    h, w = size
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([(p[:, 0] + 0.5) / w, (p[:, 1] + 0.5) / h])


def _check_positive(value: float, name: str, upper: float | None = None) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0 or (upper is not None and v >= upper):
        rng = f"in (0, {upper})" if upper is not None else "> 0"
        raise DataError(name, f"must be a finite number {rng}, got {value!r}")
    return v


def _best_weight(
    q: NDArray[np.float64], b: NDArray[np.float64] | float, weights: Sequence[float] | None
) -> tuple[float, float]:
    """Maximise ``mean log((1 − w)·q + w·b)`` over ``w``: on the grid ``weights`` if given, else
    exactly on ``[1e-6, 1 − 1e-6]`` (concave in ``w``, so a bounded Brent search finds it).
    Returns ``(w, value in nats)``."""

    def ll(w: float) -> float:
        with np.errstate(divide="ignore"):
            return float(np.mean(np.log((1.0 - w) * q + w * b)))

    if weights is not None:
        for x in weights:
            _check_positive(x, "mixing weight", 1.0)
        vals = [ll(float(w)) for w in weights]
        k = int(np.argmax(vals))
        return float(weights[k]), vals[k]
    res = minimize_scalar(lambda w: -ll(w), bounds=_W_BOUNDS, method="bounded",
                          options={"xatol": 1e-9})
    w = float(res.x)
    # the bounded search never evaluates the bounds themselves: compare with them
    cands = [(ll(w), w)] + [(ll(x), x) for x in _W_BOUNDS]
    val, w = max(cands)
    return w, val


def _select(
    objective: Any,
    bandwidths: NDArray[np.float64],
    refine: bool,
    progress: bool = False,
    desc: str = "bandwidths",
) -> tuple[float, float, float, list[tuple[float, float, float]]]:
    """Grid search of ``objective(h) -> (w, ll)`` over ``bandwidths``, then (``refine``) a
    bounded search in log h between the best grid value's neighbours. Returns
    ``(h, w, ll, table)``. ``progress``: a tqdm bar (bandwidths tried / the grid's size, each
    refinement step adding one) named ``desc`` on stderr."""
    from tqdm.auto import tqdm

    table: list[tuple[float, float, float]] = []
    bar = tqdm(total=len(bandwidths), desc=desc, unit="bandwidth", disable=not progress)

    def run(h: float) -> float:
        w, val = objective(h)
        table.append((h, w, val))
        if len(table) > len(bandwidths):  # a refinement step: the total grows with it
            bar.total = len(table)
        bar.update()
        return val

    vals = [run(float(h)) for h in bandwidths]
    k = int(np.argmax(vals))
    if refine and len(bandwidths) > 1:
        lo = np.log(bandwidths[max(k - 1, 0)])
        hi = np.log(bandwidths[min(k + 1, len(bandwidths) - 1)])
        bar.set_postfix_str("refining", refresh=False)
        minimize_scalar(lambda t: -run(float(np.exp(t))), bounds=(lo, hi), method="bounded",
                        options={"xatol": 1e-3})
    bar.close()
    h, w, val = max(table, key=lambda r: r[2])
    return h, w, val, table


def _ids(dataset: FixationDataset, ids: Iterable[str], what: str) -> list[str]:
    out = [str(i) for i in ids]
    if not out:
        raise DataError(what, "no training images given")
    missing = [i for i in out if i not in dataset]
    if missing:
        raise DataError(what, f"{len(missing)} image id(s) not in the dataset: {missing[:5]}")
    if len(set(out)) != len(out):
        raise DataError(what, "training image ids contain duplicates")
    return out


# ------------------------------------------------------------------------------- uniform
@register_model("uniform")
class UniformModel(ProbabilisticModel):
    """Every pixel equally likely: ``log p = −log(H·W)``."""

    name = "uniform"

    def log_density(self, image: ImageLike) -> NDArray[np.float64]:
        h, w = image_size(image)
        return np.full((h, w), -np.log(float(h) * float(w)))


# ---------------------------------------------------------------------------- centre bias
class CentreBiasModel(ProbabilisticModel):
    """Image-independent KDE of the training fixations in unit-square coordinates, mixed with a
    uniform weight (module docstring). Build it with :meth:`fit`, or from a saved histogram.

    ``histogram`` is the ``(G, G)`` count of training fixations per unit-square cell (rows v,
    columns u); ``bandwidth`` in unit-square units; ``mixing_weight`` the uniform weight ``w``.
    """

    name = "centre_bias"

    def __init__(self, histogram: NDArray[np.float64], bandwidth: float, mixing_weight: float):
        t = np.asarray(histogram, dtype=np.float64)
        if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 1:
            raise DataError("centre_bias", f"histogram must be square (G, G), got {t.shape}")
        if not np.isfinite(t).all() or (t < 0).any() or not t.sum() > 0:
            raise DataError("centre_bias", "histogram must be finite, ≥ 0 and not all zero")
        self.histogram = t
        self.bins = t.shape[0]
        self.bandwidth = _check_positive(bandwidth, "centre_bias bandwidth")
        self.mixing_weight = _check_positive(mixing_weight, "centre_bias mixing_weight", 1.0)
        self.cv_: pd.DataFrame | None = None
        self.loo_log_likelihood_: float | None = None
        self._cache: dict[tuple[int, int], NDArray[np.float64]] = {}

    # ---- fitting
    @staticmethod
    def histogram_of(
        dataset: FixationDataset, ids: Sequence[str], bins: int = 256, drop_first: bool = True
    ) -> tuple[NDArray[np.float64], list[tuple[NDArray[np.intp], NDArray[np.intp]]]]:
        """The ``(G, G)`` unit-square histogram of the fixations of ``ids`` and, per image, the
        cell (row a, column b) of each of its fixations."""
        g = int(bins)
        if g < 2:
            raise DataError("centre_bias", f"bins must be ≥ 2, got {bins}")
        hist = np.zeros((g, g))
        cells = []
        for i in ids:
            pts = dataset.points(i, drop_first=drop_first)
            uv = unit_square(pts, dataset[i].size)
            b = np.clip(np.floor(uv[:, 0] * g), 0, g - 1).astype(np.intp)
            a = np.clip(np.floor(uv[:, 1] * g), 0, g - 1).astype(np.intp)
            np.add.at(hist, (a, b), 1.0)
            cells.append((a, b))
        return hist, cells

    @staticmethod
    def loo_cell_probabilities(
        hist: NDArray[np.float64],
        cells: Sequence[tuple[NDArray[np.intp], NDArray[np.intp]]],
        bandwidth: float,
    ) -> NDArray[np.float64]:
        """For every fixation (images in order), the probability of its cell under the KDE of the
        *other* images' fixations normalised over the ``G × G`` cells (leave one image out)."""
        g = hist.shape[0]
        c = (np.arange(g) + 0.5) / g
        k = gaussian_kernel(c[:, None] - c[None, :], bandwidth)  # (G, G), symmetric
        s = k.sum(axis=0)
        full = k @ hist @ k.T
        total = float(full.sum())
        out = []
        for a, b in cells:
            if a.size == 0:
                continue
            own = (k[np.ix_(a, a)] * k[np.ix_(b, b)]).sum(axis=1)
            num = np.maximum(full[a, b] - own, 0.0)  # rounding can leave −1e-17
            z = total - float((s[a] * s[b]).sum())
            if not z > 0:
                raise DataError("centre_bias", "leave-one-image-out KDE has zero mass: the "
                                "training fixations all lie in one image?")
            out.append(num / z)
        return np.concatenate(out)

    @classmethod
    def fit(
        cls,
        dataset: FixationDataset,
        train_ids: Iterable[str],
        drop_first: bool = True,
        *,
        bins: int = 256,
        bandwidths: Sequence[float] | None = None,
        mixing_weights: Sequence[float] | None = None,
        refine: bool = True,
        progress: bool = False,
    ) -> CentreBiasModel:
        """Fit ``h`` and ``w`` by leave-one-image-out log-likelihood on ``train_ids``.

        ``bandwidths``: candidate ``h`` (unit-square units; default 25 log-spaced values
        0.004…0.4), refined between neighbours when ``refine``; ``mixing_weights``: candidate
        ``w`` (default: the exact optimum for each ``h``). Needs ≥ 2 training images.
        ``progress``: a tqdm bar over the bandwidths tried.
        """
        ids = _ids(dataset, train_ids, "centre_bias")
        if len(ids) < 2:
            raise DataError("centre_bias", "leave-one-image-out needs at least 2 training images")
        hist, cells = cls.histogram_of(dataset, ids, bins, drop_first)
        g = hist.shape[0]
        if not hist.sum() > 0:
            raise DataError("centre_bias", "the training images have no fixations")
        hs = np.asarray(
            np.geomspace(0.004, 0.4, 25) if bandwidths is None else bandwidths, dtype=np.float64
        )
        for h in hs:
            _check_positive(h, "centre_bias bandwidth")

        def objective(h: float) -> tuple[float, float]:
            q = cls.loo_cell_probabilities(hist, cells, h) * g * g  # density over the square
            w, val = _best_weight(q, 1.0, mixing_weights)
            return w, val / np.log(2.0)

        h, w, val, table = _select(objective, hs, refine, progress, "centre bias bandwidths")
        model = cls(hist, h, w)
        model.cv_ = pd.DataFrame(table, columns=["bandwidth", "mixing_weight", "loo_bits"])
        model.loo_log_likelihood_ = val
        return model

    # ---- evaluation
    def log_density(self, image: ImageLike) -> NDArray[np.float64]:
        """Log density on the pixels of ``image`` (an array, ``StimulusImage`` or ``(H, W)``)."""
        size = image_size(image)
        if size not in self._cache:
            self._cache[size] = self._evaluate(size)
        return self._cache[size].copy()

    def _evaluate(self, size: tuple[int, int]) -> NDArray[np.float64]:
        h, w = size
        c = (np.arange(self.bins) + 0.5) / self.bins
        ky = gaussian_kernel((np.arange(h) + 0.5)[:, None] / h - c[None, :], self.bandwidth)
        kx = gaussian_kernel((np.arange(w) + 0.5)[:, None] / w - c[None, :], self.bandwidth)
        d = ky @ self.histogram @ kx.T
        z = float(d.sum())
        if not z > 0:
            raise DataError("centre_bias", f"KDE has zero mass on a {h}x{w} image")
        wt = self.mixing_weight
        with np.errstate(divide="ignore"):
            return np.logaddexp(np.log1p(-wt) + np.log(d / z), np.log(wt) - np.log(float(h * w)))


@register_model("centre_bias")
def _centre_bias(
    dataset: FixationDataset, train_ids: Iterable[str], **fit_params: Any
) -> CentreBiasModel:
    """Registry factory: :meth:`CentreBiasModel.fit` on ``train_ids``."""
    return CentreBiasModel.fit(dataset, train_ids, **fit_params)


# ------------------------------------------------------------------------- gold standard
class GoldStandardModel(ProbabilisticModel):
    """Per-image KDE of the other observers' fixations (pixel bandwidth), mixed with a baseline.

    ``dataset`` supplies the fixations; ``bandwidth`` (pixels) and ``mixing_weight`` are given
    or fitted by :meth:`fit` (leave-one-subject-out on training images). ``baseline`` is an
    image-independent probabilistic model called with a size (a fitted
    :class:`CentreBiasModel`); None = uniform.
    """

    name = "gold_standard"
    observer_dependent = True

    def __init__(
        self,
        dataset: FixationDataset,
        *,
        bandwidth: float | None = None,
        mixing_weight: float | None = None,
        baseline: ProbabilisticModel | None = None,
        drop_first: bool = True,
    ):
        self.dataset = dataset
        self.bandwidth = None if bandwidth is None else _check_positive(
            bandwidth, "gold_standard bandwidth")
        self.mixing_weight = None if mixing_weight is None else _check_positive(
            mixing_weight, "gold_standard mixing_weight", 1.0)
        self.baseline = UniformModel() if baseline is None else baseline
        self.drop_first = bool(drop_first)
        self.cv_: pd.DataFrame | None = None
        self.loo_log_likelihood_: float | None = None
        self._base_cache: tuple[Any, NDArray[np.float64] | None] = (None, None)

    # ---- data
    def _fixations(self, image_id: str) -> pd.DataFrame:
        if image_id not in self.dataset:
            raise DataError(image_id, "gold standard: image not in the dataset")
        return self.dataset.fixations_of(image_id, drop_first=self.drop_first)

    def _baseline_log_density(self, image_id: str, size: tuple[int, int]) -> NDArray[np.float64]:
        return np.asarray(
            self.baseline.log_density(StimulusImage(image_id, size=size)), dtype=np.float64
        )

    # ---- fitting
    def fit(
        self,
        train_ids: Iterable[str],
        *,
        bandwidths: Sequence[float] | None = None,
        mixing_weights: Sequence[float] | None = None,
        refine: bool = True,
        progress: bool = False,
    ) -> GoldStandardModel:
        """Choose ``bandwidth`` (pixels) and ``mixing_weight`` by leave-one-subject-out
        log-likelihood over the fixations of ``train_ids`` (default bandwidths: 25 log-spaced
        values 2…200 px; weights exact per bandwidth unless a grid is given). Returns self.
        ``progress``: a tqdm bar over the bandwidths tried."""
        ids = _ids(self.dataset, train_ids, "gold_standard")
        hs = np.asarray(
            np.geomspace(2.0, 200.0, 25) if bandwidths is None else bandwidths, dtype=np.float64
        )
        for h in hs:
            _check_positive(h, "gold_standard bandwidth")
        prepared = [self._prepare(i) for i in ids]
        base = np.concatenate([p["base"] for p in prepared])
        log_hw = np.concatenate([np.full(len(p["base"]), np.log(p["hw"])) for p in prepared])

        def objective(h: float) -> tuple[float, float]:
            q = np.concatenate([self._loso_probabilities(p, h) for p in prepared])
            w, val = _best_weight(q, base, mixing_weights)
            # bits per fixation over the pixel-uniform density
            return w, (val + float(np.mean(log_hw))) / np.log(2.0)

        h, w, val, table = _select(objective, hs, refine, progress, "gold standard bandwidths")
        self.bandwidth, self.mixing_weight = h, w
        self.cv_ = pd.DataFrame(table, columns=["bandwidth", "mixing_weight", "loso_bits"])
        self.loo_log_likelihood_ = val
        return self

    def _prepare(self, image_id: str) -> dict[str, Any]:
        """Per image: coordinates, subjects, fixation pixels, baseline probabilities there."""
        rows = self._fixations(image_id)
        size = self.dataset[image_id].size
        xy = rows[["x", "y"]].to_numpy(np.float64)
        subj = rows["subject"].to_numpy()
        if len(np.unique(subj)) < 2:
            raise DataError(
                image_id,
                f"gold standard: {len(np.unique(subj))} observer(s) with fixations"
                f"{' after dropping the first' if self.drop_first else ''}; leave-one-subject-"
                "out needs at least 2",
            )
        r, c = pixel_indices(xy, name=f"fixations of {image_id}")
        base = np.exp(self._baseline_log_density(image_id, size)[r, c])
        return {"id": image_id, "xy": xy, "subj": subj, "r": r, "c": c, "size": size,
                "base": base, "hw": float(size[0] * size[1])}

    @staticmethod
    def _loso_probabilities(p: dict[str, Any], h: float) -> NDArray[np.float64]:
        """Pixel probability of each fixation under the KDE of the other subjects' fixations."""
        xy, subj = p["xy"], p["subj"]
        hh, ww = p["size"]
        kern = gaussian_kernel(p["c"][:, None] - xy[None, :, 0], h) * gaussian_kernel(
            p["r"][:, None] - xy[None, :, 1], h)
        other = subj[:, None] != subj[None, :]
        num = (kern * other).sum(axis=1)
        mass = gaussian_kernel(np.arange(hh)[:, None] - xy[None, :, 1], h).sum(axis=0) * (
            gaussian_kernel(np.arange(ww)[:, None] - xy[None, :, 0], h).sum(axis=0))
        labels, inv = np.unique(subj, return_inverse=True)
        per_subject = np.bincount(inv, weights=mass, minlength=len(labels))
        z = mass.sum() - per_subject[inv]
        if not (z > 0).all():
            raise DataError(p["id"], f"gold standard: the other observers' KDE has zero mass "
                                     f"at bandwidth {h:g} px")
        return num / z

    # ---- evaluation
    def log_density_for(
        self, image_id: str, held_out_subject: int | None = None
    ) -> NDArray[np.float64]:
        """Log density of image ``image_id`` from all observers' fixations except
        ``held_out_subject`` (None: all observers)."""
        if self.bandwidth is None or self.mixing_weight is None:
            raise DataError("gold_standard", "bandwidth/mixing_weight not set: call fit(train_ids)"
                            " or pass them")
        image_id = str(image_id)
        rows = self._fixations(image_id)
        size = self.dataset[image_id].size
        if held_out_subject is not None:
            mine = rows["subject"].to_numpy() == held_out_subject
            if not mine.any():
                raise DataError(image_id, f"gold standard: subject {held_out_subject} has no "
                                "fixations on this image to hold out")
            rows = rows[~mine]
        if rows.empty:
            who = ("no other observer" if held_out_subject is not None else "no observer")
            raise DataError(image_id, f"gold standard: {who} has fixations on this image "
                            f"(held out: {held_out_subject}); the density is undefined")
        xy = rows[["x", "y"]].to_numpy(np.float64)
        pixel_indices(xy, name=f"fixations of {image_id}")  # NaN/inf guard
        hh, ww = size
        ky = gaussian_kernel(np.arange(hh)[:, None] - xy[None, :, 1], self.bandwidth)
        kx = gaussian_kernel(np.arange(ww)[:, None] - xy[None, :, 0], self.bandwidth)
        k = ky @ kx.T
        z = float(k.sum())
        if not z > 0:
            raise DataError(image_id, "gold standard: the KDE has zero mass")
        key = (image_id, size)
        cached = self._base_cache  # read once: another thread may replace it (Dask threads)
        if cached[0] != key:  # the baseline's density of the last image, reused
            cached = (key, np.exp(self._baseline_log_density(image_id, size)))
            self._base_cache = cached
        wt = self.mixing_weight
        dens = (1.0 - wt) / z * k + wt * cached[1]
        with np.errstate(divide="ignore"):
            return np.log(dens)

    def log_density(self, image: ImageLike) -> NDArray[np.float64]:
        """All observers' density of the image (needs a ``StimulusImage`` with its id)."""
        return self._checked(image, None)

    def log_density_held_out(self, image: ImageLike, subject: int) -> NDArray[np.float64]:
        """Density without ``subject``'s fixations: the one to score ``subject`` with."""
        return self._checked(image, subject)

    def _checked(self, image: ImageLike, subject: int | None) -> NDArray[np.float64]:
        image_id = stimulus_id(image, "gold_standard")
        if image_id in self.dataset and image_size(image) != self.dataset[image_id].size:
            raise DataError(image_id, f"gold standard: image size {image_size(image)} differs "
                            f"from the dataset's {self.dataset[image_id].size}")
        return self.log_density_for(image_id, subject)


@register_model("gold_standard")
def _gold_standard(
    dataset: FixationDataset,
    train_ids: Iterable[str] | None = None,
    **params: Any,
) -> GoldStandardModel:
    """Registry factory: :class:`GoldStandardModel` with ``params``; fitted on ``train_ids``
    when given (``bandwidths`` / ``mixing_weights`` / ``refine`` go to :meth:`fit`)."""
    fit_keys = ("bandwidths", "mixing_weights", "refine")
    fit_params = {k: params.pop(k) for k in fit_keys if k in params}
    model = GoldStandardModel(dataset, **params)
    if train_ids is not None:
        model.fit(train_ids, **fit_params)
    elif fit_params:
        raise DataError("gold_standard", f"{sorted(fit_params)} need train_ids")
    return model


# ------------------------------------------------------------------------------- persistence
def save_centre_bias(model: CentreBiasModel, path: str | Path) -> Path:
    """Write a fitted centre bias to ``path`` (``.npz``: histogram, bandwidth, mixing weight,
    the leave-one-image-out log-likelihood), atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, histogram=model.histogram, bandwidth=model.bandwidth,
             mixing_weight=model.mixing_weight,
             loo_bits=np.nan if model.loo_log_likelihood_ is None else model.loo_log_likelihood_)
    os.replace(tmp, path)
    return path


def load_centre_bias(path: str | Path) -> CentreBiasModel:
    """Read a centre bias written by :func:`save_centre_bias` (missing file or key →
    ``DataError`` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "centre-bias file missing: run the `baselines` stage first")
    try:
        with np.load(path) as z:
            model = CentreBiasModel(z["histogram"], float(z["bandwidth"]),
                                    float(z["mixing_weight"]))
            loo = float(z["loo_bits"])
    except (KeyError, ValueError, OSError) as e:
        raise DataError(path, f"not a centre-bias file: {e}") from e
    model.loo_log_likelihood_ = None if np.isnan(loo) else loo
    return model
