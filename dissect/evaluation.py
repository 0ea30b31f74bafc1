"""The scorecard: every saliency model × every saliency metric, with image-bootstrap intervals.

Per image (:func:`score_image`) a model is scored by

* the **map metrics** of :mod:`dissect.metrics` on its *raw* ``saliency_map`` (for a
  :class:`~dissect.models.density.SaliencyDensity` that is the wrapped model's map, for any other
  probabilistic model the density ``exp(log_density)``): NSS, AUC-Judd, AUC-Borji and sAUC
  against the image's fixations (points with multiplicity), CC, SIM and KLD against the
  empirical fixation density :func:`dissect.data.maps.density_map` (the binary fixation map
  blurred with σ = ``gt_sigma_px`` = ``gt.sigma_deg × gt.px_per_degree``, OSIE's convention).
  sAUC's negatives are the fixations of the *other* images (:func:`other_fixations`); KLD is
  ``KL(fixation density ‖ map)`` (:func:`dissect.metrics.kld`), which needs a non-negative map:
  a map with negative values (the He et al. readout's linear 1×1 output) is shifted to minimum 0
  for KLD only (SIM min–max normalises every map itself; NSS, CC and the AUCs are invariant to
  the shift). ``conventions`` (``"dissect"`` | ``"mit"``) selects the metrics' conventions
  (:mod:`dissect.metrics`, docs/metrics.md);
* for probabilistic models only, the **log-likelihood** (bits/fixation over the pixel-uniform
  model) and the **information gain over the centre bias** (bits/fixation), Kümmerer, Wallis &
  Bethge (2015, PNAS 112:16054), from :func:`dissect.scoring.fixation_log_densities` (the gold
  standard scores each observer under its leave-that-observer-out density)::

      LL_i  = Σ_{f ∈ i} [log2 p(f) + log2(H·W)]        IG_i = Σ_{f ∈ i} [log2 p(f) − log2 b(f)]

  kept as *sums* with the fixation count ``n_i``. A map-only model gets no LL/IG here: wrap it
  in a :class:`~dissect.models.density.SaliencyDensity` fitted on training images.

**Dataset level** (:func:`summarise`). LL and IG are **fixation-weighted** means,
``Σ_i LL_i / Σ_i n_i`` (pysaliency's ``average="fixation"``, the convention of the issue),
*not* means of per-image means; the per-image table reports the per-image mean
``LL_i / n_i`` with ``n_fixations = n_i``, so ``Σ value·n / Σ n`` recovers the dataset value.
IG explained = ``Σ_i IG_i(model) / Σ_i IG_i(gold)`` (the ratio of the two fixation-weighted
means over the same fixations: ``n`` cancels); it has no per-image rows. The map metrics are
means over images (every image weighs the same, as the MIT benchmark averages them); an image
where a metric is undefined (NaN: a constant map's NSS, CC, SIM) is left out of that metric's
mean and ``n_images`` says how many images entered.

**Intervals.** One set of ``n_boot`` image resamples (with replacement; drawn by
:func:`dissect.statistics._image_resamples` from ``numpy.random.default_rng(seed)``, as
:func:`scipy.stats.bootstrap` draws them) serves every model and metric, so intervals of two
models are paired; each replicate recomputes the statistic above on the resampled images with
their multiplicities (IG explained as the ratio of resampled sums, not a ratio of intervals).
The interval is :func:`dissect.statistics.bootstrap_interval` (``basic`` by default, as
``stats.ci_method``; ``percentile`` and ``BCa`` with leave-one-image-out jackknife
acceleration). The gold standard scored against itself has IG explained exactly 1 in every
replicate (the same sums divided), so its interval is the degenerate ``[1, 1]``; the centre
bias scored against itself has IG ≡ 0 and IG explained ``[0, 0]``.

**Randomness.** AUC-Borji draws its negatives from ``numpy.random.default_rng(image_seed(seed,
image))`` — a generator per image, the same for every model (common random numbers: models
are compared on the same negatives) and independent of how the images are chunked.

**Chunks.** :func:`score_chunk` is a pure function of a list of images (a Dask task over an
image chunk); :func:`evaluate_models` concatenates chunk records and calls :func:`summarise`.
Nothing in a chunk depends on the other chunks except the sAUC negative pool, passed in.

**Errors.** A model whose map or density is not ``(H, W)`` at the image's size, non-finite, a
metric that refuses the map (e.g. KLD of a map with negative values), an image without
fixations (after ``drop_first``), a zero density at a fixation: :class:`~dissect.errors.
DataError` naming the model and the image. Nothing is skipped silently.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from dissect.data.maps import density_map
from dissect.data.osie import FixationDataset
from dissect.errors import DataError
from dissect.metrics import auc_borji, auc_judd, cc, kld, nss, sauc, sim
from dissect.models.base import ProbabilisticModel, SaliencyModel, StimulusImage
from dissect.models.density import SaliencyDensity
from dissect.scoring import fixation_log_densities
from dissect.statistics import _image_resamples, _jackknife_weights, bootstrap_interval

__all__ = [
    "IMAGE_METRICS",
    "FIXATION_METRICS",
    "METRICS",
    "evaluate_models",
    "image_seed",
    "leaderboard",
    "other_fixations",
    "per_image_table",
    "score_chunk",
    "score_image",
    "summarise",
]

_LN2 = float(np.log(2.0))

#: map metrics, averaged over images at the dataset level
IMAGE_METRICS: tuple[str, ...] = ("nss", "cc", "sim", "kld", "auc_judd", "auc_borji", "sauc")
#: probabilistic metrics (bits/fixation), fixation-weighted at the dataset level
FIXATION_METRICS: tuple[str, ...] = ("log_likelihood", "information_gain")
#: every metric of the summary, in table order
METRICS: tuple[str, ...] = IMAGE_METRICS + FIXATION_METRICS + ("ig_explained",)


def _model_name(model: SaliencyModel, default: str | None = None) -> str:
    return default or getattr(model, "name", "") or type(model).__name__


def image_seed(seed: int, image_id: str) -> np.random.SeedSequence:
    """The seed of an image's random draws (AUC-Borji negatives): ``SeedSequence([seed,
    crc32(image_id)])`` — fixed per image, whatever the chunking or the model."""
    return np.random.SeedSequence([int(seed), zlib.crc32(str(image_id).encode("utf-8"))])


def _image_points(dataset: FixationDataset, image_id: str, drop_first: bool) -> NDArray:
    if image_id not in dataset:
        raise DataError(image_id, "image not in the dataset")
    pts = dataset.points(image_id, drop_first=drop_first)
    if len(pts) == 0:
        raise DataError(
            image_id,
            "no fixations"
            + (" after dropping each observer's first fixation" if drop_first else "")
            + ": the image cannot be scored",
        )
    return pts


def other_fixations(
    dataset: FixationDataset,
    image_id: str,
    pool: Sequence[str],
    *,
    drop_first: bool = True,
) -> NDArray[np.float64]:
    """sAUC negatives of ``image_id``: the fixations of every image of ``pool`` but itself, in
    ``image_id``'s pixels. An image of another size is mapped through the unit square,
    ``x' = (x + ½)/W_j · W − ½`` (and ``y`` alike), then clipped to the image. Empty pool →
    ``DataError``."""
    h, w = dataset[image_id].size
    out = []
    for j in pool:
        if str(j) == str(image_id):
            continue
        pts = dataset.points(j, drop_first=drop_first)
        hj, wj = dataset[j].size
        if (hj, wj) != (h, w):
            pts = np.column_stack([
                np.clip((pts[:, 0] + 0.5) / wj * w - 0.5, 0.0, w - 1.0),
                np.clip((pts[:, 1] + 0.5) / hj * h - 0.5, 0.0, h - 1.0),
            ])
        out.append(pts)
    neg = np.concatenate(out) if out else np.zeros((0, 2))
    if len(neg) == 0:
        raise DataError(image_id, "sAUC: no fixations of other images to use as negatives")
    return neg


def _checked_map(model: SaliencyModel, stimulus: StimulusImage, name: str) -> NDArray:
    src = f"{name} on image {stimulus.id}"
    try:
        raw = model.saliency_map(stimulus)
    except DataError as e:
        raise DataError(src, f"saliency_map failed: {e}") from e
    m = np.asarray(raw, dtype=np.float64)
    if m.shape != tuple(stimulus.size):  # type: ignore[arg-type]
        raise DataError(src, f"saliency map has shape {m.shape}, expected the image's "
                             f"(H, W) = {tuple(stimulus.size)}")  # type: ignore[arg-type]
    if not np.isfinite(m).all():
        raise DataError(src, f"saliency map has {int((~np.isfinite(m)).sum())} non-finite "
                             "value(s)")
    return m


def _metric(src: str, metric: str, fn: Callable[..., float], *args: Any, **kw: Any) -> float:
    try:
        return float(fn(*args, **kw))
    except DataError as e:
        raise DataError(src, f"{metric}: {e}") from e


def _fixation_bits(
    model: ProbabilisticModel, stimulus: StimulusImage, rows: pd.DataFrame, name: str,
    smap: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """log2 density of ``model`` at each fixation row (observer-dependent models held out).
    ``smap``: the model's saliency map of this image when already computed; a map-only model's
    density (:class:`SaliencyDensity`) is then built from it (no second forward pass)."""
    try:
        ld = None
        if smap is not None and isinstance(model, SaliencyDensity):
            ld = model.log_density_of_map(smap, tuple(smap.shape))
        return fixation_log_densities(model, stimulus, rows, ld) / _LN2
    except DataError as e:
        raise DataError(f"{name} on image {stimulus.id}", str(e)) from e


def score_image(
    model: SaliencyModel,
    stimulus: StimulusImage,
    dataset: FixationDataset,
    *,
    centre_bias: ProbabilisticModel,
    gold: ProbabilisticModel | None = None,
    gt_sigma_px: float,
    sauc_negatives: NDArray[np.float64] | None = None,
    rng: np.random.Generator | int | None = None,
    drop_first: bool = True,
    auc_borji_splits: int = 100,
    conventions: str = "dissect",
    name: str | None = None,
    _density: NDArray[np.float64] | None = None,
    _bits_centre: NDArray[np.float64] | None = None,
    _bits_gold: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on one image (module docstring).

    ``stimulus``: ``StimulusImage(id, pixels)`` (or ``size=`` for models that need no pixels);
    fixations are ``dataset``'s of ``stimulus.id`` (``drop_first``: without each observer's
    starting fixation). ``sauc_negatives``: ``(N, 2)`` ``(x, y)`` in this image's pixels; None →
    the fixations of every other image of ``dataset`` (:func:`other_fixations`). ``rng``: AUC-
    Borji's generator or seed. ``gold``: if given, its IG sum on the image is returned too.

    Returns a dict: ``model``, ``image``, ``n_fixations``, one value per map metric
    (:data:`IMAGE_METRICS`), and for probabilistic models ``log_likelihood`` and
    ``information_gain`` (per-image means, bits/fixation) with their sums ``ll_sum`` and
    ``ig_sum``; with ``gold``, ``ig_gold_sum``. (The underscored arguments let
    :func:`score_chunk` share per-image work between models.)
    """
    name = _model_name(model, name)
    image_id = stimulus.id
    src = f"{name} on image {image_id}"
    pts = _image_points(dataset, image_id, drop_first)
    size = dataset[image_id].size
    if tuple(stimulus.size) != tuple(size):  # type: ignore[arg-type]
        raise DataError(src, f"stimulus size {stimulus.size} differs from the dataset's {size}")
    smap = _checked_map(model, stimulus, name)
    dens = density_map(pts, size, sigma=float(gt_sigma_px)) if _density is None else _density
    if sauc_negatives is None:
        sauc_negatives = other_fixations(dataset, image_id, dataset.ids, drop_first=drop_first)
    out: dict[str, Any] = {"model": name, "image": image_id, "n_fixations": int(len(pts))}
    out["nss"] = _metric(src, "nss", nss, smap, pts, conventions=conventions)
    out["cc"] = _metric(src, "cc", cc, smap, dens, conventions=conventions)
    out["sim"] = _metric(src, "sim", sim, smap, dens, conventions=conventions)
    # KLD needs a non-negative map (mass): a map with negative values (a readout's linear
    # output) is shifted to minimum 0 first — documented in the module docstring
    kmap = smap - smap.min() if smap.min() < 0 else smap
    out["kld"] = _metric(src, "kld", kld, kmap, dens, conventions=conventions)
    out["auc_judd"] = _metric(src, "auc_judd", auc_judd, smap, pts, conventions=conventions)
    out["auc_borji"] = _metric(src, "auc_borji", auc_borji, smap, pts,
                               n_splits=auc_borji_splits, rng=rng, conventions=conventions)
    out["sauc"] = _metric(src, "sauc", sauc, smap, pts, sauc_negatives, conventions=conventions)
    if isinstance(model, ProbabilisticModel) or gold is not None:
        rows = dataset.fixations_of(image_id, drop_first=drop_first)
        if _bits_centre is None:
            _bits_centre = _fixation_bits(centre_bias, stimulus, rows, "centre bias")
        if isinstance(model, ProbabilisticModel):
            bits = _fixation_bits(model, stimulus, rows, name, smap)
            h, w = size
            out["ll_sum"] = float(np.sum(bits + np.log2(float(h) * float(w))))
            out["ig_sum"] = float(np.sum(bits - _bits_centre))
            out["log_likelihood"] = out["ll_sum"] / len(bits)
            out["information_gain"] = out["ig_sum"] / len(bits)
        if gold is not None:
            if _bits_gold is None:
                _bits_gold = _fixation_bits(gold, stimulus, rows, "gold standard")
            out["ig_gold_sum"] = float(np.sum(_bits_gold - _bits_centre))
    return out


