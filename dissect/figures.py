"""Paper-style figures of the unit dissection, pop-out and task comparisons (He et al., 2019).

Every function takes the tidy tables / arrays produced upstream and returns a
:class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a PNG at print resolution.

Figures are built on :class:`~matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``: no display is needed, no global figure registry grows, and the importing program's
matplotlib backend is left alone. Styling (fonts, spines) is applied per call with an
``rc_context``, so it does not leak into the caller either.

=================================  ==========================================================
function                           study analogue
=================================  ==========================================================
:func:`heatmap_layers`             Table 2: layers × categories (top-k mean / count > T)
:func:`heatmap_k`                  Table 3: fine-tuning depth k × categories
:func:`improvement_bars`           Fig. 4: % improvement of the top-k mean over pretrained
:func:`inner_vs_output`            §6: inner top-k mean vs output saliency (Spearman r_s)
:func:`unit_overlays`              Figs. 3/5/6: best-responding units of one region
:func:`unit_overlay_grid`          Figs. 3/5/6, several regions (one row each)
:func:`popout_examples`            Fig. 8: pop-out arrays and the models' saliency maps
:func:`popout_best_units`          Fig. 9: best inner unit per layer on a pop-out array
:func:`popout_bars`                Table 4 as a figure: mean NMM per model (95 % CI)
:func:`confusion`                  scene-recognition confusion matrix
:func:`training_curves`            training loss (−NSS) / validation NSS per epoch
:func:`task_maps`                  Fig. 11: one unit's map in the pt / sr / sp trunks
=================================  ==========================================================

Conventions (``shared/DESIGN.md``): categories are drawn in :data:`dissect.categories.NAMES`
order (only those present); every other ordering (layers, k, models) is the order of first
appearance in the input. Maps of any resolution are upsampled to the image size with bilinear
interpolation, ``align_corners=False`` (the same arithmetic as
``torch.nn.functional.interpolate``), so the displayed map is the one the NSS is computed on.
NaN is drawn as missing (hatched / "n/a"), never as 0. Bad input raises
:class:`~dissect.errors.DataError` naming the table or item and the problem.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from dissect.categories import BY_NAME, NAMES
from dissect.errors import DataError
from dissect.metrics import point_pixels, region_nss, upsample_matrix

__all__ = [
    "STAT_LABELS",
    "stat_label",
    "save_figure",
    "heatmap_layers",
    "heatmap_k",
    "improvement_bars",
    "inner_vs_output",
    "unit_overlays",
    "unit_overlay_grid",
    "popout_examples",
    "popout_best_units",
    "popout_bars",
    "confusion",
    "training_curves",
    "task_maps",
    "upsample",
]

DEFAULT_DPI = 200

STAT_LABELS: dict[str, str] = {
    "count_above_T": "number of units with m > T",
}
"""Colour-bar labels of the statistics of :mod:`dissect.statistics` (``top<k>_mean`` is named
by :func:`stat_label` for any k)."""

_TOPK = re.compile(r"top(\d+)_mean")


def stat_label(stat: str) -> str:
    """Display name of a statistic: ``"top5_mean"`` → ``"top-5 mean NSS"``; the others from
    :data:`STAT_LABELS`, else the name itself."""
    m = _TOPK.fullmatch(str(stat))
    return f"top-{m.group(1)} mean NSS" if m else STAT_LABELS.get(stat, stat)

TASK_TITLES: dict[str, str] = {
    "pt": "pt: ImageNet-pretrained",
    "sr": "sr: scene recognition",
    "sp": "sp: saliency prediction",
}

_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "bilinear",
    "savefig.dpi": DEFAULT_DPI,
}

_MISSING_HATCH = "////"
_OUTLINE = "#00ff66"
_FIX_COLOR = "#ff2020"

F = TypeVar("F", bound=Callable[..., Figure])


def _styled(func: F) -> F:
    """Run a figure builder under the module's seaborn/matplotlib style, restored afterwards."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("ticks"), matplotlib.rc_context(_RC):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _note(fig: Figure, text: str) -> None:
    """A small caption under the figure (kept inside the constrained layout)."""
    fig.supxlabel(text, fontsize=7, color="0.3")


# --------------------------------------------------------------------------------------------
# saving


