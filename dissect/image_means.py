"""Dataset means of per-image scores with image-bootstrap intervals, and paired differences.

The tables of the implicit-saliency analyses (Sun et al. 2020's Tables 1–2 and Fig. 4 on OSIE)
compare map methods scored on the same images: each cell is the mean over images of a per-image
score (NSS, CC), and each comparison the mean over images of a per-image *difference* (S_C − S_F
at a layer; blurred − clean for a model), so that the interval is the paired one. Intervals are
:func:`scipy.stats.bootstrap` over images (``method`` ``basic`` / ``BCa`` / ``percentile``, the
``stats.ci_method`` parameter), seeded, the same resamples for every cell of a table with the
same images. Images whose score is undefined (NaN: a constant map) are left out of that cell and
counted (``n_images`` is what the cell used; ``n_undefined`` what it left out) — never averaged
as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from dissect.errors import DataError

__all__ = ["mean_ci", "means_table", "paired_differences"]


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
            level: float = 0.95, method: str = "basic") -> dict[str, float | int]:
    """Mean of the finite ``values`` and its bootstrap interval: ``value, ci_low, ci_high,
    n_images, n_undefined``. Fewer than two finite values → NaN interval (one value) or NaN
    everything (none)."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    out: dict[str, float | int] = {"value": float(ok.mean()) if ok.size else float("nan"),
                                   "ci_low": float("nan"), "ci_high": float("nan"),
                                   "n_images": int(ok.size), "n_undefined": int(v.size - ok.size)}
    if ok.size >= 2 and np.ptp(ok) > 0:
        res = bootstrap((ok,), np.mean, n_resamples=int(n_boot), confidence_level=float(level),
                        method=_method(method), random_state=np.random.default_rng(seed),
                        vectorized=True)
        out["ci_low"], out["ci_high"] = (float(res.confidence_interval.low),
                                         float(res.confidence_interval.high))
    elif ok.size >= 2:  # every image scored the same: the interval is that value
        out["ci_low"] = out["ci_high"] = float(ok[0])
    return out


def _method(method: str) -> str:
    m = {"basic": "basic", "bca": "BCa", "percentile": "percentile"}.get(str(method).lower())
    if m is None:
        raise DataError("ci_method", f"unknown {method!r}; choose basic, BCa or percentile")
    return m


def means_table(records: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], *,
                n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                method: str = "basic") -> pd.DataFrame:
    """Tidy table ``*by, metric, value, ci_low, ci_high, n_images, n_undefined``: per group of
    ``by`` and metric, :func:`mean_ci` over the group's images (each image at most once)."""
    _check(records, [*by, "image", *metrics])
    rows = []
    for key, part in records.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if part["image"].duplicated().any():
            raise DataError(str(dict(zip(by, key, strict=True))), "an image is scored twice")
        for m in metrics:
            rows.append({**dict(zip(by, key, strict=True)), "metric": m,
                         **mean_ci(part[m].to_numpy(np.float64), n_boot=n_boot, seed=seed,
                                   level=level, method=method)})
    return pd.DataFrame(rows)


def paired_differences(records: pd.DataFrame, by: Sequence[str], column: str, a: str, b: str,
                       metrics: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95, method: str = "basic") -> pd.DataFrame:
    """Per group of ``by`` and metric, the mean over images of ``score(column = a) −
    score(column = b)`` on the same image, with its (paired) bootstrap interval: tidy
    ``*by, metric, value, ci_low, ci_high, n_images, n_undefined``. Every image of ``b`` must
    have ``a`` and vice versa (``DataError`` naming the group otherwise)."""
    _check(records, [*by, column, "image", *metrics])
    rows = []
    for key, part in records.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        where = str(dict(zip(by, key, strict=True)))
        left = part[part[column] == a].set_index("image")
        right = part[part[column] == b].set_index("image")
        if left.index.duplicated().any() or right.index.duplicated().any():
            raise DataError(where, "an image is scored twice")
        if set(left.index) != set(right.index) or left.empty:
            raise DataError(where, f"{a} and {b} must be scored on the same images "
                                   f"({len(left)} vs {len(right)})")
        right = right.reindex(left.index)
        for m in metrics:
            d = left[m].to_numpy(np.float64) - right[m].to_numpy(np.float64)
            rows.append({**dict(zip(by, key, strict=True)), "metric": m,
                         **mean_ci(d, n_boot=n_boot, seed=seed, level=level, method=method)})
    return pd.DataFrame(rows)


def _check(records: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in records.columns]
    if missing:
        raise DataError("records", f"missing column(s) {missing}")
