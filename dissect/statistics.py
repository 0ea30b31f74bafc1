"""Statistics of the unit dissection: He et al. (2019) §4.3 (category tables) and §6 (inner vs
output), made rigorous as described in DESIGN.md "Statistics".

Input is the association array of Eq. 1, one per layer: an :class:`xarray.DataArray` (usually
named ``"nss"``) with dims ``("unit", "region")``, float, NaN where Assoc(u, r) is undefined (a
constant unit map on the image, or a region without fixations). Region coords: ``image`` (str),
``category`` (a name of :data:`dissect.categories.NAMES`) and optionally ``region_id``; unit
coord ``unit``; ``attrs["layer"]`` may name the layer.

Everything is expressed as matrix products so that null permutations and bootstrap replicates
cost BLAS calls, not Python loops over units: with ``X`` = Assoc with NaN → 0 (units × regions),
``D`` = the defined indicator and ``C`` the one-hot region → category matrix,
``m = (X @ C) / (D @ C)``. A permutation null is ``C`` with permuted rows; a bootstrap replicate
is ``C`` with rows weighted by the multiplicity of the region's image.

Conventions (documented choices):

* ``m[u, c]`` is the NaN-aware mean over the regions of ``c`` where Assoc(u, r) is defined;
  ``n_defined[u, c]`` counts them; ``m`` is NaN where ``n_defined`` is 0.
* Top-k mean: mean of the ``k`` largest ``m[u, c]`` over units whose ``m`` is defined. When fewer
  than ``k`` units are defined, the mean over all defined ones (``n_units`` tells); NaN if none.
* Count: number of units with ``m[u, c] > threshold`` (undefined units never count).
* Regions undefined for every unit (no fixations inside) carry no information: they are left
  out of the permutation pool and of the bootstrap (``n_regions`` still counts all regions of
  the category; ``n_regions_used`` the informative ones).
* Null ``"labels"`` (default, DESIGN.md): the category labels are permuted across all
  (informative) regions. Null ``"images"``: labels are permuted within each image only, which
  keeps every image's composition of categories (a weaker, more conservative null: images with
  a single region or a single category never change).
* p = (1 + #{null ≥ observed}) / (B + 1); NaN null replicates never count as ≥.
* The same ``seed`` is used for every layer, so layers see the same permutations and bootstrap
  samples (paired comparisons), and one layer's result does not depend on which other layers
  were processed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from dissect.categories import BY_CODE, BY_NAME, NAMES, code_of
from dissect.errors import DataError

STAT_COLUMNS: tuple[str, ...] = (
    "layer",
    "category",
    "stat",
    "value",
    "null_mean",
    "null_q95",
    "p_value",
    "ci_low",
    "ci_high",
    "n_regions",
    "n_regions_used",
    "n_units",
    "n_undefined",
)
"""Columns of the long table of :func:`category_statistics` (DESIGN.md data model + counts)."""

NULLS: tuple[str, ...] = ("labels", "images")
CI_METHODS: tuple[str, ...] = ("percentile", "basic")


# --------------------------------------------------------------------------- validation


def _source(assoc: xr.DataArray, layer: str | None = None) -> str:
    name = layer if layer is not None else assoc.attrs.get("layer")
    return f"association array {name!r}" if name else "association array"


def _canonical_categories(values: Iterable[Any], source: str) -> np.ndarray:
    """Category names of ``values`` in canonical spelling; unknown ones raise DataError."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise DataError(source, "a region has no category label")
        out.append(BY_CODE[code_of(str(v), source)].name)
    return np.asarray(out, dtype=object)


def _present_in_order(cats: Iterable[str]) -> list[str]:
    """The categories of ``cats`` in the display order of :data:`NAMES`."""
    present = set(cats)
    return [n for n in NAMES if n in present]


class _Prepared(NamedTuple):
    X: np.ndarray  # units × regions, float64, NaN → 0
    D: np.ndarray  # units × regions, float64 0/1
    labels: np.ndarray  # (regions,) int index into `categories`
    images: np.ndarray  # (regions,) int index into `image_ids`
    categories: list[str]
    image_ids: np.ndarray
    units: np.ndarray
    n_regions: np.ndarray  # (K,) all regions of each category
    used: np.ndarray  # (regions,) bool: defined for at least one unit


