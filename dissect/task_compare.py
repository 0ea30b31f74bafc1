"""Task vs data (He et al. 2019, §8): pretrained (pt), saliency- (sp) and scene- (sr) tuned trunks.

Fine-tuning a trunk for saliency changes its units. Is that because of the *task* (predicting
fixations) or because of the *data* (the saliency images)? The study fine-tunes the same trunk
on the same images for scene recognition (:mod:`dissect.scene`) and compares:

* **Tables 7–8 style, mean-map NSS** (:func:`mean_map_nss`, :func:`per_image_mean_nss`,
  :func:`table8`): the mean of all unit maps of the last trunk layer, taken as a saliency map,
  scored by NSS against the human fixations, for images whose scene is classified correctly vs
  wrongly, for each of pt / sp / sr.
* **Paired change test** (:func:`paired_deltas`, :func:`paired_permutation_test`): for matched
  items (categories, or units), the change of a statistic from pt under saliency fine-tuning,
  Δsp = sp − pt, against its change under scene fine-tuning, Δsr = sr − pt, with a sign-flip
  permutation test.
* **Table 7** (:func:`task_statistics`): the category statistics of the last trunk layer of
  pt, sp and sr side by side, and the paired test of each statistic over categories.

Fine-tuned trunks of either side come out as Backbones with :func:`finetuned_trunk`, so the unit
analyses run on them exactly as on the pretrained trunk.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy import stats

from dissect.errors import DataError
from dissect.statistics import STAT_COLUMNS, category_statistics

log = logging.getLogger(__name__)

__all__ = [
    "finetuned_trunk",
    "mean_map_nss",
    "per_image_mean_nss",
    "table8",
    "paired_deltas",
    "paired_permutation_test",
    "task_statistics",
]


# --------------------------------------------------------------------------------------------
# fine-tuned trunks


def finetuned_trunk(model: Any, tag: str | None = None) -> Any:
    """The trunk of a fine-tuned model as a Backbone (same stages, layers and module paths).

    Uses ``model.trunk_backbone()`` when the model has it (:class:`dissect.scene.SceneClassifier`);
    otherwise (e.g. :class:`dissect.models.readout.SaliencyReadout`, which keeps its fine-tuned
    backbone copy as ``model.backbone``) deep-copies ``model.backbone`` and sets its
    ``weights_id`` to ``<pretrained id>+<tag>:<sha256 of the trunk state>`` so caches never mix
    it with the pretrained trunk.
    """
    if hasattr(model, "trunk_backbone"):
        return model.trunk_backbone()
    bb = copy.deepcopy(model.backbone)
    bb.model.cpu().eval()
    for p in bb.model.parameters():
        p.requires_grad_(False)
    from dissect.backbones import state_dict_sha256  # the package's one state-dict hash

    digest = state_dict_sha256(bb.model, 12)
    bb.weights_id = f"{bb.weights_id}+{tag or type(model).__name__}:{digest}"
    return bb


# --------------------------------------------------------------------------------------------
# mean-map NSS (Table 8)


def mean_map_nss(activations: Any, image_size: Sequence[int], points: Any) -> float:
    """NSS (Peters et al. 2005) of the mean of all unit maps of a layer against fixations.

    The map is ``mean_u A_u`` (units, h, w → h, w), bilinearly upsampled to ``image_size`` =
    (H, W) with ``interpolate(mode="bilinear", align_corners=False)``; NSS uses the population
    std over the whole upsampled map and the fixation pixels ``(rint(y), rint(x))`` of the
    ``(N, 2)`` (x, y) ``points``. Upsampling is linear, so averaging before upsampling is exact;
    the upsampled map is never materialised (:func:`dissect.metrics.region_nss` with every
    fixation in one region). A constant map gives NaN; no fixation raises :class:`DataError`.
    """
    from dissect.metrics import region_nss

    a = activations.detach().cpu().numpy() if torch.is_tensor(activations) else activations
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3:
        raise DataError("activations", f"expected (units, h, w), got shape {a.shape}")
    if a.shape[0] == 0:
        raise DataError("activations", "no unit maps")
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise DataError("points", f"need a non-empty (N, 2) array of (x, y), got shape {p.shape}")
    mean = a.mean(axis=0, keepdims=True)
    return float(region_nss(mean, image_size, p, np.ones(len(p), dtype=np.int64))[0, 0])


def _correct_lookup(correct: Any) -> dict[str, bool]:
    if isinstance(correct, pd.DataFrame):
        if not {"image", "correct"} <= set(correct.columns):
            raise DataError("predictions", "need columns image, correct")
        if correct["image"].astype(str).duplicated().any():
            raise DataError("predictions", "duplicate images")
        return {
            str(i): _as_bool(c, "predictions")
            for i, c in zip(correct["image"], correct["correct"], strict=True)
        }
    return {str(i): _as_bool(c, "correct") for i, c in dict(correct).items()}


def _as_bool(v: Any, source: str) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "0", "1"):
        return v.strip().lower() in ("true", "1")
    raise DataError(source, f"'correct' must be boolean, got {v!r}")


def per_image_mean_nss(
    trunks: Mapping[str, Any],
    dataset: Any,
    ids: Iterable[str],
    *,
    correct: Any = None,
    drop_first: bool = True,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """Mean-map NSS of each image under each trunk: DataFrame ``image, model, nss[, correct]``.

    ``trunks``: model name (e.g. "pt", "sp", "sr") → Backbone. Each trunk's last stage output is
    its last unit layer (post-nonlinearity; the Backbone contract), averaged over units and
    scored with :func:`mean_map_nss` at the image's original size. ``drop_first`` drops each
    observer's first fixation (OSIE's central start, as in the association analysis).
    ``correct``: per-image scene correctness (mapping id → bool, or the predictions DataFrame of
    :func:`dissect.scene.evaluate_scene_model`), copied into a ``correct`` column; every id must
    be in it. ``progress``: a tqdm bar (images × trunks) on stderr.
    """
    from tqdm.auto import tqdm

    ids = [str(i) for i in ids]
    lookup = _correct_lookup(correct) if correct is not None else None
    if lookup is not None:
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise DataError(
                "predictions", f"no scene prediction for {len(missing)} image(s): {missing[:8]}"
            )
    rows = []
    bar = tqdm(total=len(trunks) * len(ids), desc="mean-map NSS", unit="image",
               disable=not progress)
    for name, bb in trunks.items():
        bar.set_postfix_str(name, refresh=False)
        trunk = torch.nn.Sequential(*[m for _, m in bb.stages]).to(device).eval()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            images = [dataset.load_image(i) for i in chunk]
            x = bb.preprocess(images)
            with torch.no_grad():
                maps = trunk(x.to(device, torch.float32)).mean(dim=1).double().cpu().numpy()
            for i, img, m in zip(chunk, images, maps, strict=True):
                pts = dataset.points(i, drop_first=drop_first)
                rows.append(
                    {"image": i, "model": name, "nss": mean_map_nss(m[None], img.shape[:2], pts)}
                )
            bar.update(len(chunk))
        trunk.cpu()
    bar.close()
    out = pd.DataFrame(rows, columns=["image", "model", "nss"])
    if lookup is not None:
        out["correct"] = [lookup[i] for i in out["image"]]
    return out


def table8(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean-map NSS of correctly vs wrongly scene-classified images, per model (cf. Table 8).

    Input: one row per (image, model) with columns ``image, model, nss, correct``. Output, one
    row per model (first-appearance order): ``model, n_correct, n_wrong, nss_correct,
    nss_wrong, sd_correct, sd_wrong, diff`` (= nss_correct − nss_wrong), ``u_stat, p_value,
    n_undefined``. The test is the two-sided Mann–Whitney U test (scipy, asymptotic with
    continuity correction for large samples, exact for small ones without ties): the two groups
    are different images (unpaired), typically of unequal size, and per-image NSS is skewed
    and bounded below, so a rank test is safer than Welch's t. Images with undefined NSS
    (constant mean map) are excluded from both groups and counted in ``n_undefined``; a group
    with no image gives NaN p.
    """
    need = {"image", "model", "nss", "correct"}
    if not need <= set(per_image.columns):
        raise DataError(
            "per-image table", f"missing columns {sorted(need - set(per_image.columns))}"
        )
    t = per_image.copy()
    t["image"] = t["image"].astype(str)
    dup = t.duplicated(["image", "model"])
    if dup.any():
        raise DataError(
            "per-image table",
            f"{int(dup.sum())} duplicate (image, model) rows, "
            f"e.g. {t.loc[dup, ['image', 'model']].iloc[0].tolist()}",
        )
    t["correct"] = [_as_bool(c, "per-image table") for c in t["correct"]]
    t["nss"] = pd.to_numeric(t["nss"], errors="raise").astype(float)
    rows = []
    for model, g in t.groupby("model", sort=False):
        undefined = int(g["nss"].isna().sum())
        g = g.dropna(subset=["nss"])
        a = g.loc[g["correct"], "nss"].to_numpy()
        b = g.loc[~g["correct"], "nss"].to_numpy()
        if len(a) and len(b):
            res = stats.mannwhitneyu(a, b, alternative="two-sided")
            u, p = float(res.statistic), float(res.pvalue)
        else:
            u = p = np.nan
        rows.append(
            {
                "model": model,
                "n_correct": len(a),
                "n_wrong": len(b),
                "nss_correct": a.mean() if len(a) else np.nan,
                "nss_wrong": b.mean() if len(b) else np.nan,
                "sd_correct": a.std(ddof=1) if len(a) > 1 else np.nan,
                "sd_wrong": b.std(ddof=1) if len(b) > 1 else np.nan,
                "diff": (a.mean() - b.mean()) if len(a) and len(b) else np.nan,
                "u_stat": u,
                "p_value": p,
                "n_undefined": undefined,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# paired change test


def paired_deltas(
    table: pd.DataFrame,
    item: str | Sequence[str],
    *,
    value: str = "value",
    model: str = "model",
    base: str = "pt",
    tuned: Sequence[str] = ("sp", "sr"),
) -> pd.DataFrame:
    """Changes from ``base`` of a statistic, per matched item: one column per tuned model.

    ``table`` is long: one row per (item..., model) with the statistic in ``value`` (e.g. the
    category statistics of pt, sp and sr stacked with a ``model`` column). Returns a DataFrame
    indexed by ``item`` with columns ``tuned`` (``sp`` = sp − pt, ``sr`` = sr − pt). Items
    missing for any model, or duplicated, raise :class:`DataError` (never silently dropped).
    """
    keys = [item] if isinstance(item, str) else list(item)
    need = {*keys, value, model}
    if not need <= set(table.columns):
        raise DataError("paired table", f"missing columns {sorted(need - set(table.columns))}")
    models = [base, *tuned]
    t = table[table[model].isin(models)]
    dup = t.duplicated([*keys, model])
    if dup.any():
        raise DataError("paired table", f"{int(dup.sum())} duplicate (item, model) rows")
    wide = t.pivot(index=keys, columns=model, values=value)
    absent = [m for m in models if m not in wide.columns]
    if absent:
        raise DataError("paired table", f"no rows for model(s) {absent}")
    present = t.groupby(keys)[model].apply(set)
    incomplete = present[present.apply(lambda s: not set(models) <= s)]
    if len(incomplete):
        raise DataError(
            "paired table",
            f"{len(incomplete)} item(s) not present for all of "
            f"{models}, e.g. {incomplete.index[0]!r} has {sorted(incomplete.iloc[0])}",
        )
    return pd.DataFrame({m: wide[m] - wide[base] for m in tuned}, index=wide.index)


def _align(delta_sp: Any, delta_sr: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(delta_sp, pd.Series) and isinstance(delta_sr, pd.Series):
        a, b = delta_sp.index, delta_sr.index
        if a.has_duplicates or b.has_duplicates:
            raise DataError("deltas", "duplicate item labels")
        if set(a) != set(b):
            only = sorted(map(str, set(a) ^ set(b)))
            raise DataError("deltas", f"items differ between Δsp and Δsr: {only[:8]}")
        delta_sr = delta_sr.reindex(a)
    x = np.asarray(delta_sp, dtype=np.float64).ravel()
    y = np.asarray(delta_sr, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise DataError("deltas", f"Δsp has {x.size} items, Δsr {y.size}: they must be paired")
    if np.isinf(x).any() or np.isinf(y).any():
        raise DataError("deltas", "infinite values")
    return x, y


def paired_permutation_test(
    delta_sp: Any,
    delta_sr: Any,
    n_perm: int = 10000,
    seed: int = 0,
    *,
    statistic: str = "abs",
) -> pd.DataFrame:
    """Paired sign-flip permutation test of Δsp = sp − pt against Δsr = sr − pt over matched items.

    Statistic ``T = mean_i d_i`` with ``d_i = |Δsp_i| − |Δsr_i|`` (``statistic="abs"``, the
    default) or ``d_i = Δsp_i − Δsr_i`` (``"signed"``). "abs" asks *which fine-tuning changes
    the representation more*, whatever the direction: a unit whose head association rises by
    0.5 under saliency tuning and falls by 0.5 under scene tuning changed equally under both
    (T = 0), whereas the signed statistic would count that as a difference; use "signed" to ask
    whether the changes go in different directions. T > 0: saliency tuning changed more.

    Null: within each item the labels sp / sr are exchangeable (both fine-tunings start from the
    same pt and see the same images), which flips the sign of ``d_i``; the items are independent
    sign flips. Two-sided ``p = (1 + #{|T*| ≥ |T|}) / (B + 1)`` over ``B = n_perm`` random sign
    vectors (``numpy.random.default_rng(seed)``); when ``2**n ≤ n_perm`` all sign vectors are
    enumerated instead and ``p = #{|T*| ≥ |T|} / 2**n`` (exact; the identity is included).
    Items with NaN in either delta are excluded and counted (``n_excluded``).

    Returns one row: ``statistic, n, n_excluded, mean_sp, mean_sr, observed, p_value, method,
    n_perm, seed, null_q95`` (``mean_sp``/``mean_sr``: mean |Δ| or mean Δ per the statistic;
    ``null_q95``: 95th percentile of |T*|).
    """
    if statistic not in ("abs", "signed"):
        raise ValueError(f"statistic must be 'abs' or 'signed', got {statistic!r}")
    if int(n_perm) < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    x, y = _align(delta_sp, delta_sr)
    ok = ~(np.isnan(x) | np.isnan(y))
    n_excluded = int((~ok).sum())
    if n_excluded:
        log.warning("paired permutation test: %d item(s) with NaN excluded", n_excluded)
    x, y = x[ok], y[ok]
    n = len(x)
    if n == 0:
        raise DataError("deltas", "no item with both Δsp and Δsr defined")
    if statistic == "abs":
        x, y = np.abs(x), np.abs(y)
    d = x - y
    obs = float(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).mean()))
    if n <= 30 and 2**n <= n_perm:
        method = "exact"
        codes = np.arange(2**n, dtype=np.int64)
        signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(n)) & 1)
        null = np.abs(signs @ d) / n
        p = float((null >= abs(obs) - tol).mean())
        used = 2**n
    else:
        method = "monte-carlo"
        rng = np.random.default_rng(seed)
        chunks, left, per = [], int(n_perm), max(1, 2_000_000 // n)
        while left > 0:
            m = min(left, per)
            signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
            chunks.append(np.abs(signs @ d) / n)
            left -= m
        null = np.concatenate(chunks)
        p = float((1 + (null >= abs(obs) - tol).sum()) / (len(null) + 1))
        used = int(n_perm)
    return pd.DataFrame(
        [
            {
                "statistic": "mean |Δsp| − |Δsr|" if statistic == "abs" else "mean Δsp − Δsr",
                "n": n,
                "n_excluded": n_excluded,
                "mean_sp": float(x.mean()),
                "mean_sr": float(y.mean()),
                "observed": obs,
                "p_value": p,
                "method": method,
                "n_perm": used,
                "seed": int(seed),
                "null_q95": float(np.quantile(null, 0.95)),
            }
        ]
    )


# --------------------------------------------------------------------------------------------
# Table 7


def task_statistics(
    stats_table: pd.DataFrame,
    sr_assoc: Any,
    sp_model: str,
    *,
    n_perm: int = 10000,
    statistic: str = "abs",
    **statistics_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 7 (He et al. §8): the category statistics of one trunk layer for pt (pretrained),
    sp (saliency-tuned) and sr (scene-tuned), and a paired sign-flip test per statistic.

    ``stats_table``: the statistics stage's long table
    (:func:`dissect.statistics.category_statistics` rows with a ``model`` column; may hold
    other models and layers). ``sr_assoc``: the scene trunk's association array of the compared
    layer (a DataArray with ``attrs["layer"]``, or a one-entry ``{layer: DataArray}``
    mapping); its statistics are computed here with
    ``statistics_kwargs`` (the same ``k, threshold, n_null, n_boot, seed, …`` as the table, so
    the three models are comparable). ``sp_model``: the model of ``stats_table`` used as sp (the
    readout with as many tuned stages as the scene model, e.g. ``"k1"``).

    For each statistic, ``Δsp = sp − pt`` and ``Δsr = sr − pt`` per category
    (:func:`paired_deltas`) go to :func:`paired_permutation_test` (``n_perm``, ``statistic``,
    seed = ``statistics_kwargs["seed"]``, default 0): ``T = mean_c |Δsp_c| − |Δsr_c|``, exact
    over all 2^12 sign vectors for 12 categories.

    Returns ``(table7, tests)``: the long table of the three models (``model`` = pt / sp / sr,
    then the :data:`dissect.statistics.STAT_COLUMNS`; pt and sp rows copied from the table), and
    one test row per statistic (``stat`` + the columns of :func:`paired_permutation_test`).
    A model without rows for the layer, or categories missing for a model, raise
    :class:`DataError`.
    """
    if isinstance(sr_assoc, Mapping):
        if len(sr_assoc) != 1:
            raise DataError("sr associations", f"expected one layer, got {list(sr_assoc)}")
        layer, da = next(iter(sr_assoc.items()))
        layer = str(layer)
    elif isinstance(sr_assoc, xr.DataArray):
        layer, da = str(sr_assoc.attrs.get("layer", "")), sr_assoc
        if not layer:
            raise DataError("sr associations", "the DataArray has no attrs['layer']")
    else:
        raise DataError("sr associations", f"expected a DataArray or a mapping, got "
                        f"{type(sr_assoc).__name__}")  # fmt: skip
    need = {"model", "layer", "category", "stat", "value"}
    if not need <= set(stats_table.columns):
        missing = sorted(need - set(stats_table.columns))
        raise DataError("statistics table", f"missing columns {missing}")
    cols = [c for c in STAT_COLUMNS if c in stats_table.columns]
    parts = []
    for model, name in (("pt", "pt"), (sp_model, "sp")):
        st = stats_table
        rows = st[(st["model"].astype(str) == model) & (st["layer"].astype(str) == layer)]
        if rows.empty:
            raise DataError("statistics table", f"no rows for model {model!r} at layer {layer!r}")
        parts.append(rows[cols].assign(model=name))
    sr = category_statistics({layer: da}, **statistics_kwargs)
    parts.append(sr[[c for c in cols if c in sr.columns]].assign(model="sr"))
    t7 = pd.concat(parts, ignore_index=True)
    t7 = t7[["model", *[c for c in t7.columns if c != "model"]]]
    seed = int(statistics_kwargs.get("seed", 0))
    tests = []
    for stat in pd.unique(t7["stat"]):
        deltas = paired_deltas(t7[t7["stat"] == stat], "category")
        t = paired_permutation_test(deltas["sp"], deltas["sr"], n_perm=n_perm, seed=seed,
                                    statistic=statistic)  # fmt: skip
        t.insert(0, "stat", stat)
        tests.append(t)
    return t7, pd.concat(tests, ignore_index=True)