def save_figure(fig: Figure, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` (tight bounding box) and close it; returns the path.

    The parent folder is created. ``dpi`` must be 200–600 (print resolution).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(path, "figures are written as PNG; the path must end with .png")
    if not 200 <= dpi <= 600:
        raise DataError(path, f"dpi {dpi} is not a print resolution (200–600)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(_RC):
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05, format="png")
    if getattr(fig.canvas, "manager", None) is not None:  # made through pyplot: unregister it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# input checks


def _require_columns(df: Any, columns: Sequence[str], source: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise DataError(source, f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(source, f"missing columns {missing}; columns present: {list(df.columns)}")
    return df


def _canonical_category(name: Any) -> str | None:
    key = str(name).strip().lower().replace("_", " ")
    return key if key in BY_NAME else None


def _normalise_categories(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Canonical category names and the display order of those present (``NAMES`` order)."""
    canon = pd.Series(
        [_canonical_category(c) for c in df["category"]], index=df.index, dtype=object
    )
    unknown = sorted({str(c) for c, k in zip(df["category"], canon, strict=True) if k is None})
    if unknown:
        raise DataError(source, f"unknown categories {unknown}; expected names from {NAMES}")
    df = df.assign(category=canon)
    present = set(canon)
    return df, [n for n in NAMES if n in present]


def _first_seen(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _check_duplicates(df: pd.DataFrame, keys: Sequence[str], source: str) -> None:
    dup = df.duplicated(list(keys), keep=False)
    if dup.any():
        example = df.loc[dup, list(keys)].head(3).to_dict("records")
        raise DataError(
            source,
            f"{int(dup.sum())} rows share the same {list(keys)} (e.g. {example}); one value per "
            "cell is expected; select one model/layer/k first",
        )


def _check_image(image: Any, source: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(
            source, f"image must be uint8 (H, W, 3); got {img.dtype} {tuple(img.shape)}"
        )
    return img


def _check_mask(mask: Any, shape: tuple[int, int], source: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise DataError(source, f"mask shape {m.shape} differs from the image's {shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise DataError(source, f"mask must be boolean; got {m.dtype} with values not in 0/1")
        m = m.astype(bool)
    if not m.any():
        raise DataError(source, "mask is empty (no pixel inside the region/target)")
    return m


def _check_map(amap: Any, source: str) -> np.ndarray:
    a = np.asarray(amap, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise DataError(source, f"map must be a non-empty 2-D array (h, w); got {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(source, f"map has {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def _check_points(points: Any, shape: tuple[int, int], source: str) -> np.ndarray:
    """``(N, 2)`` (x, y) fixations as float64, validated by :func:`dissect.metrics.point_pixels`
    (finite, pixel ``(rint(y), rint(x))`` inside the image)."""
    point_pixels(points, shape, source)
    return np.asarray(points, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# maps


def upsample(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size = (H, W)``: ``up = Uy · A · Uxᵀ`` with the
    interpolation matrices of :func:`dissect.metrics.upsample_matrix` (the arithmetic of
    ``interpolate(mode="bilinear", align_corners=False)``, as in the NSS computations)."""
    a = _check_map(amap, "map")
    h, w = size
    if a.shape == (h, w):
        return a
    return upsample_matrix(h, a.shape[0]) @ a @ upsample_matrix(w, a.shape[1]).T


def _panel_nss(
    amap: np.ndarray, size: tuple[int, int], inside: np.ndarray, points: np.ndarray
) -> float:
    """Eq. 1 of He et al. (2019) for one unit map and one region: NSS of the map, bilinearly
    upsampled to ``size``, at the fixations ``points[inside]`` (:func:`dissect.metrics.region_nss`,
    exact; mean and population std over the whole upsampled map). NaN for a constant map or when
    no fixation falls in the region."""
    region_ids = inside.astype(np.int64)  # 1: in the region, 0: elsewhere (unused)
    return float(region_nss(amap[None], size, points, region_ids, regions=[1])[0, 0])


def _unit_range(a: np.ndarray) -> np.ndarray:
    """Min–max normalisation for display; a constant map shows as 0."""
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def _bare(ax: Axes) -> None:
    """No ticks or frame, but keep the y label usable as a row label."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _outline(ax: Axes, mask: np.ndarray, color: str = _OUTLINE, lw: float = 1.2) -> None:
    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw)


def _missing_panel(ax: Axes, text: str = "n/a") -> None:
    _bare(ax)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _fmt_num(v: float, digits: int = 2) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# --------------------------------------------------------------------------------------------
# Tables 2 and 3: statistic heatmaps


def _stat_heatmap(
    stats: pd.DataFrame,
    *,
    row_col: str,
    stack_cols: Sequence[str],
    row_label: str,
    stat: str,
    excess: bool,
    alpha: float,
    title: str | None,
    source: str,
) -> Figure:
    need = [row_col, "category", "stat", "value"] + (["null_mean", "p_value"] if excess else [])
    df = _require_columns(stats, need, source)
    df = df[df["stat"] == stat]
    if df.empty:
        raise DataError(
            source, f"no rows with stat == {stat!r}; stats present: {sorted(set(stats['stat']))}"
        )
    df, cats = _normalise_categories(df, source)
    # stacked models / k / layers become part of the row label rather than being mixed
    keys = [c for c in stack_cols if c in df.columns and df[c].nunique(dropna=False) > 1]
    single = [f"{c} {df[c].iloc[0]}" for c in stack_cols if c in df.columns and c not in keys]
    keys.append(row_col)
    _check_duplicates(df, [*keys, "category"], source)
    row_keys = _first_seen(zip(*(df[k] for k in keys), strict=True))
    labels = [" · ".join(str(v) for v in key) for key in row_keys]

    values = df["value"].astype(float)
    if excess:
        values = values - df["null_mean"].astype(float)
    cell = dict(zip(zip(*(df[k] for k in keys), df["category"], strict=True), values, strict=True))
    grid = np.array([[cell.get((*key, c), np.nan) for c in cats] for key in row_keys])
    signif = np.zeros(grid.shape, dtype=bool)
    if excess:
        pmap = dict(
            zip(
                zip(*(df[k] for k in keys), df["category"], strict=True), df["p_value"], strict=True
            )
        )
        signif = np.array(
            [[float(pmap.get((*key, c), np.nan)) < alpha for c in cats] for key in row_keys]
        )

    finite = grid[np.isfinite(grid)]
    integer = (not excess) and finite.size > 0 and np.all(finite == np.round(finite))
    fmt = "{:+.2f}" if excess else ("{:.0f}" if integer else "{:.2f}")
    annot = np.array(
        [
            [
                "" if not np.isfinite(v) else fmt.format(v) + ("*" if s else "")
                for v, s in zip(row, srow, strict=True)
            ]
            for row, srow in zip(grid, signif, strict=True)
        ],
        dtype=object,
    )

    nrows, ncols = grid.shape
    max_label = max(len(s) for s in labels)
    fig = _new_figure(1.6 + 0.06 * max_label + 0.62 * ncols, 1.5 + 0.3 * nrows)
    ax = fig.add_subplot()
    ax.patch.set_facecolor("0.93")
    ax.patch.set_hatch(_MISSING_HATCH)
    ax.patch.set_edgecolor("0.7")
    base = stat_label(stat)
    if excess:
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        cmap, vmin, vmax, center = "vlag", -lim, lim, 0.0
        cbar_label = f"{base} − null mean"
    else:
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
        vmax = vmax if vmax > vmin else vmin + 1.0
        cmap, center, cbar_label = "YlOrRd", None, base
    with warnings.catch_warnings():  # seaborn 0.13's own use of Colormap.set_bad
        warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
        sns.heatmap(
            pd.DataFrame(grid, index=labels, columns=cats),
            ax=ax,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            center=center,
            annot=annot,
            fmt="",
            annot_kws={"fontsize": 7},
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"label": cbar_label, "shrink": 0.9},
        )
    for text in ax.texts:
        if text.get_text().endswith("*"):
            text.set_fontweight("bold")
    ax.set_xlabel("region category")
    ax.set_ylabel(row_label)
    ax.set_xticklabels(cats, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(labels, rotation=0)
    ax.tick_params(length=0)
    if title is None:
        title = base + (" (excess over null)" if excess else "")
        title += "".join(f", {t}" for t in single)
    ax.set_title(title)
    notes = []
    if excess:
        notes.append(f"* bold: p < {alpha:g} (category-label permutation null)")
    if np.isnan(grid).any():
        notes.append("hatched: undefined (NaN)")
    if notes:
        _note(fig, ";  ".join(notes))
    return fig


@_styled
def heatmap_layers(
    stats: pd.DataFrame,
    stat: str = "top10_mean",
    excess: bool = False,
    *,
    alpha: float = 0.05,
    title: str | None = None,
) -> Figure:
    """Table 2 as a heatmap: layers (rows, given order) × categories (``NAMES`` order).

    ``stats`` is the long table of :func:`dissect.statistics.category_statistics`. Cells are
    annotated with the statistic; with ``excess=True`` they show ``value − null_mean`` (the
    excess over the permutation null, §4.3) on a diverging scale centred at 0, and cells with
    ``p_value < alpha`` get a bold star. NaN cells stay empty (hatched), never 0. When the table
    stacks several models or k (a ``model``/``k`` column with more than one value), each row is
    labelled "model · layer".
    """
    return _stat_heatmap(
        stats,
        row_col="layer",
        stack_cols=("model", "k"),
        row_label="layer",
        stat=stat,
        excess=excess,
        alpha=alpha,
        title=title,
        source="category statistics (heatmap_layers)",
    )


@_styled
def heatmap_k(
    stats_k: pd.DataFrame,
    stat: str = "top10_mean",
    excess: bool = False,
    *,
    alpha: float = 0.05,
    title: str | None = None,
) -> Figure:
    """Table 3 as a heatmap: fine-tuning depth k (rows, given order) × categories.

    Same conventions as :func:`heatmap_layers`; ``stats_k`` needs a ``k`` column (``0`` = frozen
    trunk, ``"all"`` = everything fine-tuned). A ``model`` or ``layer`` column with several
    values becomes part of the row label.
    """
    return _stat_heatmap(
        stats_k,
        row_col="k",
        stack_cols=("model", "layer"),
        row_label="k (top stages fine-tuned)",
        stat=stat,
        excess=excess,
        alpha=alpha,
        title=title,
        source="category statistics (heatmap_k)",
    )


# --------------------------------------------------------------------------------------------
# Fig. 4: improvement bars


@_styled
def improvement_bars(
    improvement: pd.DataFrame,
    value: str = "improvement_pct",
    *,
    top_k: int = 10,
    ylabel: str | None = None,
    title: str | None = None,
    low: str | None = None,
    high: str | None = None,
) -> Figure:
    """Fig. 4: per category, one bar per k (ordered palette, given k order), a zero line.

    ``improvement`` has columns ``k, category, improvement_pct`` (or the column named by
    ``value``, e.g. ``excess_improvement_pct``) of the top-``top_k`` mean (the default y label
    names it). A NaN value is marked "n/a" at the bar's place. ``low`` / ``high``: columns of a
    range drawn as a whisker on each bar (e.g. the min and max over training seeds when the
    bar is their mean).
    """
    source = "improvement table (improvement_bars)"
    if (low is None) != (high is None):
        raise DataError(source, "give both low and high, or neither")
    extra = [low, high] if low is not None else []
    df = _require_columns(improvement, ["k", "category", value, *extra], source)
    df, cats = _normalise_categories(df, source)
    _check_duplicates(df, ["k", "category"], source)
    ks = _first_seen(df["k"])
    vals = dict(
        zip(zip(df["k"], df["category"], strict=True), df[value].astype(float), strict=True)
    )
    keys = list(zip(df["k"], df["category"], strict=True))
    lows = dict(zip(keys, df[low].astype(float), strict=True)) if low else {}
    highs = dict(zip(keys, df[high].astype(float), strict=True)) if high else {}
    palette = sns.color_palette("crest", len(ks))

    fig = _new_figure(max(5.0, 0.2 + 0.55 * len(cats) * max(1.0, len(ks) / 5)), 3.6)
    ax = fig.add_subplot()
    width = 0.84 / len(ks)
    x = np.arange(len(cats))
    for j, k in enumerate(ks):
        pos = x - 0.42 + width * (j + 0.5)
        heights = np.array([vals.get((k, c), np.nan) for c in cats])
        ok = np.isfinite(heights)
        ax.bar(pos[ok], heights[ok], width=width, color=palette[j], label=str(k), linewidth=0)
        if low:
            lo = np.array([lows.get((k, c), np.nan) for c in cats])
            hi = np.array([highs.get((k, c), np.nan) for c in cats])
            w = ok & np.isfinite(lo) & np.isfinite(hi)
            ax.errorbar(pos[w], heights[w], yerr=[heights[w] - lo[w], hi[w] - heights[w]],
                        fmt="none", ecolor="0.25", elinewidth=0.7, capsize=1.2)
        for p in pos[~ok]:
            ax.text(p, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="0.4")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, cats, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(cats) - 0.4)
    default = f"% improvement of top-{int(top_k)} mean over pretrained" + (
        "" if value == "improvement_pct" else f" ({value})"
    )
    ax.set_ylabel(ylabel if ylabel is not None else default)
    ax.set_xlabel("region category")
    ax.legend(
        title="k (top stages fine-tuned)",
        ncols=min(len(ks), 7),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# §6: inner representation vs output


def _place_labels(ax: Axes, xs: np.ndarray, ys: np.ndarray, labels: Sequence[str]) -> None:
    """Label points, choosing per label the offset that overlaps least with the others."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout so display coordinates are final enough
    renderer = fig.canvas.get_renderer()
    candidates = [
        ((5, 3), "left", "bottom"),
        ((5, -3), "left", "top"),
        ((-5, 3), "right", "bottom"),
        ((-5, -3), "right", "top"),
        ((0, 7), "center", "bottom"),
        ((0, -7), "center", "top"),
        ((9, 0), "left", "center"),
        ((-9, 0), "right", "center"),
    ]
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    r = 4.0 * fig.dpi / 72.0
    obstacles = [np.array([px - r, py - r, px + r, py + r]) for px, py in pts]
    placed: list[np.ndarray] = []

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return max(w, 0.0) * max(h, 0.0)

    axbox = ax.get_window_extent(renderer)
    for x, y, label in zip(xs, ys, labels, strict=True):
        best, best_cost = None, math.inf
        for offset, ha, va in candidates:
            t = ax.annotate(
                label, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va, fontsize=7
            )
            bb = t.get_window_extent(renderer)
            box = np.array([bb.x0, bb.y0, bb.x1, bb.y1])
            cost = sum(overlap(box, o) for o in placed) + sum(overlap(box, o) for o in obstacles)
            out = (max(axbox.x0 - bb.x0, 0) + max(bb.x1 - axbox.x1, 0)) * bb.height + (
                max(axbox.y0 - bb.y0, 0) + max(bb.y1 - axbox.y1, 0)
            ) * bb.width
            cost += 0.5 * out
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (t, box), cost
            else:
                t.remove()
        assert best is not None
        placed.append(best[1])


@_styled
def inner_vs_output(
    table: pd.DataFrame,
    r_s: float,
    p: float,
    *,
    y: str = "os",
    x: str = "inner",
    top_k: int = 10,
    title: str | None = None,
) -> Figure:
    """Scatter of the inner top-``top_k`` mean (x) against output saliency OS (y; or
    ``y="od"``). ``x="inner_excess"`` plots the null-corrected inner saliency (top-k mean −
    permutation-null mean) instead; ``r_s`` and ``p`` must then be its correlation.

    ``table`` has columns ``category, inner, os, od, n_regions`` (one row per category); each
    point is labelled with its category and coloured by the study's cluster (head vs rest). The
    Spearman correlation ``r_s`` (and its ``p``) computed upstream are shown in the title as
    "r_s = 0.xx (p = …)". Categories with an undefined value are listed under the plot.
    """
    source = "inner vs output table (inner_vs_output)"
    df = _require_columns(table, ["category", x, y], source)
    df, cats = _normalise_categories(df, source)
    _check_duplicates(df, ["category"], source)
    df = df.set_index("category").loc[cats]
    xs, ys = df[x].astype(float).to_numpy(), df[y].astype(float).to_numpy()
    ok = np.isfinite(xs) & np.isfinite(ys)
    cluster = np.array([BY_NAME[c].cluster for c in cats])
    colors = {"head": "#c0392b", "rest": "#2c6fbb"}

    fig = _new_figure(4.6, 3.8)
    ax = fig.add_subplot()
    for name, col in colors.items():
        sel = ok & (cluster == name)
        if sel.any():
            ax.scatter(
                xs[sel],
                ys[sel],
                s=28,
                color=col,
                edgecolor="white",
                linewidth=0.5,
                zorder=3,
                label="head categories" if name == "head" else "non-head categories",
            )
    xr_, yr_ = np.ptp(xs[ok]) if ok.any() else 1.0, np.ptp(ys[ok]) if ok.any() else 1.0
    if ok.any():
        ax.margins(x=0.18 if xr_ > 0 else 0.5, y=0.12 if yr_ > 0 else 0.5)
    ax.set_xlabel({"inner": f"inner: top-{int(top_k)} mean NSS",
                   "inner_excess": f"inner: top-{int(top_k)} mean NSS − null mean"}.get(x, x))
    ax.set_ylabel({"os": "output saliency (OS)", "od": "output difference (OD)"}.get(y, y))
    ax.legend(loc="best", frameon=False)
    head = f"r_s = {r_s:.2f} (p = {_fmt_p(p)})"
    ax.set_title(head if title is None else f"{title}\n{head}")
    if ok.any():
        _place_labels(ax, xs[ok], ys[ok], [c for c, o in zip(cats, ok, strict=True) if o])
    if (~ok).any():
        _note(fig, "not shown (undefined): " + ", ".join(np.array(cats)[~ok]))
    return fig


# --------------------------------------------------------------------------------------------
# Figs. 3/5/6: unit overlays


def _overlay_row(
    axes: Sequence[Axes],
    row: Mapping[str, Any],
    source: str,
    *,
    cmap: str,
    alpha: float,
    show_titles: bool = True,
) -> None:
    for key in ("image", "fixations", "region_mask", "unit_maps"):
        if key not in row:
            raise DataError(source, f"missing key {key!r}; keys present: {sorted(row)}")
    image = _check_image(row["image"], f"{source}: image")
    hw = image.shape[:2]
    mask = _check_mask(row["region_mask"], hw, f"{source}: region_mask")
    points = _check_points(row["fixations"], hw, f"{source}: fixations")
    unit_maps: Mapping[str, Any] = row["unit_maps"]
    if not isinstance(unit_maps, Mapping) or not unit_maps:
        raise DataError(source, "unit_maps must be a non-empty {unit name: (h, w) map} mapping")
    given = row.get("nss") or {}

    ax = axes[0]
    ax.imshow(image)
    _outline(ax, mask)
    inside = mask[point_pixels(points, hw, source)]
    ax.scatter(
        points[~inside, 0],
        points[~inside, 1],
        s=9,
        color="#ffd21f",
        edgecolor="black",
        linewidth=0.3,
        zorder=3,
    )
    ax.scatter(
        points[inside, 0],
        points[inside, 1],
        s=11,
        color=_FIX_COLOR,
        edgecolor="white",
        linewidth=0.4,
        zorder=4,
    )
    _bare(ax)
    if show_titles:
        ax.set_title(str(row.get("title", "")) or "image, region and fixations")
    for ax, (unit, amap) in zip(axes[1:], unit_maps.items(), strict=False):
        a = _check_map(amap, f"{source}: unit {unit}")
        score = float(given[unit]) if unit in given else _panel_nss(a, hw, inside, points)
        up = upsample(a, hw)
        ax.imshow(image)
        ax.imshow(_unit_range(up), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        _outline(ax, mask, color="white", lw=0.9)
        _bare(ax)
        ax.set_title(f"{unit}\nNSS = {_fmt_num(score)}")
    for ax in axes[1 + len(unit_maps) :]:
        ax.set_axis_off()


def _panel_size(images: Sequence[np.ndarray], width: float) -> tuple[float, float]:
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    return width, width * h / w


@_styled
def unit_overlays(
    image: np.ndarray,
    fixations: np.ndarray,
    region_mask: np.ndarray,
    unit_maps: Mapping[str, np.ndarray],
    title: str = "",
    *,
    nss: Mapping[str, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Figure:
    """Figs. 3/5/6: the image with the region outlined and its fixations, then each unit's map.

    Panel 1 shows the image, the region outline and the fixations (red: inside the region, yellow:
    elsewhere). Each further panel is one of the best-responding units: its map upsampled
    bilinearly to the image size, min–max normalised and overlaid on the image, titled with the
    unit name and its region NSS (Eq. 1, :func:`dissect.metrics.region_nss`, unless given in
    ``nss``).
    """
    return unit_overlay_grid(
        [
            {
                "image": image,
                "fixations": fixations,
                "region_mask": region_mask,
                "unit_maps": unit_maps,
                "title": title,
                "nss": nss,
            }
        ],
        cmap=cmap,
        alpha=alpha,
    )


@_styled
def unit_overlay_grid(
    rows: Sequence[Mapping[str, Any]],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    title: str | None = None,
) -> Figure:
    """Several regions, one row each, as :func:`unit_overlays`.

    Each row is a dict with keys ``image, fixations, region_mask, unit_maps`` and optionally
    ``title`` (shown over the image panel) and ``nss`` ({unit: precomputed NSS}).
    """
    if not rows:
        raise DataError("unit_overlay_grid", "no rows to draw")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"rows[{i}]", f"expected a dict, got {type(row).__name__}")
    ncols = 1 + max(len(r.get("unit_maps") or {}) for r in rows)
    images = [_check_image(r.get("image"), f"rows[{i}]: image") for i, r in enumerate(rows)]
    pw, ph = _panel_size(images, 2.2)
    fig = _new_figure(pw * ncols + 0.6, (ph + 0.5) * len(rows) + (0.4 if title else 0))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for i, row in enumerate(rows):
        _overlay_row(axes[i], row, f"rows[{i}]", cmap=cmap, alpha=alpha)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap=cmap),
        ax=axes[:, 1:].ravel().tolist() if ncols > 1 else axes.ravel().tolist(),
        shrink=0.6 if len(rows) > 1 else 0.9,
        label="activation (min–max per map)",
        aspect=15,
    )
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Figs. 8 and 9: pop-out


@_styled
def popout_examples(
    arrays: Sequence[tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]]],
    labels: Sequence[str] | None = None,
    *,
    cmap: str = "gray",
    title: str | None = None,
) -> Figure:
    """Fig. 8: one row per pop-out array (e.g. one per dimension), its image then each model map.

    ``arrays`` holds ``(image uint8 (H, W, 3), target mask bool (H, W), {model: (h, w) map})``.
    Columns are the models in order of first appearance; maps are upsampled to the array size,
    min–max normalised, and the target is outlined. ``labels`` (e.g. the dimension) name the rows;
    a model missing for a row shows "n/a".
    """
    if not arrays:
        raise DataError("popout_examples", "no arrays to draw")
    if labels is not None and len(labels) != len(arrays):
        raise DataError("popout_examples", f"{len(labels)} labels for {len(arrays)} arrays")
    parsed = []
    for i, item in enumerate(arrays):
        if len(item) != 3:
            raise DataError(f"arrays[{i}]", "expected (image, mask, {model: map})")
        image = _check_image(item[0], f"arrays[{i}]: image")
        mask = _check_mask(item[1], image.shape[:2], f"arrays[{i}]: mask")
        if not isinstance(item[2], Mapping):
            raise DataError(f"arrays[{i}]", "the third item must be a {model: map} mapping")
        parsed.append((image, mask, item[2]))
    models = _first_seen(m for _, _, maps in parsed for m in maps)
    pw, ph = _panel_size([p[0] for p in parsed], 1.45)
    fig = _new_figure(pw * (1 + len(models)) + 0.5, (ph + 0.15) * len(parsed) + 0.5)
    axes = fig.subplots(len(parsed), 1 + len(models), squeeze=False)
    for i, (image, mask, maps) in enumerate(parsed):
        ax = axes[i, 0]
        ax.imshow(image)
        _outline(ax, mask, color="#ff3030", lw=1.0)
        _bare(ax)
        if labels is not None:
            ax.set_ylabel(str(labels[i]))
        for j, model in enumerate(models, start=1):
            ax = axes[i, j]
            if model not in maps:
                _missing_panel(ax)
                continue
            up = upsample(_check_map(maps[model], f"arrays[{i}]: {model}"), image.shape[:2])
            ax.imshow(_unit_range(up), cmap=cmap, vmin=0, vmax=1)
            _outline(ax, mask, color="#ff3030", lw=0.8)
            _bare(ax)
    axes[0, 0].set_title("array")
    for j, model in enumerate(models, start=1):
        axes[0, j].set_title(str(model).replace("_", " "))
    if title:
        fig.suptitle(title)
    return fig


@_styled
def popout_best_units(
    rows: Sequence[Mapping[str, Any]],
    *,
    cmap: str = "inferno",
    title: str | None = None,
) -> Figure:
    """Fig. 9: each pop-out array, then its best inner unit's map in each layer.

    Each row is a dict with ``image`` (uint8 (H, W, 3)), ``mask`` (bool target mask) and
    ``maps`` ({layer: (h, w) map of that layer's best unit}), optionally ``units`` ({layer: unit
    name or index}), ``nmm`` ({layer: NMM of that unit}) and ``label`` (row name, e.g. the
    dimension). Layers are columns in order of first appearance; the target is outlined.
    """
    if not rows:
        raise DataError("popout_best_units", "no rows to draw")
    parsed = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"rows[{i}]", f"expected a dict, got {type(row).__name__}")
        for key in ("image", "mask", "maps"):
            if key not in row:
                raise DataError(f"rows[{i}]", f"missing key {key!r}; keys present: {sorted(row)}")
        image = _check_image(row["image"], f"rows[{i}]: image")
        mask = _check_mask(row["mask"], image.shape[:2], f"rows[{i}]: mask")
        parsed.append((image, mask, row))
    layers = _first_seen(layer for _, _, row in parsed for layer in row["maps"])
    pw, ph = _panel_size([p[0] for p in parsed], 1.45)
    fig = _new_figure(pw * (1 + len(layers)) + 0.5, (ph + 0.5) * len(parsed) + 0.4)
    axes = fig.subplots(len(parsed), 1 + len(layers), squeeze=False)
    for i, (image, mask, row) in enumerate(parsed):
        ax = axes[i, 0]
        ax.imshow(image)
        _outline(ax, mask, color="#ff3030", lw=1.0)
        _bare(ax)
        ax.set_title("array")
        if row.get("label") is not None:
            ax.set_ylabel(str(row["label"]))
        units, nmm = row.get("units") or {}, row.get("nmm") or {}
        for j, layer in enumerate(layers, start=1):
            ax = axes[i, j]
            if layer not in row["maps"]:
                _missing_panel(ax)
                ax.set_title(str(layer))
                continue
            up = upsample(_check_map(row["maps"][layer], f"rows[{i}]: {layer}"), image.shape[:2])
            ax.imshow(_unit_range(up), cmap=cmap, vmin=0, vmax=1)
            _outline(ax, mask, color="#00e5ff", lw=0.8)
            _bare(ax)
            parts = [f"unit {units[layer]}"] if layer in units else []
            if layer in nmm:
                parts.append(f"NMM {_fmt_num(float(nmm[layer]))}")
            ax.set_title(str(layer) + ("\n" + " · ".join(parts) if parts else ""))
    if title:
        fig.suptitle(title)
    return fig


@_styled
def popout_bars(
    nmm_table: pd.DataFrame,
    hue: str | None = None,
    *,
    ci: float = 95.0,
    n_boot: int = 1000,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Table 4 as a figure: mean NMM per model, bars with a bootstrap ``ci`` % CI over arrays.

    ``nmm_table`` has columns ``model, dimension, array, nmm`` (one row per model and array).
    ``hue="dimension"`` splits each model's bar per dimension. Models keep their order of first
    appearance; classical models and readouts (``readout_*``) get different colours. Undefined
    NMM (NaN) are left out of the mean and counted in a note under the plot.
    """
    source = "NMM table (popout_bars)"
    need = ["model", "array", "nmm"] + ([hue] if hue else [])
    df = _require_columns(nmm_table, need, source)
    keys = ["model"] + (["dimension"] if "dimension" in df.columns else []) + ["array"]
    _check_duplicates(df, keys, source)
    df = df.assign(model=df["model"].astype(str), nmm=df["nmm"].astype(float))
    models = _first_seen(df["model"])
    n_nan = df[df["nmm"].isna()].groupby("model", sort=False).size()
    data = df[df["nmm"].notna()]
    if data.empty:
        raise DataError(source, "every NMM value is NaN; nothing to draw")

    n_hue = data[hue].nunique() if hue else 1
    fig = _new_figure(max(4.5, 0.9 + len(models) * (0.45 + 0.12 * (n_hue - 1))), 3.6)
    ax = fig.add_subplot()
    common = dict(
        data=data,
        x="model",
        y="nmm",
        order=models,
        errorbar=("ci", ci),
        n_boot=n_boot,
        seed=seed,
        ax=ax,
        err_kws={"linewidth": 1.0},
        capsize=0.15,
    )
    if hue:
        hue_order = _first_seen(data[hue].astype(str))
        sns.barplot(
            **common,
            hue=data[hue].astype(str),
            hue_order=hue_order,
            palette=sns.color_palette("tab10", len(hue_order)),
        )
        ax.legend(
            title=hue,
            ncols=min(len(hue_order), 5),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            frameon=False,
        )
    else:
        readouts = [m for m in models if m.startswith("readout")]
        ramp = dict(zip(readouts, sns.color_palette("crest", len(readouts)), strict=True))
        palette = {m: ramp.get(m, "#8c8c8c") for m in models}
        sns.barplot(**common, hue="model", hue_order=models, palette=palette, legend=False)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        range(len(models)),
        [m.replace("_", " ") for m in models],
        rotation=35,
        ha="right",
        rotation_mode="anchor",
    )
    ax.set_xlabel("model")
    ax.set_ylabel(f"mean NMM ({ci:g}% CI over arrays)")
    if title:
        ax.set_title(title)
    if len(n_nan):
        _note(fig, "undefined NMM left out: " + ", ".join(f"{m} ({n})" for m, n in n_nan.items()))
    return fig


# --------------------------------------------------------------------------------------------
# scene recognition and training


@_styled
def confusion(
    cm: pd.DataFrame,
    *,
    normalize: bool = False,
    title: str | None = None,
) -> Figure:
    """Confusion matrix heatmap: rows = true class, columns = predicted class (labels from
    ``cm.index`` / ``cm.columns``). ``normalize=True`` shows row fractions (recall per class);
    a class with no example is drawn as missing. The title gives the overall accuracy when the
    row and column labels agree."""
    source = "confusion matrix"
    if not isinstance(cm, pd.DataFrame) or cm.empty:
        raise DataError(source, "expected a non-empty DataFrame (rows true, columns predicted)")
    counts = cm.to_numpy(dtype=float)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise DataError(source, "counts must be finite and non-negative")
    shown = counts
    if normalize:
        sums = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(sums > 0, counts / sums, np.nan)
    integer = not normalize and np.all(counts == np.round(counts))
    n_r, n_c = counts.shape
    size = max(3.2, 1.6 + 0.42 * max(n_r, n_c))
    fig = _new_figure(size + 0.8, size)
    ax = fig.add_subplot()
    ax.patch.set_facecolor("0.93")
    ax.patch.set_hatch(_MISSING_HATCH)
    ax.patch.set_edgecolor("0.7")
    rows = [str(v) for v in cm.index]
    cols = [str(v) for v in cm.columns]
    sns.heatmap(
        pd.DataFrame(shown, index=rows, columns=cols),
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=1 if normalize else None,
        annot=True,
        fmt=".0f" if integer else ".2f",
        annot_kws={"fontsize": 7 if max(n_r, n_c) <= 12 else 5},
        linewidths=0.5,
        linecolor="white",
        square=True,
        cbar_kws={"label": "fraction of true class" if normalize else "count", "shrink": 0.8},
    )
    ax.set_xlabel(str(cm.columns.name) if cm.columns.name else "predicted")
    ax.set_ylabel(str(cm.index.name) if cm.index.name else "true")
    ax.set_xticklabels(cols, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(rows, rotation=0)
    ax.tick_params(length=0)
    heading = title or ""
    if rows == cols and counts.sum() > 0:
        acc = np.trace(counts) / counts.sum()
        heading = (heading + "\n" if heading else "") + f"accuracy = {acc:.3f}"
    ax.set_title(heading)
    return fig


@_styled
def training_curves(
    history: pd.DataFrame,
    by: str | None = None,
    *,
    loss_label: str = "training loss (−NSS)",
    title: str | None = None,
    style: str | None = None,
) -> Figure:
    """Training loss and validation NSS per epoch, one line per ``by`` group.

    ``history`` has columns ``epoch, train_loss, val_nss`` and a grouping column (``by``; by
    default ``model`` if present, else ``k``). Groups keep their order of first appearance and get
    an ordered palette. ``style``: a second grouping column drawn as line styles (default
    ``seed`` when present: one line per model and training seed, the colour the model, the
    dash the seed). Epochs without validation (NaN) leave a gap. The saliency readouts are
    trained by minimising −NSS (He et al. §3), so ``train_loss`` is −NSS and the default
    ``loss_label`` says so; pass another for another loss.
    """
    source = "training history (training_curves)"
    df = _require_columns(history, ["epoch", "train_loss", "val_nss"], source)
    if by is None:
        by = next((c for c in ("model", "k") if c in df.columns), None)
    elif by not in df.columns:
        raise DataError(source, f"missing grouping column {by!r}; columns: {list(df.columns)}")
    if style is None and "seed" in df.columns and by != "seed":
        style = "seed"
    elif style is not None and style not in df.columns:
        raise DataError(source, f"missing style column {style!r}; columns: {list(df.columns)}")
    _check_duplicates(df, ([by] if by else []) + ([style] if style else []) + ["epoch"], source)
    groups = _first_seen(df[by]) if by else [None]
    styles = _first_seen(df[style]) if style else [None]
    dashes = ["-", "--", ":", "-."]
    palette = sns.color_palette("crest" if by == "k" else "tab10", len(groups))
    fig = _new_figure(7.2, 3.0)
    axes = fig.subplots(1, 2)
    for g, color in zip(groups, palette, strict=True):
        for j, st in enumerate(styles):
            part = df if g is None else df[df[by] == g]
            if st is not None:
                part = part[part[style] == st]
            if part.empty:
                continue
            part = part.sort_values("epoch")
            label = None if g is None or j > 0 else str(g)
            for ax, col in zip(axes, ("train_loss", "val_nss"), strict=True):
                ax.plot(
                    part["epoch"],
                    part[col].astype(float),
                    marker="o",
                    markersize=2.5 if j == 0 else 1.5,
                    linewidth=1.2,
                    linestyle=dashes[j % len(dashes)],
                    color=color,
                    label=label,
                )
    axes[0].set_ylabel(loss_label)
    axes[1].set_ylabel("validation NSS")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if by:
        fig.legend(
            *axes[0].get_legend_handles_labels(),
            title=by,
            loc="outside right center",
            frameon=False,
        )
    if style and len(styles) > 1:
        key = ", ".join(f"{style} {st} {dashes[j % len(dashes)]}" for j, st in enumerate(styles))
        title = f"{title} ({key})" if title else key
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 11: one unit across tasks


@_styled
def task_maps(
    image: np.ndarray,
    density: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    titles: Mapping[str, str] | None = None,
    fixations: np.ndarray | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    title: str | None = None,
) -> Figure:
    """Fig. 11: the image, its fixation density, then one unit's map in each trunk.

    ``maps`` holds ``{"pt": ..., "sr": ..., "sp": ...}`` (ImageNet-pretrained, scene-recognition
    and saliency-prediction trunks; drawn in that order, other keys after them). Maps and density
    of any resolution are upsampled to the image size; maps are overlaid on the image. ``titles``
    overrides the panel titles (e.g. to name the unit); ``fixations`` are drawn on the image.
    """
    img = _check_image(image, "task_maps: image")
    hw = img.shape[:2]
    dens = upsample(_check_map(density, "task_maps: density"), hw)
    if not isinstance(maps, Mapping) or not maps:
        raise DataError("task_maps", "maps must be a non-empty {task: (h, w) map} mapping")
    keys = [k for k in TASK_TITLES if k in maps] + [k for k in maps if k not in TASK_TITLES]
    names = {**TASK_TITLES, **(titles or {})}
    pw, ph = _panel_size([img], 2.2)
    fig = _new_figure(pw * (2 + len(keys)) + 0.6, ph + 0.6 + (0.3 if title else 0))
    axes = fig.subplots(1, 2 + len(keys), squeeze=False)[0]
    axes[0].imshow(img)
    if fixations is not None:
        pts = _check_points(fixations, hw, "task_maps: fixations")
        axes[0].scatter(
            pts[:, 0], pts[:, 1], s=8, color=_FIX_COLOR, edgecolor="white", linewidth=0.3
        )
    axes[0].set_title(names.get("image", "image"))
    axes[1].imshow(_unit_range(dens), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(names.get("density", "fixation density"))
    for ax, key in zip(axes[2:], keys, strict=True):
        up = upsample(_check_map(maps[key], f"task_maps: {key}"), hw)
        ax.imshow(img)
        ax.imshow(_unit_range(up), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(names.get(key, str(key)))
    for ax in axes:
        _bare(ax)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap=cmap),
        ax=list(axes[2:]),
        shrink=0.85,
        label="activation (min–max)",
        aspect=15,
    )
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# models: DeepGaze I layer comparison, what its readout picked, the leaderboard


@_styled
def deepgaze_layer_figure(table: pd.DataFrame, chosen: str | None = None) -> Figure:
    """DeepGaze I layer comparison: information gain over the centre bias (bits/fixation) of
    the readout on each layer alone and on each layer with every deeper one, on the validation
    slice and on the held-out images. ``table``: the deepgaze stage's ``layer_comparison``
    (columns ``layers, kind, val_information_gain, heldout_information_gain``); ``chosen``:
    the set picked on validation, outlined."""
    source = "DeepGaze layer comparison"
    df = _require_columns(table, ["layers", "kind", "val_information_gain",
                                  "heldout_information_gain"], source)
    fig = _new_figure(7.2, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, ("single", "and above"), strict=True):
        part = df[df["kind"] == kind]
        x = np.arange(len(part))
        for dx, col, label, color in ((-0.2, "val_information_gain", "validation", "0.6"),
                                      (0.2, "heldout_information_gain", "held-out", "C0")):
            bars = ax.bar(x + dx, part[col].astype(float), width=0.4, color=color, label=label)
            for b, name in zip(bars, part["layers"], strict=True):
                if name == chosen:
                    b.set_edgecolor("k")
                    b.set_linewidth(1.5)
        ax.set_xticks(x, [str(v) for v in part["layers"]], rotation=60, ha="right")
        ax.set_title("each layer alone" if kind == "single" else "layer and every deeper one")
        ax.axhline(0, color="0.3", lw=0.6)
    axes[0].set_ylabel("IG over centre bias (bits/fix)")
    axes[1].legend(frameon=False, fontsize=7)
    if chosen:
        _note(fig, f"outlined: {chosen}, the best on validation (the committed model)")
    return fig


@_styled
def picked_selectivity_figure(sel: pd.DataFrame, title: str | None = None) -> Figure:
    """Per category: the mean region NSS (Eq. 1) of the units a readout picked (largest
    weights) against all its units, with the 95 % band of random unit sets of the same size.
    ``sel``: :func:`dissect.picked_units.picked_selectivity`."""
    source = "picked-unit selectivity"
    df = _require_columns(sel, ["category", "picked_mean", "all_mean", "null_low", "null_high",
                                "p_value"], source)
    fig = _new_figure(7.2, 3.0)
    ax = fig.subplots()
    x = np.arange(len(df))
    ax.bar(x - 0.2, df["picked_mean"].astype(float), width=0.4, color="C3", label="picked units")
    ax.bar(x + 0.2, df["all_mean"].astype(float), width=0.4, color="0.6", label="all units")
    ax.errorbar(x - 0.2, (df["null_low"] + df["null_high"]).astype(float) / 2,
                yerr=(df["null_high"] - df["null_low"]).astype(float) / 2, fmt="none",
                ecolor="k", elinewidth=0.8, capsize=2, label="random sets, 95%")
    for xi, (m, p) in enumerate(zip(df["picked_mean"], df["p_value"], strict=True)):
        if np.isfinite(p) and p < 0.05:
            ax.text(xi - 0.2, float(m), "*", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [str(c) for c in df["category"]], rotation=60, ha="right")
    ax.set_ylabel("mean region NSS of the units")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.legend(frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    _note(fig, "* permutation p < 0.05 (picked units more selective than random sets)")
    return fig


METRIC_TITLES: dict[str, str] = {
    "ig_explained": "IG explained", "information_gain": "IG (bits/fix)",
    "log_likelihood": "LL (bits/fix)", "nss": "NSS", "cc": "CC", "sim": "SIM", "kld": "KLD",
    "auc_judd": "AUC-Judd", "auc_borji": "AUC-Borji", "sauc": "sAUC",
}


@_styled
def leaderboard_figure(summary: pd.DataFrame, metrics: Sequence[str] = ("ig_explained", "nss",
                                                                          "auc_judd", "cc"),
                       order: Sequence[str] | None = None) -> Figure:
    """The scorecard: one panel per metric, one horizontal bar per model with its image-
    bootstrap interval. ``summary``: :func:`dissect.evaluation.summarise` (``model, metric,
    value, ci_low, ci_high``); ``order``: model order top to bottom (default the summary's)."""
    source = "leaderboard"
    df = _require_columns(summary, ["model", "metric", "value", "ci_low", "ci_high"], source)
    models = list(order) if order is not None else _first_seen(df["model"])
    metrics = [m for m in metrics if m in set(df["metric"])]
    if not metrics:
        raise DataError(source, "none of the requested metrics is in the summary")
    fig = _new_figure(2.3 * len(metrics) + 1.2, 0.22 * len(models) + 1.0)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    y = np.arange(len(models))
    for ax, metric in zip(axes, metrics, strict=True):
        part = df[df["metric"] == metric].set_index("model").reindex(models)
        v = part["value"].astype(float).to_numpy()
        lo = part["ci_low"].astype(float).to_numpy()
        hi = part["ci_high"].astype(float).to_numpy()
        colors = ["0.5" if m in ("uniform", "centre_bias", "gold_standard") else
                  "C1" if m.startswith("readout") else "C3" if m.startswith("deepgaze") else "C0"
                  for m in models]
        ax.barh(y, np.nan_to_num(v), color=colors)
        ok = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(v[ok], y[ok], xerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="none",
                    ecolor="k", elinewidth=0.7, capsize=1.5)
        ax.set_title(METRIC_TITLES.get(metric, metric))
        ax.axvline(0, color="0.3", lw=0.6)
    axes[0].set_yticks(y, models)
    axes[0].invert_yaxis()
    _note(fig, "bars: held-out value; whiskers: image-bootstrap interval; grey: baselines, "
               "orange: readouts, red: DeepGaze I, blue: classical")
    return fig


@_styled
def prior_figure(prior: np.ndarray, centre_bias: np.ndarray, *, cc: float | None = None,
                 title: str = "ML-Net's learned prior") -> Figure:
    """A learned multiplicative prior on the image (ML-Net's ``up(1 + W)``, mapped to the
    image's pixels) beside the centre-bias baseline's density on the same image, each with its
    own colour scale (a multiplier against a probability density), and ``cc`` (their Pearson
    correlation over pixels) in the caption."""
    p = _check_map(prior, "learned prior")
    c = _check_map(centre_bias, "centre bias")
    if p.shape != c.shape:
        raise DataError("prior figure", f"prior {p.shape} and centre bias {c.shape} differ")
    fig = _new_figure(7.2, 2.8)
    axes = fig.subplots(1, 2)
    for ax, arr, name, label in ((axes[0], p, title, "multiplier"),
                                 (axes[1], c, "centre bias (baselines stage)", "density")):
        im = ax.imshow(arr, cmap="magma", interpolation="nearest")
        _bare(ax)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if cc is not None:
        _note(fig, f"Pearson correlation over the image's pixels: {cc:.3f}")
    return fig


@_styled
def implicit_gain_figure(table: pd.DataFrame, gain: pd.DataFrame,
                         layers: Sequence[str]) -> Figure:
    """Implicit saliency per layer (Sun et al. 2020, Fig. 4's analogue): per metric (NSS, CC) a
    panel of the mean score of each method along ``layers`` (S_C, S_F, Grad-CAM; Guided
    Backprop, layer-free, as a dashed line) with interval bars, and a panel of the paired gain
    S_C − S_F per layer. ``table``: :func:`dissect.image_means.means_table` rows ``layer,
    method, metric, value, ci_low, ci_high``; ``gain``: the paired differences ``layer, metric,
    value, ci_low, ci_high``."""
    source = "implicit saliency per layer"
    t = _require_columns(table, ["layer", "method", "metric", "value", "ci_low", "ci_high"],
                         source)
    g = _require_columns(gain, ["layer", "metric", "value", "ci_low", "ci_high"], source)
    layers = list(layers)
    x = np.arange(len(layers))
    fig = _new_figure(7.2, 4.4)
    axes = fig.subplots(2, 2, sharex="col")
    for row, metric in enumerate(("nss", "cc")):
        ax = axes[row, 0]
        for k, method in enumerate(sorted(set(t["method"]), key=list(t["method"]).index)):
            part = t[(t["method"] == method) & (t["metric"] == metric)]
            if part.empty:
                continue
            if set(part["layer"]) <= {"input"}:
                ax.axhline(float(part["value"].iloc[0]), color=f"C{k}", ls="--", lw=1,
                           label=f"{method} (input)")
                continue
            part = part.set_index("layer").reindex(layers)
            v = part["value"].to_numpy(float)
            err = np.vstack([v - part["ci_low"].to_numpy(float),
                             part["ci_high"].to_numpy(float) - v])
            ax.errorbar(x, v, yerr=np.abs(err), marker="o", ms=3, capsize=2, color=f"C{k}",
                        label=method)
        ax.set_ylabel(metric.upper())
        ax.axhline(0, color="0.6", lw=0.5)
        gp = g[g["metric"] == metric].set_index("layer").reindex(layers)
        v = gp["value"].to_numpy(float)
        err = np.vstack([v - gp["ci_low"].to_numpy(float), gp["ci_high"].to_numpy(float) - v])
        axes[row, 1].bar(x, v, yerr=np.abs(err), capsize=2, color="C0")
        axes[row, 1].axhline(0, color="0.3", lw=0.6)
        axes[row, 1].set_ylabel(f"{metric.upper()} gain S_C − S_F")
    for ax in axes[1]:
        ax.set_xticks(x, layers, rotation=30, ha="right")
    axes[0, 0].legend(frameon=False, fontsize=6)
    axes[0, 0].set_title("per layer (mid → late)")
    axes[0, 1].set_title("gain of S_C over S_F (paired)")
    _note(fig, "held-out images; bars: image-bootstrap intervals")
    return fig
