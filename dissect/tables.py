"""Tidy CSV tables and Markdown pivots of the long statistics table (DESIGN.md data model).

The long table of :func:`dissect.statistics.category_statistics` is the single source; the
pivots are views of it:

* :func:`pivot_layers` — Table 2 analogue: layers × categories.
* :func:`pivot_k` — Table 3 analogue: fine-tuned models (ordered by ``k``) × categories.
* :func:`pivot_models` — Table 7 analogue: categories × (statistic, model) for pt / sp / sr.

Cell format (documented, used by every pivot): ``value`` then a star when ``p_value < alpha``
(0.05), then the null mean in parentheses, e.g. ``2.41* (1.62)``: the top-10 mean is 2.41,
significantly above the label-permutation null whose mean is 1.62. Counts are written as
integers (``37* (5.2)``). With ``cells="excess"`` a cell is the excess over the null with its
bootstrap interval, ``0.79* [0.52, 1.10]`` (:func:`format_interval`). A cell is empty where the
statistic is undefined. Category columns follow :data:`dissect.categories.NAMES` display order,
only categories present. :func:`stats_caption` writes the line under a pivot that says what a
cell is, which null and which interval (method, level) — :func:`write_table` appends it to the
Markdown file.

Markdown is written by :func:`markdown_table` (pipe tables; ``tabulate`` is not a dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    df: pd.DataFrame, path_stem: str | Path, floatfmt: str = ".3f", *,
    caption: str | None = None, markdown: pd.DataFrame | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``df`` as ``<path_stem>.csv`` (full precision, no index unless it is meaningful)
    and ``<path_stem>.md`` (:func:`markdown_table` of ``markdown`` if given — e.g. a pivot of
    the tidy ``df`` — else of ``df``), followed by ``caption`` as a paragraph when given.
    Parent folders are created. Returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    keep_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    df.to_csv(csv, index=keep_index)
    text = markdown_table(df if markdown is None else markdown, floatfmt=floatfmt)
    if caption:
        text += "\n" + caption.strip() + "\n"
    md.write_text(text, encoding="utf-8")
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


def format_interval(
    value: float, low: float, high: float, p_value: float | None = None, *, count: bool = False,
    digits: int = 2, alpha: float = 0.05,
) -> str:  # fmt: skip
    """``"0.79* [0.52, 1.10]"``: an estimate (e.g. the excess over the null), a star when
    ``p_value < alpha``, and its interval in brackets (``[n/a]`` when the interval is undefined).
    Counts (``count=True``) with one decimal (an excess count is a difference of means). Empty
    for a NaN estimate."""
    if value is None or not np.isfinite(value):
        return ""
    d = 1 if count else digits
    text = f"{value:.{d}f}"
    if p_value is not None and np.isfinite(p_value) and p_value < alpha:
        text += "*"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return text + " [n/a]"
    return text + f" [{low:.{d}f}, {high:.{d}f}]"


NULL_TEXT = {
    "labels": "category labels permuted across regions",
    "images": "category labels permuted within each image",
}

CELLS: tuple[str, ...] = ("value", "excess")
"""What a pivot cell shows: ``value* (null mean)`` or ``excess* [interval]``."""


def topk_stat(stats_df: pd.DataFrame, source: str = "pivot") -> str:
    """The single top-k mean statistic (``f"top{k}_mean"``) of a long statistics table: the
    default of the pivots, so that they follow ``stats.top_k`` instead of assuming 10."""
    tops = sorted({str(s) for s in stats_df["stat"].unique()
                   if str(s).startswith("top") and str(s).endswith("_mean")})  # fmt: skip
    if len(tops) != 1:
        raise DataError(source, f"give `stat`: top-k statistics present are {tops}")
    return tops[0]


def _cells(df: pd.DataFrame, stat: str, cells: str, digits: int, alpha: float,
           show_null: bool, source: str) -> list[str]:  # fmt: skip
    count = stat.startswith("count")
    if cells == "value":
        return [
            format_cell(v, n, p, count=count, digits=digits, alpha=alpha, show_null=show_null)
            for v, n, p in zip(df["value"], df["null_mean"], df["p_value"], strict=True)
        ]
    need = {"excess", "excess_ci_low", "excess_ci_high"}
    if not need <= set(df.columns):
        raise DataError(source, f"table lacks columns {sorted(need - set(df.columns))}")
    return [
        format_interval(e, lo, hi, p, count=count, digits=digits, alpha=alpha)
        for e, lo, hi, p in zip(df["excess"], df["excess_ci_low"], df["excess_ci_high"],
                                df["p_value"], strict=True)  # fmt: skip
    ]


def _pivot(
    stats_df: pd.DataFrame, stat: str | None, row: str, digits: int, alpha: float,
    show_null: bool, cells: str = "value", order: list | None = None,
) -> pd.DataFrame:  # fmt: skip
    if cells not in CELLS:
        raise DataError("pivot", f"cells must be one of {CELLS}, got {cells!r}")
    if "stat" in stats_df and stat is None:
        stat = topk_stat(stats_df, f"pivot by {row!r}")
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
    text = _cells(df, stat, cells, digits, alpha, show_null, source)
    wide = df.assign(cell=text).pivot(index=row, columns="category", values="cell")
    rows = order if order is not None else list(pd.unique(df[row]))
    cols = [c for c in NAMES if c in set(df["category"])]
    wide = wide.reindex(index=rows, columns=cols).fillna("")
    wide.columns.name = None
    wide.index.name = row
    return wide


def pivot_layers(
    stats_df: pd.DataFrame, stat: str | None = None, *, cells: str = "value", digits: int = 2,
    alpha: float = 0.05, show_null: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Table 2 analogue: layers (in order of appearance) × categories, cells
    :func:`format_cell` (``"2.41* (1.62)"``) or, with ``cells="excess"``,
    :func:`format_interval` of the excess over the null. ``stat``: default the table's single
    ``top{k}_mean`` statistic (:func:`topk_stat`)."""
    return _pivot(stats_df, stat, "layer", digits, alpha, show_null, cells)