def _prepare(assoc: xr.DataArray, layer: str | None = None) -> _Prepared:
    """Validate an association array and turn it into the matrices of the module docstring."""
    source = _source(assoc, layer)
    if not isinstance(assoc, xr.DataArray):
        raise DataError(source, f"expected an xarray.DataArray, got {type(assoc).__name__}")
    if set(assoc.dims) != {"unit", "region"}:
        raise DataError(source, f"dims must be ('unit', 'region'), got {assoc.dims}")
    assoc = assoc.transpose("unit", "region")
    for coord in ("image", "category"):
        if coord not in assoc.coords or assoc.coords[coord].dims != ("region",):
            raise DataError(source, f"missing region coordinate {coord!r}")
    if assoc.sizes["region"] == 0 or assoc.sizes["unit"] == 0:
        raise DataError(source, f"empty association array (sizes {dict(assoc.sizes)})")
    if not np.issubdtype(assoc.dtype, np.number):
        raise DataError(source, f"values must be numeric, got dtype {assoc.dtype}")
    values = np.asarray(assoc.values, dtype=np.float64)
    if np.isinf(values).any():
        raise DataError(source, "values contain ±inf (undefined NSS must be NaN)")
    cats = _canonical_categories(assoc.coords["category"].values, source)
    categories = _present_in_order(cats)
    lookup = {c: i for i, c in enumerate(categories)}
    labels = np.array([lookup[c] for c in cats], dtype=np.intp)
    image_ids, images = np.unique(assoc.coords["image"].values.astype(str), return_inverse=True)
    D = np.isfinite(values)
    X = np.where(D, values, 0.0)
    units = (
        assoc.coords["unit"].values if "unit" in assoc.coords else np.arange(assoc.sizes["unit"])
    )
    return _Prepared(
        X=X,
        D=D.astype(np.float64),
        labels=labels,
        images=images.astype(np.intp),
        categories=categories,
        image_ids=image_ids,
        units=units,
        n_regions=np.bincount(labels, minlength=len(categories)),
        used=D.any(axis=0),
    )


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    C = np.zeros((labels.size, k), dtype=np.float64)
    C[np.arange(labels.size), labels] = 1.0
    return C


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- category means


