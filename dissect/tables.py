"""Tidy CSV tables and Markdown pivots of the long statistics table (DESIGN.md data model).

The long table of :func:`dissect.statistics.category_statistics` is the single source; the
pivots are views of it:

* :func:`pivot_layers` — Table 2 analogue: layers × categories.
* :func:`pivot_k` — Table 3 analogue: fine-tuning ``k`` × categories.

Cell format (documented, used by both pivots): ``value`` then a star when ``p_value < alpha``
(0.05), then the null mean in parentheses, e.g. ``2.41* (1.62)``: the top-10 mean is 2.41,
significantly above the label-permutation null whose mean is 1.62. Counts are written as
integers (``37* (5.2)``). A cell is empty where the statistic is undefined. Category columns
follow :data:`dissect.categories.NAMES` display order, only categories present.

Markdown is written by :func:`markdown_table` (pipe tables; ``tabulate`` is not a dependency).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dissect.categories import NAMES
from dissect.errors import DataError


def _fmt(x: Any, floatfmt: str) -> str:
    if x is None:
        return ""
    if isinstance(x, (float, np.floating)):
        return "" if math.isnan(x) else format(float(x), floatfmt)
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if np.ndim(x) == 0 and pd.isna(x):
        return ""
    return str(x)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f", index: bool | None = None) -> str:
    """A GitHub pipe table of ``df``. Floats use ``floatfmt``, NaN is an empty cell, ``|`` is
    escaped. The index becomes the first column when it is named or not a plain RangeIndex
    (``index`` forces either way). Numeric columns are right-aligned."""
    if index is None:
        index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    if index:
        df = df.reset_index()
    header = [str(c) for c in df.columns]
    body = [[_fmt(v, floatfmt).replace("|", r"\|") for v in row] for row in df.itertuples(False)]
    header = [h.replace("|", r"\|") for h in header]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    widths = [max([len(h), 3, *(len(r[j]) for r in body)]) for j, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in body)]) + "\n"


def write_table(
    df: pd.DataFrame, path_stem: str | Path, floatfmt: str = ".3f"
) -> tuple[Path, Path]:
    """Write ``df`` as ``<path_stem>.csv`` (full precision, no index unless it is meaningful)
    and ``<path_stem>.md`` (:func:`markdown_table`). Parent folders are created. Returns both
    paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    keep_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    df.to_csv(csv, index=keep_index)
    md.write_text(markdown_table(df, floatfmt=floatfmt), encoding="utf-8")
    return csv, md


def format_cell(
    value: float, null_mean: float, p_value: float, *, count: bool, digits: int = 2,
    alpha: float = 0.05, show_null: bool = True,
) -> str:  # fmt: skip
    """``"2.41* (1.62)"``: value, a star when ``p_value < alpha``, the null mean in
    parentheses. Counts (``count=True``) as integers with a one-decimal null mean. Empty for
    NaN values."""
    if value is None or not np.isfinite(value):
        return ""
    text = f"{int(round(value))}" if count else f"{value:.{digits}f}"
    if p_value is not None and np.isfinite(p_value) and p_value < alpha:
        text += "*"
    if show_null and null_mean is not None and np.isfinite(null_mean):
        text += f" ({null_mean:.1f})" if count else f" ({null_mean:.{digits}f})"
    return text


def _pivot(
    stats_df: pd.DataFrame, stat: str, row: str, digits: int, alpha: float, show_null: bool
) -> pd.DataFrame:
    source = f"pivot of {stat!r} by {row!r}"
    need = {row, "category", "stat", "value", "null_mean", "p_value"}
    if not need <= set(stats_df.columns):
        raise DataError(source, f"table lacks columns {sorted(need - set(stats_df.columns))}")
    df = stats_df.loc[stats_df["stat"] == stat]
    if df.empty:
        raise DataError(
            source, f"no rows with stat {stat!r} (have {sorted(stats_df['stat'].unique())})"
        )
    unknown = sorted(set(df["category"]) - set(NAMES))
    if unknown:
        raise DataError(source, f"unknown categories {unknown}")
    if df.duplicated([row, "category"]).any():
        raise DataError(source, f"several rows per ({row}, category); filter the table first")
    count = stat.startswith("count")
    cells = [
        format_cell(v, n, p, count=count, digits=digits, alpha=alpha, show_null=show_null)
        for v, n, p in zip(df["value"], df["null_mean"], df["p_value"], strict=True)
    ]
    wide = df.assign(cell=cells).pivot(index=row, columns="category", values="cell")
    rows = list(pd.unique(df[row]))
    if row == "k":
        rows = sorted(rows)
    cols = [c for c in NAMES if c in set(df["category"])]
    wide = wide.reindex(index=rows, columns=cols).fillna("")
    wide.columns.name = None
    wide.index.name = row
    return wide


def pivot_layers(
    stats_df: pd.DataFrame, stat: str = "top10_mean", *, digits: int = 2, alpha: float = 0.05,
    show_null: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Table 2 analogue: layers (in order of appearance) × categories, cells
    :func:`format_cell` (``"2.41* (1.62)"``)."""
    return _pivot(stats_df, stat, "layer", digits, alpha, show_null)


def pivot_k(
    stats_df: pd.DataFrame, stat: str = "top10_mean", *, layer: str | None = None,
    digits: int = 2, alpha: float = 0.05, show_null: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Table 3 analogue: fine-tuning ``k`` (ascending) × categories for one layer. ``layer`` is
    required when the table holds several layers."""
    df = stats_df
    if "layer" in df:
        layers = list(pd.unique(df["layer"]))
        if layer is None and len(layers) > 1:
            raise DataError("pivot_k", f"the table holds layers {layers}; choose one with layer=")
        if layer is not None:
            if layer not in layers:
                raise DataError("pivot_k", f"layer {layer!r} not in the table (have {layers})")
            df = df.loc[df["layer"] == layer]
    return _pivot(df, stat, "k", digits, alpha, show_null)