def pivot_k(
    stats_df: pd.DataFrame, stat: str | None = None, *, layer: str | None = None,
    cells: str = "value", digits: int = 2, alpha: float = 0.05, show_null: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Table 3 analogue: fine-tuned models × categories for one layer, rows in ascending ``k``.

    Rows are labelled by the ``model`` column when the table has one (the caller passes display
    names, e.g. ``"k0"`` … ``"k6"``, ``"all"`` — never the number of stages behind "all"),
    else by ``k``. ``layer`` is required when the table holds several layers. ``stat`` and
    ``cells`` as in :func:`pivot_layers`.
    """
    df = stats_df
    if "layer" in df:
        layers = list(pd.unique(df["layer"]))
        if layer is None and len(layers) > 1:
            raise DataError("pivot_k", f"the table holds layers {layers}; choose one with layer=")
        if layer is not None:
            if layer not in layers:
                raise DataError("pivot_k", f"layer {layer!r} not in the table (have {layers})")
            df = df.loc[df["layer"] == layer]
    if "k" not in df:
        raise DataError("pivot_k", "table lacks column 'k'")
    row = "model" if "model" in df else "k"
    order = list(pd.unique(df.sort_values("k", kind="stable")[row]))
    if row == "model" and df.groupby("model")["k"].nunique().gt(1).any():
        raise DataError("pivot_k", "a model label stands for several k")
    return _pivot(df, stat, row, digits, alpha, show_null, cells, order)


def pivot_models(
    stats_df: pd.DataFrame, stats: list[str] | None = None, *, models: list[str] | None = None,
    digits: int = 2, alpha: float = 0.05, show_null: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Table 7 analogue: categories (rows, :data:`NAMES` order) × one column per statistic and
    model, named ``"<stat> <model>"`` (e.g. ``"top10_mean pt"``), cells :func:`format_cell`.

    ``stats_df``: a long statistics table with a ``model`` column (one layer). ``stats``:
    default every statistic present, top-k mean first; ``models``: default in order of
    appearance (pt, sp, sr).
    """
    source = "pivot_models"
    if "model" not in stats_df:
        raise DataError(source, "table lacks column 'model'")
    if stats is None:
        present = [str(s) for s in pd.unique(stats_df["stat"])]
        stats = sorted(present, key=lambda s: (not s.startswith("top"), present.index(s)))
    if models is None:
        models = [str(m) for m in pd.unique(stats_df["model"])]
    blocks = []
    for stat in stats:
        wide = _pivot(stats_df, stat, "model", digits, alpha, show_null, "value", models)
        wide = wide.T.reindex(columns=models)
        wide.columns = [f"{stat} {m}" for m in models]
        blocks.append(wide)
    out = pd.concat(blocks, axis=1).fillna("")
    out.index.name = "category"
    return out


def stats_caption(
    stats_df: pd.DataFrame, stat: str, *, cells: str = "value", n_null: int | None = None,
    n_boot: int | None = None, alpha: float = 0.05, tidy: str | None = None,
) -> str:  # fmt: skip
    """The line under a pivot: what a cell shows, the permutation null, and — for the excess
    cells — the interval's method and level, read from the table's ``null``, ``ci_method``,
    and ``ci_level`` columns (where present), with the number of cells
    whose interval fell back to another method (see
    :func:`dissect.statistics.bootstrap_interval`). ``tidy``: the file holding every column."""
    df = stats_df.loc[stats_df["stat"] == stat] if "stat" in stats_df else stats_df
    what = (
        f"number of units with NSS > T ({stat})" if stat.startswith("count")
        else f"{stat.replace('_mean', '').replace('top', 'top-')} mean NSS ({stat})"
    )  # fmt: skip
    null = _single(df, "null")
    null_text = NULL_TEXT.get(null, null)
    perm = f"{n_null} permutations" if n_null else "permutations"
    null_part = f"{perm}{f', {null_text}' if null_text else ''}"
    if cells == "value":
        text = (f"Cells: {what}, `*` = permutation p < {alpha:g} ({null_part}), null mean in "
                "parentheses.")  # fmt: skip
    else:
        method = _single(df, "ci_method") or "bootstrap"
        level = _single(df, "ci_level")
        level_text = f"{100 * float(level):g}%" if level not in (None, "") else ""
        boots = f"{n_boot} " if n_boot else ""
        text = (f"Cells: excess of the {what} over the permutation null mean (value − null "
                f"mean), `*` = permutation p < {alpha:g} ({null_part}); in brackets its "
                f"{level_text} {method} interval from {boots}image-bootstrap resamples, the "
                "null recomputed on every resample.").replace("  ", " ")  # fmt: skip
        if "excess_ci_used" in df:
            used = df["excess_ci_used"].astype(str)
            other = used[(used != method) & (used != "none")].value_counts()
            if len(other):
                text += " Fallbacks: " + ", ".join(f"{n} cell(s) {m}" for m, n in other.items())
                text += "."
    if tidy:
        text += f" Every column (intervals, counts): `{tidy}`."
    return text


def _single(df: pd.DataFrame, col: str) -> Any:
    if col not in df:
        return None
    vals = pd.unique(df[col].dropna())
    return vals[0] if len(vals) == 1 else None


def format_seed_cell(mean: float, sd: float, lo: float, hi: float, n_sig: int, n: int,
                     digits: int = 2, signed: bool = False) -> str:
    """``"1.13 ± 0.05 [1.08, 1.19] 3/3"``: mean over seeds ± sd, [min, max] over seeds, and
    in how many of the seeds the permutation test was significant (or whatever count the
    caller gives). One seed: ``"1.13 1/1"``. ``signed``: mean, min and max with their sign
    (``"+12 ± 5 [+6, +17] 3/3"``)."""
    if not np.isfinite(mean):
        return ""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if n < 2:
        return f"{f.format(mean)} {n_sig}/{n}"
    return (f"{f.format(mean)} ± {sd:.{digits}f} [{f.format(lo)}, {f.format(hi)}] "
            f"{n_sig}/{n}")


def _models_by_category(df: pd.DataFrame, text: list[str],
                        order: list[str] | None) -> pd.DataFrame:
    """Models (rows: ``order``, else order of appearance; absent ones left out) × categories
    (:data:`NAMES` order, others after) of the cell texts ``text`` (one per row of ``df``)."""
    wide = df.assign(cell=text).pivot(index="model", columns="category", values="cell")
    rows = order or [str(m) for m in pd.unique(df["model"])]
    cats = [c for c in NAMES if c in wide.columns] + [c for c in wide.columns if c not in NAMES]
    return wide.reindex(index=[r for r in rows if r in wide.index], columns=cats).fillna("")


def columns_first(df: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    """``df`` with the columns ``first`` (in that order) before all others (e.g. ``seed``)."""
    return df[[*first, *[c for c in df.columns if c not in first]]]


def pivot_seeds(
    summary: pd.DataFrame, stat: str, *, cells: str = "value", digits: int = 2,
    order: list[str] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Table 3 over training seeds: models (rows, ``order`` or order of appearance) ×
    categories (:data:`NAMES` order), cells :func:`format_seed_cell` of ``value`` or (with
    ``cells="excess"``) of the excess over the null, from a
    :func:`dissect.seeds.seed_summary` table of one layer."""
    if cells not in ("value", "excess"):
        raise DataError("pivot_seeds", f"cells must be 'value' or 'excess', not {cells!r}")
    need = {"model", "category", "stat", f"{cells}_mean", "n_significant", "n_seeds"}
    if not need <= set(summary.columns):
        raise DataError("pivot_seeds", f"table lacks columns {sorted(need - set(summary))}")
    df = summary.loc[summary["stat"] == stat]
    if df.empty:
        raise DataError("pivot_seeds", f"no rows with stat {stat!r}")
    if df.duplicated(["model", "category"]).any():
        raise DataError("pivot_seeds", "several rows per (model, category): choose one layer")
    d = 1 if stat.startswith("count") else digits
    text = [format_seed_cell(r[f"{cells}_mean"], r[f"{cells}_sd"], r[f"{cells}_min"],
                             r[f"{cells}_max"], int(r["n_significant"]), int(r["n_seeds"]), d)
            for _, r in df.iterrows()]
    return _models_by_category(df, text, order)


def pivot_improvement_seeds(summary: pd.DataFrame, *, order: list[str] | None = None,
                            column: str = "improvement_pct") -> pd.DataFrame:
    """Fig. 4 over seeds: models (rows) × categories, cells ``"+12 ± 5 [6, 17] 3/3"``: the %
    improvement's mean ± sd [min, max] over seeds and in how many seeds it is positive, from
    :func:`dissect.seeds.improvement_summary`."""
    need = {"model", "category", "n_seeds", f"{column}_mean", "n_improved"}
    if not need <= set(summary.columns):
        raise DataError("pivot_improvement_seeds",
                        f"table lacks columns {sorted(need - set(summary.columns))}")
    count = "n_improved" if column == "improvement_pct" else "n_excess_improved"
    text = [format_seed_cell(r[f"{column}_mean"], r[f"{column}_sd"], r[f"{column}_min"],
                             r[f"{column}_max"], int(r[count]), int(r["n_seeds"]), 0,
                             signed=True)
            for _, r in summary.iterrows()]
    return _models_by_category(summary, text, order)