def category_means(assoc: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-unit category means ``m[u, c]`` of Assoc(u, r) (Eq. 1) over the regions of ``c``.

    NaN-aware: undefined associations are neither averaged as 0 nor hidden — ``n_defined[u, c]``
    counts the regions that entered each mean, and ``m`` is NaN where it is 0. Computed as
    ``m = (X @ C) / (D @ C)``. Categories: those present, in :data:`NAMES` display order.

    Returns ``(m, n_defined)``, both with dims ``("unit", "category")``.
    """
    p = _prepare(assoc)
    C = _one_hot(p.labels, len(p.categories))
    sums = p.X @ C
    n_def = p.D @ C
    coords = {"unit": p.units, "category": p.categories}
    m = xr.DataArray(_ratio(sums, n_def), dims=("unit", "category"), coords=coords, name="m")
    n = xr.DataArray(
        n_def.round().astype(np.int64), dims=("unit", "category"), coords=coords, name="n_defined"
    )
    m.attrs.update(assoc.attrs)
    n.attrs.update(assoc.attrs)
    m.coords["n_regions"] = ("category", p.n_regions)
    return m, n


# --------------------------------------------------------------------------- the two statistics


def topk_mean(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the k largest values along axis 0, NaN-aware; also the number of defined units.

    ``m`` has units on axis 0 and any trailing shape. Uses :func:`numpy.partition`.
    """
    n_units = m.shape[0]
    k = min(k, n_units)
    defined = np.isfinite(m)
    n_def = defined.sum(axis=0)
    filled = np.where(defined, m, -np.inf)
    top = np.partition(filled, n_units - k, axis=0)[n_units - k :]
    top_def = np.isfinite(top)
    cnt = top_def.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(
            cnt > 0, np.where(top_def, top, 0.0).sum(axis=0) / np.maximum(cnt, 1), np.nan
        )
    return mean, n_def


def _count_above(m: np.ndarray, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (m > threshold).sum(axis=0).astype(np.float64)


# --------------------------------------------------------------------------- null and bootstrap


def _permuted_labels(
    rng: np.random.Generator, labels: np.ndarray, images: np.ndarray, n: int, null: str
) -> np.ndarray:
    """``n`` permutations of ``labels`` (n × R): across all regions or within images."""
    out = np.empty((n, labels.size), dtype=labels.dtype)
    if null == "labels":
        for b in range(n):
            out[b] = rng.permutation(labels)
        return out
    # within images: regions grouped by image, each block shuffled independently
    by_image = np.argsort(images, kind="stable")
    for b in range(n):
        shuffled = np.lexsort((rng.random(labels.size), images))
        new = np.empty_like(labels)
        new[by_image] = labels[shuffled]
        out[b] = new
    return out


def _null_means(
    X: np.ndarray, D: np.ndarray, perms: np.ndarray, K: int, dense_d: bool, chunk: int = 32
) -> np.ndarray:
    """Category means under permuted labels: array (B, units, K), by stacked one-hot products."""
    B, R = perms.shape
    U = X.shape[0]
    out = np.empty((B, U, K))
    rows = np.arange(R)
    for start in range(0, B, chunk):
        stop = min(start + chunk, B)
        b = stop - start
        C = np.zeros((R, b * K))
        C[rows[None, :].repeat(b, 0), perms[start:stop] + (np.arange(b) * K)[:, None]] = 1.0
        num = X @ C
        if dense_d:  # every unit defined on every region: denominators are the label counts
            den = np.broadcast_to(C.sum(axis=0), num.shape)
        else:
            den = D @ C
        out[start:stop] = _ratio(num, den).reshape(U, b, K).transpose(1, 0, 2)
    return out


def _bootstrap_means(
    X: np.ndarray,
    D: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    weights: np.ndarray,
    K: int,
    dense_d: bool,
    chunk: int = 200,
) -> np.ndarray:
    """Category means under image bootstrap weights (B × n_images): array (B, units, K).

    Regions are first summed per (category, image) group (``np.add.reduceat``), then each
    category's groups are weighted by image multiplicity with one matrix product per category:
    ``m_b[:, c] = XG_c @ W[b, img(G_c)] / DG_c @ W[b, img(G_c)]``.
    """
    order = np.lexsort((images, labels))
    lab, img = labels[order], images[order]
    starts = np.flatnonzero(np.r_[True, (lab[1:] != lab[:-1]) | (img[1:] != img[:-1])])
    XG = np.add.reduceat(X[:, order], starts, axis=1)
    g_lab, g_img = lab[starts], img[starts]
    if dense_d:
        n_g = np.diff(np.r_[starts, lab.size]).astype(np.float64)
    else:
        DG = np.add.reduceat(D[:, order], starts, axis=1)
    B = weights.shape[0]
    U = X.shape[0]
    out = np.full((B, U, K), np.nan)
    for c in range(K):
        sel = np.flatnonzero(g_lab == c)
        if sel.size == 0:
            continue
        for start in range(0, B, chunk):
            stop = min(start + chunk, B)
            W = weights[start:stop][:, g_img[sel]].T  # groups × b
            num = XG[:, sel] @ W  # U × b
            den = np.broadcast_to(n_g[sel] @ W, num.shape) if dense_d else DG[:, sel] @ W
            out[start:stop, :, c] = _ratio(num, den).T
    return out


def _stats_of(means: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(top-k mean, count above T) of replicate means (B, U, K) → two (B, K) arrays."""
    top, _ = topk_mean(np.moveaxis(means, 1, 0), k)
    cnt = _count_above(np.moveaxis(means, 1, 0), threshold)
    return top, cnt


# --------------------------------------------------------------------------- §4.3 table


def _layer_statistics(
    assoc: xr.DataArray,
    layer: str | None,
    *,
    k: int,
    threshold: float,
    n_null: int,
    n_boot: int,
    seed: int,
    ci: float,
    null: str,
    ci_method: str,
) -> pd.DataFrame:
    p = _prepare(assoc, layer)
    source = _source(assoc, layer)
    layer_name = layer if layer is not None else str(assoc.attrs.get("layer", ""))
    K = len(p.categories)
    used = p.used
    if not used.any():
        raise DataError(source, "every association is NaN (no defined unit × region value)")
    X, D, labels, images = p.X[:, used], p.D[:, used], p.labels[used], p.images[used]
    dense_d = bool(D.all())

    C = _one_hot(labels, K)
    m = _ratio(X @ C, D @ C)
    obs_top, n_units = topk_mean(m, k)
    obs_cnt = _count_above(m, threshold)
    n_used = np.bincount(labels, minlength=K)

    rng = np.random.default_rng(seed)
    if n_null > 0:
        perms = _permuted_labels(rng, labels, images, n_null, null)
        null_top, null_cnt = _stats_of(_null_means(X, D, perms, K, dense_d), k, threshold)
    else:
        null_top = null_cnt = np.full((0, K), np.nan)
    if n_boot > 0:
        n_img = p.image_ids.size
        weights = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=n_boot).astype(
            np.float64
        )
        boot_top, boot_cnt = _stats_of(
            _bootstrap_means(X, D, labels, images, weights, K, dense_d), k, threshold
        )
    else:
        boot_top = boot_cnt = np.full((0, K), np.nan)

    alpha = (1.0 - ci) / 2.0
    rows = []
    for stat, obs, nul, boot in (
        (f"top{k}_mean", obs_top, null_top, boot_top),
        ("count_above_T", obs_cnt, null_cnt, boot_cnt),
    ):
        null_mean, null_q95 = _nan_summary(nul, 0.95)
        lo, hi = _nan_quantiles(boot, alpha, 1.0 - alpha)
        if ci_method == "basic":
            lo, hi = 2.0 * obs - hi, 2.0 * obs - lo
        with np.errstate(invalid="ignore"):
            ge = (nul >= obs[None, :]).sum(axis=0)
        pval = np.where(np.isfinite(obs), (1.0 + ge) / (nul.shape[0] + 1.0), np.nan)
        for j, cat in enumerate(p.categories):
            rows.append(
                {
                    "layer": layer_name,
                    "category": cat,
                    "stat": stat,
                    "value": float(obs[j]),
                    "null_mean": float(null_mean[j]),
                    "null_q95": float(null_q95[j]),
                    "p_value": float(pval[j]) if nul.shape[0] else np.nan,
                    "ci_low": float(lo[j]),
                    "ci_high": float(hi[j]),
                    "n_regions": int(p.n_regions[j]),
                    "n_regions_used": int(n_used[j]),
                    "n_units": int(n_units[j]),
                    "n_undefined": int(m.shape[0] - n_units[j]),
                }
            )
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def _nan_summary(a: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    K = a.shape[1]
    mean, qq = np.full(K, np.nan), np.full(K, np.nan)
    for j in range(K):
        col = a[:, j][np.isfinite(a[:, j])]
        if col.size:
            mean[j], qq[j] = col.mean(), np.quantile(col, q)
    return mean, qq


def _nan_quantiles(a: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    K = a.shape[1]
    out_lo, out_hi = np.full(K, np.nan), np.full(K, np.nan)
    for j in range(K):
        col = a[:, j][np.isfinite(a[:, j])]
        if col.size:
            out_lo[j], out_hi[j] = np.quantile(col, [lo, hi])
    return out_lo, out_hi


def category_statistics(
    assoc: xr.DataArray | Mapping[str, xr.DataArray] | Iterable[xr.DataArray],
    *,
    k: int = 10,
    threshold: float = 1.5,
    n_null: int = 200,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    null: str = "labels",
    ci_method: str = "percentile",
) -> pd.DataFrame:
    """Category statistics of §4.3 with a permutation null and image-bootstrap CIs.

    For each layer and category ``c`` two statistics of ``m[u, c]`` (:func:`category_means`):
    ``f"top{k}_mean"`` (mean of the k best units' ``m``, the study's Table 2 number) and
    ``"count_above_T"`` (#units with ``m > threshold``). Null: ``n_null`` permutations of the
    region labels (``null="labels"``, default: across all regions; ``"images"``: within each
    image); ``null_mean``, ``null_q95`` and ``p_value = (1 + #{null ≥ obs}) / (B + 1)``. CI:
    percentile interval (level ``ci``) of ``n_boot`` bootstrap replicates resampling images with
    replacement (each keeps all its regions). One :class:`numpy.random.Generator` seeded from
    ``seed`` per layer: permutations first, then bootstrap weights.

    Caveat on the CI: a top-k mean is a selection statistic, and resampling images adds noise
    to every unit's mean, so its bootstrap distribution sits *above* the observed value when
    units differ little (noise-dominated data; the percentile interval may then not even
    contain ``value``). On data with clearly separated top units it is centred on ``value``.
    ``ci_method="basic"`` (2·value − quantiles) reflects that shift; the default is the
    percentile interval.

    ``assoc``: one DataArray (layer name from ``attrs["layer"]``), a ``{layer: DataArray}``
    mapping, or an iterable of DataArrays. Returns the long table, columns :data:`STAT_COLUMNS`.
    """
    if ci_method not in CI_METHODS:
        raise DataError(
            "category_statistics", f"ci_method must be one of {CI_METHODS}, got {ci_method!r}"
        )
    if null not in NULLS:
        raise DataError("category_statistics", f"null must be one of {NULLS}, got {null!r}")
    if int(k) < 1:
        raise DataError("category_statistics", f"k must be ≥ 1, got {k}")
    if not 0.0 < ci < 1.0:
        raise DataError("category_statistics", f"ci must be in (0, 1), got {ci}")
    if n_null < 0 or n_boot < 0:
        raise DataError("category_statistics", "n_null and n_boot must be ≥ 0")
    kw = dict(
        k=int(k), threshold=float(threshold), n_null=int(n_null), n_boot=int(n_boot),
        seed=seed, ci=float(ci), null=null, ci_method=ci_method,
    )  # fmt: skip
    if isinstance(assoc, xr.DataArray):
        items: list[tuple[str | None, xr.DataArray]] = [(None, assoc)]
    elif isinstance(assoc, Mapping):
        items = [(str(name), da) for name, da in assoc.items()]
    else:
        items = [(None, da) for da in assoc]
    if not items:
        raise DataError("category_statistics", "no association arrays given")
    frames = [_layer_statistics(da, name, **kw) for name, da in items]
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- §6: inner vs output


def _region_values(values: Any, categories: Sequence[str] | None, source: str) -> pd.DataFrame:
    """Per-region values as a DataFrame ``category, value`` (+ ``image``, ``region_id``)."""
    if isinstance(values, xr.DataArray):
        if values.ndim != 1:
            raise DataError(source, f"expected a 1-D per-region array, got dims {values.dims}")
        df = pd.DataFrame({"value": np.asarray(values.values, dtype=np.float64)})
        for coord in ("image", "region_id", "category"):
            if coord in values.coords and values.coords[coord].ndim == 1:
                df[coord] = values.coords[coord].values
    elif isinstance(values, pd.Series):
        df = pd.DataFrame({"value": values.to_numpy(dtype=np.float64)})
    else:
        df = pd.DataFrame({"value": np.asarray(values, dtype=np.float64).ravel()})
    if categories is not None:
        cats = np.asarray(list(categories), dtype=object)
        if cats.size != len(df):
            raise DataError(source, f"{cats.size} category labels for {len(df)} region values")
        df["category"] = cats
    if "category" not in df:
        raise DataError(source, "no category labels (give `categories` or a 'category' coord)")
    df["category"] = _canonical_categories(df["category"], source)
    if np.isinf(df["value"]).any():
        raise DataError(source, "values contain ±inf (undefined NSS must be NaN)")
    return df


def _per_category_mean(df: pd.DataFrame, col: str) -> pd.DataFrame:
    rows = []
    for cat in _present_in_order(df["category"]):
        v = df.loc[df["category"] == cat, "value"].to_numpy()
        ok = np.isfinite(v)
        rows.append(
            {
                "category": cat,
                col: float(v[ok].mean()) if ok.any() else np.nan,
                "n": int(ok.sum()),
                "n_regions": int(v.size),
            }
        )
    return pd.DataFrame(rows, columns=["category", col, "n", "n_regions"])


def output_saliency(pred_region_nss: Any, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Output saliency OS_c (He et al. Eq. 2): mean over the regions of ``c`` of the NSS of the
    model's predicted map at the fixations inside the region.

    ``pred_region_nss``: per-region NSS (1-D DataArray with a ``category`` region coord, or an
    array/Series with ``categories`` aligned to it). NaN regions (no fixations, constant map)
    are excluded and counted: columns ``category, os, n`` (regions used), ``n_regions`` (all).
    """
    df = _region_values(pred_region_nss, categories, "output_saliency")
    return _per_category_mean(df, "os")


def region_output_difference(
    pred_region_nss: Any, gt_region_nss: Any, categories: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-region output difference |NSS(pred) − NSS(GT)| (the summand of Eq. 3) with the
    category and its cluster (head vs rest, :class:`dissect.categories.Category`); the input of
    :func:`od_anova`. Columns ``category, cluster, od`` (+ ``image``, ``region_id`` if known);
    regions where either NSS is undefined have ``od`` NaN."""
    pred = _region_values(pred_region_nss, categories, "output_difference (prediction)")
    gt = _region_values(gt_region_nss, categories, "output_difference (ground truth)")
    if len(pred) != len(gt):
        raise DataError(
            "output_difference", f"{len(pred)} predicted vs {len(gt)} ground-truth region values"
        )
    if not (pred["category"].to_numpy() == gt["category"].to_numpy()).all():
        raise DataError(
            "output_difference", "prediction and ground truth regions differ in category"
        )
    for key in ("image", "region_id"):
        if (
            key in pred
            and key in gt
            and not (pred[key].astype(str).to_numpy() == gt[key].astype(str).to_numpy()).all()
        ):
            raise DataError("output_difference", f"prediction and ground truth differ in {key!r}")
    out = pred.drop(columns="value").copy()
    out["cluster"] = [BY_NAME[c].cluster for c in out["category"]]
    out["od"] = np.abs(pred["value"].to_numpy() - gt["value"].to_numpy())
    return out


def output_difference(
    pred_region_nss: Any, gt_region_nss: Any, categories: Sequence[str] | None = None
) -> pd.DataFrame:
    """Output difference OD_c (He et al. Eq. 3): mean over the regions of ``c`` of
    |NSS(prediction) − NSS(ground-truth density)| at the fixations inside the region.

    Columns ``category, od, n`` (regions where both are defined), ``n_regions``.
    """
    reg = region_output_difference(pred_region_nss, gt_region_nss, categories)
    return _per_category_mean(reg.rename(columns={"od": "value"}), "od")


class SpearmanResult(NamedTuple):
    r_s: float
    p_value: float
    n: int
    categories: tuple[str, ...]


def _by_category(values: Any, source: str, value_col: str | None = None) -> pd.Series:
    if isinstance(values, pd.DataFrame):
        if "category" not in values:
            raise DataError(source, "table has no 'category' column")
        cols = [c for c in values.columns if c not in ("category", "n", "n_regions")]
        col = value_col or (cols[0] if len(cols) == 1 else None)
        if col is None:
            raise DataError(source, f"cannot tell the value column among {cols}")
        s = pd.Series(values[col].to_numpy(dtype=np.float64), index=values["category"])
    elif isinstance(values, xr.DataArray):
        s = values.to_series()
    elif isinstance(values, Mapping):
        s = pd.Series(dict(values), dtype=np.float64)
    else:
        s = pd.Series(values)
    s.index = _canonical_categories(s.index, source)
    if s.index.duplicated().any():
        raise DataError(
            source, f"duplicate categories {sorted(set(s.index[s.index.duplicated()]))}"
        )
    return s.astype(np.float64)


def inner_output_spearman(top10_by_category: Any, os_by_category: Any) -> SpearmanResult:
    """Spearman rank correlation (§6) between inner (top-10 unit NSS per category, Table 2) and
    output saliency OS_c (Eq. 2) across categories, with :func:`scipy.stats.spearmanr`.

    Inputs: Series indexed by category, ``{category: value}``, or a tidy DataFrame with a
    ``category`` column and one value column. The two must cover the same categories
    (otherwise :class:`DataError` naming the difference); categories where either is NaN are
    left out and ``n`` says how many were used.
    """
    from scipy.stats import spearmanr

    a = _by_category(top10_by_category, "inner_output_spearman (inner)")
    b = _by_category(os_by_category, "inner_output_spearman (output)")
    if set(a.index) != set(b.index):
        raise DataError(
            "inner_output_spearman",
            f"category sets differ: only inner {sorted(set(a.index) - set(b.index))}, "
            f"only output {sorted(set(b.index) - set(a.index))}",
        )
    cats = [c for c in _present_in_order(a.index) if np.isfinite(a[c]) and np.isfinite(b[c])]
    if len(cats) < 3:
        raise DataError("inner_output_spearman", f"need ≥ 3 categories with values, got {cats}")
    res = spearmanr(a[cats].to_numpy(), b[cats].to_numpy())
    return SpearmanResult(float(res.statistic), float(res.pvalue), len(cats), tuple(cats))


def _anova_table(df: pd.DataFrame, value: str, factor: str) -> pd.DataFrame:
    """One-way ANOVA (statsmodels ols + anova_lm, type II) as a tidy table with η²."""
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    model = ols(f"Q('{value}') ~ C(Q('{factor}'))", data=df).fit()
    table = sm.stats.anova_lm(model, typ=2)
    ss_total = float(table["sum_sq"].sum())
    out = pd.DataFrame(
        {
            "term": [factor if i != "Residual" else "Residual" for i in table.index],
            "df": table["df"].to_numpy(dtype=np.float64),
            "sum_sq": table["sum_sq"].to_numpy(dtype=np.float64),
            "F": table["F"].to_numpy(dtype=np.float64),
            "p_value": table["PR(>F)"].to_numpy(dtype=np.float64),
        }
    )
    out["eta_sq"] = np.where(out["term"] == "Residual", np.nan, out["sum_sq"] / ss_total)
    out["n"] = len(df)
    return out


def od_anova(region_table: pd.DataFrame, factor: str = "cluster") -> pd.DataFrame:
    """One-way ANOVA (§6) of the per-region output difference with the category cluster (head
    vs rest) as factor; ``factor="category"`` gives the 12-level version.

    ``region_table``: :func:`region_output_difference` output (columns ``od`` and ``category``;
    ``cluster`` is derived from the category when absent). Regions with NaN ``od`` are left out
    (``n`` says how many were used). Returns rows ``factor`` and ``Residual`` with
    ``df, sum_sq, F, p_value, eta_sq`` (η² = SS_factor / SS_total).
    """
    source = "od_anova"
    if "od" not in region_table or "category" not in region_table:
        raise DataError(source, "region table needs columns 'od' and 'category'")
    df = region_table.copy()
    df["category"] = _canonical_categories(df["category"], source)
    if "cluster" not in df:
        df["cluster"] = [BY_NAME[c].cluster for c in df["category"]]
    if factor not in ("cluster", "category"):
        raise DataError(source, f"factor must be 'cluster' or 'category', got {factor!r}")
    df = df.loc[np.isfinite(df["od"].to_numpy(dtype=np.float64)), ["od", factor]]
    if df[factor].nunique() < 2:
        raise DataError(source, f"ANOVA needs ≥ 2 levels of {factor!r}, got {df[factor].unique()}")
    return _anova_table(df, "od", factor)


def top_units_table(m: xr.DataArray, k: int | None = 10) -> pd.DataFrame:
    """Tidy ``unit, category, nss`` table of the per-unit category means ``m`` (from
    :func:`category_means`): the ``k`` best units of each category (all defined units when
    ``k`` is None). Undefined (NaN) means are never selected."""
    if set(m.dims) != {"unit", "category"}:
        raise DataError("top_units_table", f"dims must be ('unit', 'category'), got {m.dims}")
    m = m.transpose("unit", "category")
    units = m.coords["unit"].values if "unit" in m.coords else np.arange(m.sizes["unit"])
    rows = []
    for j, cat in enumerate(m.coords["category"].values):
        v = np.asarray(m.values[:, j], dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(v))
        order = ok[np.argsort(-v[ok], kind="stable")]
        if k is not None:
            order = order[:k]
        rows.extend({"unit": units[i], "category": str(cat), "nss": float(v[i])} for i in order)
    return pd.DataFrame(rows, columns=["unit", "category", "nss"])


def unit_anova_tukey(
    m: xr.DataArray | pd.DataFrame, k: int | None = 10, alpha: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-way ANOVA across categories of per-unit NSS, and Tukey HSD pairwise comparisons.

    Following the study (§4.3), the observations of category ``c`` are the category means of its
    top-``k`` units (k = 10: the numbers behind Table 2); ``k=None`` uses every defined unit.
    Caveat: the same unit may be among the top units of several categories, so the groups are
    not independent — read F and p as descriptive. ``m``: the ``(unit, category)`` array of
    :func:`category_means`, or a tidy DataFrame with columns ``category`` and ``nss`` used as
    is. Returns ``(anova, tukey)``: :func:`_anova_table` rows, and one row per category pair
    ``group1, group2, meandiff, p_adj, ci_low, ci_high, reject`` from
    :func:`statsmodels.stats.multicomp.pairwise_tukeyhsd`.
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    source = "unit_anova_tukey"
    if isinstance(m, xr.DataArray):
        table = top_units_table(m, k)
    elif isinstance(m, pd.DataFrame):
        if not {"category", "nss"} <= set(m.columns):
            raise DataError(source, "table needs columns 'category' and 'nss'")
        table = m.copy()
    else:
        raise DataError(source, f"expected a DataArray or DataFrame, got {type(m).__name__}")
    table = table.loc[np.isfinite(table["nss"].to_numpy(dtype=np.float64))]
    table["category"] = _canonical_categories(table["category"], source)
    counts = table["category"].value_counts()
    if len(counts) < 2 or (counts < 2).all():
        raise DataError(source, f"need ≥ 2 categories with ≥ 2 values each, got {dict(counts)}")
    anova = _anova_table(table, "nss", "category")
    res = pairwise_tukeyhsd(table["nss"].to_numpy(dtype=np.float64), table["category"], alpha=alpha)
    groups = res.groupsunique
    i1, i2 = np.triu_indices(len(groups), 1)
    tukey = pd.DataFrame(
        {
            "group1": np.asarray(groups)[i1].astype(str),
            "group2": np.asarray(groups)[i2].astype(str),
            "meandiff": np.asarray(res.meandiffs, dtype=np.float64),
            "p_adj": np.asarray(res.pvalues, dtype=np.float64),
            "ci_low": np.asarray(res.confint[:, 0], dtype=np.float64),
            "ci_high": np.asarray(res.confint[:, 1], dtype=np.float64),
            "reject": np.asarray(res.reject, dtype=bool),
        }
    )
    return anova, tukey


# --------------------------------------------------------------------------- Fig. 4 analogue


def improvement(stats_by_k: pd.DataFrame, stat: str | None = None) -> pd.DataFrame:
    """% improvement of a category statistic of each fine-tuned model (column ``k``) over the
    pretrained one (``k == 0``), per layer and category (Fig. 4 analogue).

    ``stats_by_k``: :func:`category_statistics` tables concatenated with a column ``k``.
    ``stat``: the statistic (default: the single ``top*_mean`` one present). Improvement is
    ``100 · (v_k − v_0) / |v_0|`` (NaN when v_0 = 0); the same for the excess over the null,
    ``value − null_mean``, which discounts the top-k selection inflation.
    Columns ``[layer,] category, k, value, baseline, improvement_pct, excess, baseline_excess,
    excess_improvement_pct``.
    """
    source = "improvement"
    need = {"k", "category", "stat", "value", "null_mean"}
    if not need <= set(stats_by_k.columns):
        raise DataError(source, f"table lacks columns {sorted(need - set(stats_by_k.columns))}")
    if stat is None:
        tops = sorted(s for s in stats_by_k["stat"].unique() if str(s).startswith("top"))
        if len(tops) != 1:
            raise DataError(source, f"give `stat`: top-k statistics present are {tops}")
        stat = tops[0]
    df = stats_by_k.loc[stats_by_k["stat"] == stat].copy()
    if df.empty:
        raise DataError(source, f"no rows with stat {stat!r}")
    keys = ["layer", "category"] if "layer" in df else ["category"]
    if df.duplicated(keys + ["k"]).any():
        raise DataError(source, f"duplicate rows per {keys + ['k']} for stat {stat!r}")
    df["excess"] = df["value"] - df["null_mean"]
    base = df.loc[df["k"] == 0, keys + ["value", "excess"]].rename(
        columns={"value": "baseline", "excess": "baseline_excess"}
    )
    if base.empty:
        raise DataError(source, "no pretrained rows (k == 0) to compare with")
    out = df.loc[df["k"] != 0].merge(base, on=keys, how="left", validate="many_to_one")
    missing = out.loc[out["baseline"].isna() & out["value"].notna(), keys].drop_duplicates()
    if not missing.empty:
        raise DataError(source, f"no k == 0 row for {missing.to_dict('records')}")

    def pct(new: pd.Series, old: pd.Series) -> np.ndarray:
        o = old.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                o != 0, 100.0 * (new.to_numpy(dtype=np.float64) - o) / np.abs(o), np.nan
            )

    out["improvement_pct"] = pct(out["value"], out["baseline"])
    out["excess_improvement_pct"] = pct(out["excess"], out["baseline_excess"])
    cols = keys + ["k", "value", "baseline", "improvement_pct", "excess", "baseline_excess",
                   "excess_improvement_pct"]  # fmt: skip
    order = {c: i for i, c in enumerate(NAMES)}
    out = out.assign(_o=out["category"].map(order))
    sort = ["k", "_o"]
    if "layer" in keys:  # layers in order of first appearance, not alphabetical
        first = {name: i for i, name in enumerate(pd.unique(df["layer"]))}
        out["_l"] = out["layer"].map(first)
        sort = ["_l", *sort]
    out = out.sort_values(sort, kind="stable")
    return out[cols].reset_index(drop=True)