def score_chunk(
    models: Mapping[str, SaliencyModel],
    dataset: FixationDataset,
    image_ids: Sequence[str],
    *,
    centre_bias: ProbabilisticModel,
    gold: ProbabilisticModel | None,
    gt_sigma_px: float,
    negative_pool: Sequence[str],
    seed: int = 0,
    drop_first: bool = True,
    load_images: bool = True,
    auc_borji_splits: int = 100,
    conventions: str = "dissect",
) -> pd.DataFrame:
    """Score every model on the images ``image_ids`` (one chunk): a pure function, one row per
    (model, image) with the columns of :func:`score_image` (``ll_sum`` / ``ig_sum`` NaN for
    map-only models). ``negative_pool``: the images whose fixations are sAUC negatives (the
    evaluated set). Per-image work shared by the models (the fixation density, the centre bias's
    and gold's log densities at the fixations) is computed once per image."""
    records: list[dict[str, Any]] = []
    for image_id in image_ids:
        image_id = str(image_id)
        pts = _image_points(dataset, image_id, drop_first)
        size = dataset[image_id].size
        stim = (StimulusImage(image_id, dataset.load_image(image_id)) if load_images
                else StimulusImage(image_id, size=size))
        dens = density_map(pts, size, sigma=float(gt_sigma_px))
        neg = other_fixations(dataset, image_id, negative_pool, drop_first=drop_first)
        rows = dataset.fixations_of(image_id, drop_first=drop_first)
        bits_c = _fixation_bits(centre_bias, stim, rows, "centre bias")
        bits_g = None if gold is None else _fixation_bits(gold, stim, rows, "gold standard")
        for label, model in models.items():
            records.append(score_image(
                model, stim, dataset, centre_bias=centre_bias, gold=gold,
                gt_sigma_px=gt_sigma_px, sauc_negatives=neg,
                rng=np.random.default_rng(image_seed(seed, image_id)), drop_first=drop_first,
                auc_borji_splits=auc_borji_splits, conventions=conventions, name=str(label),
                _density=dens,
                _bits_centre=bits_c, _bits_gold=bits_g,
            ))
    cols = (["model", "image", "n_fixations", *IMAGE_METRICS, *FIXATION_METRICS, "ll_sum",
             "ig_sum", "ig_gold_sum"])
    return pd.DataFrame.from_records(records).reindex(columns=cols)


def per_image_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per-image tidy table ``model, image, metric, value, n_fixations`` (LL/IG rows only for
    probabilistic models)."""
    long = records.melt(id_vars=["model", "image", "n_fixations"],
                        value_vars=[*IMAGE_METRICS, *FIXATION_METRICS],
                        var_name="metric", value_name="value")
    prob = long["metric"].isin(FIXATION_METRICS)
    has = records.set_index(["model", "image"])["ig_sum"].notna()
    keep = ~prob | has.reindex(pd.MultiIndex.from_frame(long[["model", "image"]])).to_numpy()
    long = long[keep]
    order = {m: k for k, m in enumerate(METRICS)}
    long = long.assign(_m=long["metric"].map(order))
    model_order = {m: k for k, m in enumerate(pd.unique(records["model"]))}
    image_order = {m: k for k, m in enumerate(pd.unique(records["image"]))}
    long = long.assign(_a=long["model"].map(model_order), _b=long["image"].map(image_order))
    long = long.sort_values(["_a", "_m", "_b"], kind="stable")
    return long[["model", "image", "metric", "value", "n_fixations"]].reset_index(drop=True)


def summarise(
    records: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "basic",
) -> pd.DataFrame:
    """Dataset-level values and image-bootstrap intervals from :func:`score_chunk` records
    (the combine step). Columns ``model, metric, value, ci_low, ci_high, n_images, ci_method``.

    Images are the distinct ``image`` values in order of first appearance; the same ``n_boot``
    resamples (seeded by ``seed``) serve every (model, metric). Weighting: module docstring.
    """
    if n_boot < 1:
        raise DataError("n_boot", f"must be ≥ 1, got {n_boot}")
    images = list(pd.unique(records["image"]))
    if not images:
        raise DataError("evaluate", "no images scored")
    n_img = len(images)
    W = _image_resamples(np.random.default_rng(seed), n_img, int(n_boot))  # (B, n)
    J = _jackknife_weights(n_img) if n_img >= 2 else None
    rows: list[dict[str, Any]] = []
    gold_sum = None
    if "ig_gold_sum" in records and records["ig_gold_sum"].notna().any():
        g = records.drop_duplicates("image").set_index("image")["ig_gold_sum"]
        gold_sum = g.reindex(images).to_numpy(np.float64)

    def ratio(weights: NDArray, num: NDArray, den: NDArray) -> NDArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ num) / (weights @ den)

    for model in pd.unique(records["model"]):
        r = records[records["model"] == model].set_index("image")
        if r.index.duplicated().any() or set(r.index) != set(images):
            raise DataError(str(model), "records must hold each image exactly once per model")
        r = r.reindex(images)
        stats: list[tuple[str, float, NDArray, NDArray | None, int]] = []
        for m in IMAGE_METRICS:
            v = r[m].to_numpy(np.float64)
            ok = np.isfinite(v)
            vz = np.where(ok, v, 0.0)
            okf = ok.astype(np.float64)
            est = float(vz.sum() / okf.sum()) if ok.any() else float("nan")
            stats.append((m, est, ratio(W, vz, okf),
                          None if J is None else ratio(J, vz, okf), int(ok.sum())))
        n = r["n_fixations"].to_numpy(np.float64)
        if r["ig_sum"].notna().all():
            for m, col in (("log_likelihood", "ll_sum"), ("information_gain", "ig_sum")):
                s = r[col].to_numpy(np.float64)
                stats.append((m, float(s.sum() / n.sum()), ratio(W, s, n),
                              None if J is None else ratio(J, s, n), n_img))
            if gold_sum is not None:
                s = r["ig_sum"].to_numpy(np.float64)
                total = float(gold_sum.sum())
                if not total > 0:
                    raise DataError(
                        "ig_explained",
                        f"the gold standard's information gain over the centre bias is "
                        f"{total / n.sum():.4g} ≤ 0 bits/fixation: IG explained is undefined")
                stats.append(("ig_explained", float(s.sum() / total), ratio(W, s, gold_sum),
                              None if J is None else ratio(J, s, gold_sum), n_img))
        elif r["ig_sum"].notna().any():
            raise DataError(str(model), "LL/IG present on some images only")
        theta = np.array([t[1] for t in stats])
        boot = np.column_stack([t[2] for t in stats])
        jack = None if J is None else np.column_stack([t[3] for t in stats])
        lo, hi, used = bootstrap_interval(theta, boot, jack, level=level, method=method)
        for k, (m, est, _, _, n_used) in enumerate(stats):
            rows.append({"model": model, "metric": m, "value": est, "ci_low": lo[k],
                         "ci_high": hi[k], "n_images": n_used, "ci_method": used[k]})
    return pd.DataFrame(rows, columns=["model", "metric", "value", "ci_low", "ci_high",
                                       "n_images", "ci_method"])


def evaluate_models(
    models: Mapping[str, SaliencyModel],
    dataset: FixationDataset,
    image_ids: Sequence[str],
    *,
    centre_bias: ProbabilisticModel,
    gold: ProbabilisticModel | None,
    gt_sigma_px: float,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
    ci_method: str = "basic",
    drop_first: bool = True,
    load_images: bool = True,
    auc_borji_splits: int = 100,
    chunk_size: int | None = None,
    conventions: str = "dissect",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score ``models`` (label → model; the label names it in the tables) on ``image_ids``.

    ``gold``: the gold standard whose IG is IG explained's denominator (None: no IG explained);
    it is a model like the others and appears in the tables only if it is in ``models`` too.
    ``gt_sigma_px``: the fixation-density blur for CC/SIM/KLD (``gt.sigma_deg ×
    gt.px_per_degree``). sAUC negatives come from the other images of ``image_ids``.
    ``load_images=False`` gives models ``StimulusImage(id, size=…)`` (baselines only).
    ``chunk_size``: images per :func:`score_chunk` call (None: one chunk); the result does not
    depend on it.

    Returns ``(per_image, summary)``: the tidy per-image table ``model, image, metric, value,
    n_fixations`` and the summary ``model, metric, value, ci_low, ci_high, n_images,
    ci_method`` (:func:`summarise`).
    """
    ids = [str(i) for i in image_ids]
    if not ids:
        raise DataError("evaluate", "no images given")
    if len(set(ids)) != len(ids):
        raise DataError("evaluate", "image ids contain duplicates")
    if not models:
        raise DataError("evaluate", "no models given")
    missing = [i for i in ids if i not in dataset]
    if missing:
        raise DataError("evaluate", f"{len(missing)} image id(s) not in the dataset: "
                                    f"{missing[:5]}")
    for i in ids:  # every image needs fixations: say which one has none before any scoring
        _image_points(dataset, i, drop_first)
    step = len(ids) if chunk_size is None else int(chunk_size)
    if step < 1:
        raise DataError("chunk_size", f"must be ≥ 1, got {chunk_size}")
    chunks = [ids[k:k + step] for k in range(0, len(ids), step)]
    records = pd.concat([
        score_chunk(models, dataset, c, centre_bias=centre_bias, gold=gold,
                    gt_sigma_px=gt_sigma_px, negative_pool=ids, seed=seed,
                    drop_first=drop_first, load_images=load_images,
                    auc_borji_splits=auc_borji_splits, conventions=conventions)
        for c in chunks
    ], ignore_index=True)
    summary = summarise(records, n_boot=n_boot, seed=seed, level=level, method=ci_method)
    return per_image_table(records), summary


def leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per metric (the summary's ``value``), sorted by IG
    explained (descending, NaN / absent last; ties keep the summary's model order)."""
    order = list(pd.unique(summary["model"]))
    wide = summary.pivot(index="model", columns="metric", values="value")
    wide = wide.reindex(index=order, columns=[m for m in METRICS if m in wide.columns])
    if "ig_explained" not in wide.columns:
        wide["ig_explained"] = np.nan
    wide = wide.sort_values("ig_explained", ascending=False, na_position="last", kind="stable")
    wide.columns.name = None
    return wide.reset_index()
