"""The unit browser: a static, self-contained HTML site of every dissected model.

Layout (all links relative, so it opens from ``file://`` and under ``python -m http.server``;
nothing is loaded from the network — the CSS and the table-sorting script ship in
``dissect/site_templates`` and are copied into ``assets/``)::

    index.html                     models and layers, one category-profile strip per layer
    assets/site.css, site.js
    pages/layers/<model>--<layer>.html            the sortable, filterable unit table
    pages/units/<model>--<layer>--<unit>.html     a unit: top images, category bars, …
    pages/models/<model>.html                     a model: scores, example maps, own views
    pages/img/…                                   thumbnails, overlays, copied figures

Which units get a page: those among a category's ``top_k`` units of their layer (by ``m[u, c]``)
and those listed in ``extra_units`` (``"model/layer/unit"``), for the layers built with
``unit_pages=True``. Every unit of every layer is in its layer's table.

A unit's images: the held-out regions of its best category, one per image (the region where the
unit's Eq. 1 NSS is highest), the ``n_images`` images with the highest such NSS. Each image shows
the unit's map upsampled bilinearly over the thumbnail, one colour scale for the whole row
(min and max over the row's maps), the region's outline and the image's fixations. A fine-tuned
layer names its pretrained counterpart (``before``): the unit page then shows the same unit of
the pretrained trunk on the same images in a second row (He et al. Figs. 5–6).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
import xarray as xr

from dissect.errors import DataError
from dissect.metrics import unit_nmm
from dissect.site_images import (
    category_bars_svg,
    heat_colour,
    overlay,
    profile_strip_svg,
    thumbnail,
    write_jpeg,
)
from dissect.statistics import _canonical_categories
from dissect.unit_profiles import UnitProfiles, unit_profiles

log = logging.getLogger("dissect.site")

#: the templates, stylesheet and script the pages are made of (a stage dependency:
#: tests/stage_deps.py reads this)
PACKAGE_DATA = ("site_templates",)

MapReader = Callable[[Sequence[str], Sequence[int]], np.ndarray]
"""``(image_ids, units) → (images, units, h, w)`` maps of one layer."""


@dataclass
class SiteLayer:
    """One dissected layer of one model, as the browser shows it."""

    model: str  # id used in file names: letters, digits, '_' and '-'
    model_label: str
    group: str  # heading on the index ("pretrained trunk", "fine-tuned readouts", …)
    layer: str
    assoc: xr.DataArray  # Eq. 1, dims (unit, region), region coords image, category, region_id
    maps: MapReader | None = None  # unit maps for the unit pages (None: table only)
    unit_pages: bool = True
    before: tuple[str, str] | None = None  # (model, layer) of the same units before fine-tuning
    #: the layer's unit maps on the pop-out arrays, (arrays, units, h, w) in the order of
    #: ``build_site``'s ``popout_arrays``: a unit page then shows the unit's own best arrays
    popout_maps: Callable[[], np.ndarray] | None = None
    #: without maps: the pop-out table's rows (array, dimension, best_unit, best_nmm), and a
    #: page lists the arrays where the unit is its layer's best unit
    popout: pd.DataFrame | None = None


@dataclass
class ModelPage:
    """A model's page: its scorecard rows, example maps and its own figures."""

    name: str
    label: str
    scores: pd.DataFrame  # metric, value, ci_low, ci_high, n_images
    predict: Callable[[str], np.ndarray] | None = None  # image id → saliency map (H, W)
    figures: list[Path] = field(default_factory=list)
    text: str = ""
    #: dissected units this model relies on, "model/layer/unit" with a note (e.g. DeepGaze I's
    #: largest readout weights): each gets a unit page, linked from the model's page
    units: list[tuple[str, str]] = field(default_factory=list)
    #: dissected layers of this model, (model, layer), linked from its page
    layers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SiteOptions:
    top_k: int = 3
    n_images: int = 5
    min_regions: int = 3  # defined regions a category needs to be a unit's best
    n_popout: int = 4  # a unit's best pop-out arrays shown
    thumb_width: int = 192
    threshold: float = 1.5
    n_null: int = 200
    seed: int = 0
    null: str = "labels"
    drop_first: bool = True
    extra_units: Sequence[str] = ()
    example_images: Sequence[str] = ()
    jpeg_quality: int = 80


@dataclass
class SiteSummary:
    index: Path
    n_layers: int
    n_unit_pages: int
    n_model_pages: int
    n_files: int
    n_bytes: int


def slug(*parts: Any) -> str:
    """File-name stem of a model/layer/unit: parts joined by '--', unsafe characters as '_'."""
    out = []
    for p in parts:
        s = "".join(c if (c.isalnum() or c in "_-.") else "_" for c in str(p))
        out.append(s.strip(".") or "_")
    return "--".join(out)


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("dissect", PACKAGE_DATA[0]),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _num(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if not np.isfinite(f) else f"{f:.{digits}f}"


def _p(v: Any) -> str:
    f = float(v)
    return "n/a" if not np.isfinite(f) else (f"{f:.3f}" if f >= 0.001 else f"{f:.1e}")


def _sort_key(v: Any) -> str:
    """``data-value`` for the sorting script: numbers as they are, NaN as empty (sorted last)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "" if not np.isfinite(f) else repr(f)


@dataclass
class _Built:
    """A layer with its profiles and the units that get pages."""

    src: SiteLayer  # its assoc transposed to (unit, region)
    prof: UnitProfiles
    page_units: list[int]
    cats: np.ndarray  # canonical category of every region
    summary: dict[str, Any] = field(default_factory=dict)  # _layer_summary

    @property
    def key(self) -> tuple[str, str]:
        return self.src.model, self.src.layer


class _Writer:
    """Writes the files of one site into ``out`` and keeps count of them."""

    def __init__(self, out: Path, dataset: Any, regions: Any, opts: SiteOptions) -> None:
        self.out, self.dataset, self.regions, self.opts = out, dataset, regions, opts
        self.env = _env()
        self.env.filters.update(num=_num, p=_p, key=_sort_key)
        self._thumbs: dict[str, np.ndarray] = {}
        self.files: set[Path] = set()

    def path(self, rel: str) -> Path:
        p = self.out / rel
        if p in self.files:  # two models/layers/units whose names map to one file name
            raise DataError(p, "written twice: two pages or pictures map to this file name "
                               "(rename a model or layer)")
        p.parent.mkdir(parents=True, exist_ok=True)
        self.files.add(p)
        return p

    def page(self, rel: str, template: str, **ctx: Any) -> None:
        depth = rel.count("/")
        root = "../" * depth
        html = self.env.get_template(template).render(root=root, **ctx)
        self.path(rel).write_text(html, encoding="utf-8")

    def thumb(self, image_id: str) -> np.ndarray:
        if image_id not in self._thumbs:
            self._thumbs[image_id] = thumbnail(self.dataset.load_image(image_id),
                                               self.opts.thumb_width)
        return self._thumbs[image_id]

    def jpeg(self, rel: str, rgb: np.ndarray) -> str:
        write_jpeg(self.path(rel), rgb, self.opts.jpeg_quality)
        return rel


def _best_images(assoc: xr.DataArray, cats: np.ndarray, unit_index: int, category: str,
                 n: int) -> list[tuple[str, int, float]]:
    """(image, region_id, nss) of the ``n`` images whose best region of ``category`` has the
    highest Assoc(u, r), one region per image, NaN never chosen; ``assoc`` is (unit, region)
    and ``cats`` its canonical region categories."""
    cols = np.flatnonzero(cats == category)
    v = np.asarray(assoc.values[unit_index, cols], dtype=np.float64)
    ok = np.isfinite(v)
    cols, v = cols[ok], v[ok]
    images = np.asarray(assoc["image"].values).astype(str)[cols]
    rids = np.asarray(assoc["region_id"].values)[cols]
    order = np.argsort(-v, kind="stable")
    out, seen = [], set()
    for i in order:
        if images[i] in seen:
            continue
        seen.add(images[i])
        out.append((str(images[i]), int(rids[i]), float(v[i])))
        if len(out) == n:
            break
    return out


def _unit_index(assoc: xr.DataArray, unit: int, where: str = "site") -> int:
    units = assoc["unit"].values if "unit" in assoc.coords else np.arange(assoc.sizes["unit"])
    found = np.flatnonzero(np.asarray(units) == unit)
    if found.size != 1:
        raise DataError(where, f"unit {unit} is not among the layer's {len(units)} units")
    return int(found[0])


def _extra_units(extra: Iterable[tuple[str, str]], layers: Mapping[tuple[str, str], Any]
                 ) -> dict[tuple[str, str], list[int]]:
    """``(spec, origin)`` pairs, spec ``"model/layer/unit"`` → layer → units; errors name the
    origin (``site.units`` or the model page asking for the unit)."""
    out: dict[tuple[str, str], list[int]] = {}
    for item, origin in extra:
        parts = str(item).split("/")
        if len(parts) != 3 or not parts[2].strip().isdigit():
            raise DataError(origin, f"{item!r}: expected 'model/layer/unit', e.g. "
                                    "'pt/block12/288'")
        key = (parts[0], parts[1])
        if key not in layers:
            known = ", ".join(f"{m}/{ly}" for m, ly in layers)
            raise DataError(origin, f"{item!r}: no dissected layer {key[0]}/{key[1]}; "
                                    f"known: {known}")
        out.setdefault(key, []).append(int(parts[2]))
    return out


def _layer_rows(b: _Built, paged: set[int]) -> list[dict[str, Any]]:
    t = b.prof.table
    rows = []
    for r in t.itertuples(index=False):
        rows.append({"unit": int(r.unit), "best": r.best_category, "nss": r.nss,
                     "rank": int(r.rank) if np.isfinite(r.rank) else None,
                     "excess": r.excess, "p": r.p_value,
                     "above": int(r.n_above_T), "n": int(r.n_defined),
                     "href": (f"../units/{slug(b.src.model, b.src.layer, int(r.unit))}.html"
                              if int(r.unit) in paged else None)})
    return rows


def _layer_summary(b: _Built, top_k: int) -> dict[str, Any]:
    """Per category: top-k mean of m[u, c] over units, count above T, units whose best it is."""
    m = b.prof.means
    cats = b.prof.categories
    top = []
    for j in range(len(cats)):
        v = m[:, j][np.isfinite(m[:, j])]
        top.append(float(np.sort(v)[::-1][:top_k].mean()) if v.size else np.nan)
    with np.errstate(invalid="ignore"):
        above = (m > b.prof.threshold).sum(axis=0)
    best = b.prof.table["best_category"].value_counts()
    return {"categories": cats, "top": np.array(top), "above": above,
            "best": [int(best.get(c, 0)) for c in cats]}


def build_site(out: Path, layers: Sequence[SiteLayer], *, dataset: Any, regions: Any,
               opts: SiteOptions, models: Sequence[ModelPage] = (),
               report: Path | None = None, popout_arrays: Sequence[Any] = (),
               density: Callable[[str], np.ndarray] | None = None,
               progress: bool = True) -> SiteSummary:
    """Write the site into ``out`` (an empty or absent folder; see the module docstring).

    ``dataset``/``regions`` give images, fixations and region masks; ``report``, when given, is
    linked from the index (relative path); ``popout_arrays``: the pop-out arrays (``id``,
    ``dimension``, ``image`` RGB, ``mask``) for the pop-out section of unit pages, in the order
    of the layers' ``popout_maps``; ``density`` maps an
    image id to the fixation density the model pages show beside each model's map.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "the site folder must be empty (the stage writes a fresh copy)")
    w = _Writer(out, dataset, regions, opts)
    keys = [(ly.model, ly.layer) for ly in layers]
    if len(set(keys)) != len(keys):
        raise DataError("site", "a model/layer is listed twice: " + ", ".join(
            f"{m}/{ly}" for m, ly in keys if keys.count((m, ly)) > 1))
    wanted = ([(u, "site.units") for u in opts.extra_units]
              + [(u, f"model page {mp.name}") for mp in models for u, _ in mp.units])
    extra = _extra_units(wanted, dict.fromkeys(keys))
    for mp in models:
        for m, ly in mp.layers:
            if (m, ly) not in keys:
                raise DataError(mp.name, f"model page links layer {m}/{ly}, which is not "
                                         "among the dissected layers")
    built: dict[tuple[str, str], _Built] = {}
    for src in tqdm(layers, desc="site: unit profiles", unit="layer", disable=not progress):
        where = f"{src.model}/{src.layer}"
        if set(src.assoc.dims) != {"unit", "region"}:
            raise DataError(where, f"association dims must be (unit, region), got "
                                   f"{src.assoc.dims}")
        src = replace(src, assoc=src.assoc.transpose("unit", "region"))
        prof = unit_profiles(src.assoc, threshold=opts.threshold, n_null=opts.n_null,
                             seed=opts.seed, null=opts.null, min_regions=opts.min_regions)
        cats = _canonical_categories(src.assoc["category"].values, where)
        units: list[int] = []
        if src.unit_pages and src.maps is not None:
            for us in prof.top_units(opts.top_k).values():
                units += [u for u in us if u not in units]
        for u in extra.get((src.model, src.layer), []):
            if src.maps is None:
                raise DataError(where, f"unit {u} asked for a page, but this layer has no "
                                       "stored maps, so it has no unit pages")
            _unit_index(src.assoc, u, where)
            if u not in units:
                units.append(u)
        b = _Built(src, prof, units, cats)
        b.summary = _layer_summary(b, 10)
        built[(src.model, src.layer)] = b

    n_pages = sum(len(b.page_units) for b in built.values())
    bar = tqdm(total=n_pages, desc="site: unit pages", unit="page", disable=not progress)
    for b in built.values():
        _unit_pages(w, b, built, list(popout_arrays), bar)
    bar.close()

    for b in built.values():
        paged = set(b.page_units)
        w.page(f"pages/layers/{slug(*b.key)}.html", "layer.html", b=b, rows=_layer_rows(b, paged),
               summary=b.summary, heat=heat_colour, vmax=float(np.nanmax(
                   np.append(b.summary["top"], 0.0))), threshold=opts.threshold,
               n_null=opts.n_null, top_k=opts.top_k, min_regions=opts.min_regions)

    model_rows = []
    for mp in tqdm(models, desc="site: model pages", unit="model", disable=not progress):
        model_rows.append(_model_page(w, mp, opts, density))

    groups: dict[str, list[dict[str, Any]]] = {}
    vmax = max([float(np.nanmax(np.append(b.summary["top"], 0.0)))
                for b in built.values()] + [1.0])
    for b in built.values():
        s = b.summary
        t = b.prof.table
        groups.setdefault(b.src.group, []).append({
            "model": b.src.model_label, "layer": b.src.layer, "units": len(t),
            "selective": int((t["p_value"] < 0.05).sum()),
            "top_category": (s["categories"][int(np.nanargmax(s["top"]))]
                             if np.isfinite(s["top"]).any() else ""),
            "top_value": float(np.nanmax(s["top"])) if np.isfinite(s["top"]).any() else np.nan,
            "pages": len(b.page_units),
            "strip": profile_strip_svg(s["categories"], s["top"], vmax=vmax,
                                       label=f"{b.src.layer}: top-10 mean per category"),
            "href": f"pages/layers/{slug(*b.key)}.html"})
    model_rows.sort(key=lambda r: -r["ig"] if np.isfinite(r["ig"]) else np.inf)
    report_href = os.path.relpath(report, out).replace(os.sep, "/") if report else None
    for name in ("site.css", "site.js"):
        src = resources.files("dissect").joinpath(PACKAGE_DATA[0], name)
        w.path(f"assets/{name}").write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    cats_all = next(iter(built.values())).prof.categories if built else []
    w.page("index.html", "index.html", groups=groups, categories=cats_all, models=model_rows,
           report=report_href, opts=opts, n_pages=n_pages)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return SiteSummary(index=out / "index.html", n_layers=len(built), n_unit_pages=n_pages,
                       n_model_pages=len(model_rows), n_files=len(files),
                       n_bytes=sum(p.stat().st_size for p in files))


def _range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values: one colour scale; (0, 1) when there are none."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _image_row(w: _Writer, maps: np.ndarray, picks: Sequence[tuple[str, int, float]],
               name: str) -> tuple[list[dict[str, Any]], float, float]:
    """Overlays of one row (one colour scale over the row's maps): rel paths and captions."""
    vmin, vmax = _range(maps)
    cells = []
    drop = w.opts.drop_first
    for amap, (image_id, rid, value) in zip(maps, picks, strict=True):
        stim = w.dataset[image_id]
        size = (stim.height, stim.width)
        mask = w.regions.instance_mask(image_id) == rid
        rgb = overlay(w.thumb(image_id), amap, vmin, vmax, image_size=size,
                      points=w.dataset.points(image_id, drop_first=drop), region_mask=mask)
        rel = w.jpeg(f"pages/img/units/{name}--{slug(image_id)}.jpg", rgb)
        cells.append({"src": "../../" + rel, "image": image_id, "region": rid, "nss": value})
    return cells, vmin, vmax


def _unit_pages(w: _Writer, b: _Built, built: Mapping[tuple[str, str], _Built],
                arrays: Sequence[Any], bar: Any) -> None:
    if not b.page_units:
        return
    src, prof = b.src, b.prof
    where = f"{src.model}/{src.layer}"
    t = prof.table.set_index("unit")
    picks = {}
    for u in b.page_units:
        cat = t.loc[u, "best_category"]
        picks[u] = (_best_images(src.assoc, b.cats, _unit_index(src.assoc, u, where), cat,
                                 w.opts.n_images) if cat else [])
    images = sorted({p[0] for ps in picks.values() for p in ps})
    units = sorted(b.page_units)
    assert src.maps is not None
    maps = src.maps(images, units) if images else None  # (images, units, h, w)
    before = built.get(src.before) if src.before else None
    if src.before and before is None:
        raise DataError(where, f"its 'before' layer {src.before[0]}/{src.before[1]} is not "
                               "among the dissected layers")
    before_maps = bt = col = None
    if before is not None:
        bt = before.prof.table.set_index("unit")
        # the before layer's region columns by (image, region id)
        col = {(str(i), int(r)): k for k, (i, r) in enumerate(zip(
            before.src.assoc["image"].values, before.src.assoc["region_id"].values,
            strict=True))}
        if before.src.maps is not None and images:
            before_maps = before.src.maps(images, units)
    pop = _popout_nmm(src, units, arrays)
    for u in b.page_units:
        name = slug(src.model, src.layer, u)
        row = t.loc[u].to_dict()
        ps = picks[u]
        ui = _unit_index(src.assoc, u, where)
        bi = (_unit_index(before.src.assoc, u, f"{src.before[0]}/{src.before[1]}")
              if before is not None else None)  # a unit missing there: DataError
        cells, vmin, vmax = [], np.nan, np.nan
        cells_before, bmin, bmax = [], np.nan, np.nan
        if ps and maps is not None:
            sel = np.array([images.index(p[0]) for p in ps])
            cells, vmin, vmax = _image_row(w, maps[sel, units.index(u)], ps, name)
            if before_maps is not None and bi is not None:
                bps = [(i, r, float(before.src.assoc.values[bi, col[(i, r)]])
                        if (i, r) in col else np.nan) for i, r, _ in ps]
                cells_before, bmin, bmax = _image_row(
                    w, before_maps[sel, units.index(u)], bps,
                    slug(before.src.model, before.src.layer, u) + "--for--" + slug(src.model))
        # after and before side by side: one axis, so the bars compare
        scale = [prof.means[ui], prof.band_low[ui], prof.band_high[ui]]
        if bi is not None:
            scale += [before.prof.means[bi], before.prof.band_low[bi], before.prof.band_high[bi]]
        lo, hi = _axis(np.concatenate(scale), prof.threshold)
        bars = category_bars_svg(prof.categories, prof.means[ui], prof.band_low[ui],
                                 prof.band_high[ui], prof.threshold, lo=lo, hi=hi)
        before_info = None
        if bi is not None:
            before_info = {
                "label": before.src.model_label, "layer": before.src.layer,
                "row": bt.loc[u].to_dict(), "cells": cells_before, "vmin": bmin, "vmax": bmax,
                "bars": category_bars_svg(before.prof.categories, before.prof.means[bi],
                                          before.prof.band_low[bi], before.prof.band_high[bi],
                                          prof.threshold, lo=lo, hi=hi),
                "href": (f"{slug(before.src.model, before.src.layer, u)}.html"
                         if u in before.page_units else None)}
        w.page(f"pages/units/{name}.html", "unit.html", b=b, unit=u, row=row, cells=cells,
               vmin=vmin, vmax=vmax, bars=bars, before=before_info,
               popout=_popout_cells(w, src, u, units, arrays, pop),
               layer_href=f"../layers/{slug(*b.key)}.html", n_null=prof.n_null,
               min_regions=prof.min_regions, n_regions=int(row["n_defined"]))
        bar.update(1)


def _axis(values: np.ndarray, threshold: float) -> tuple[float, float]:
    """The bar charts' x range: 0, T and every finite value in view."""
    v = np.concatenate([values[np.isfinite(values)], [0.0, threshold]])
    lo, hi = min(0.0, float(v.min())), float(v.max())
    return lo, (hi * 1.05 if hi > 0 else 1.0)


def _popout_nmm(src: SiteLayer, units: Sequence[int], arrays: Sequence[Any]
                ) -> np.ndarray | None:
    """NMM (Eq. 4, exact, :func:`dissect.metrics.unit_nmm`) of ``units`` on every pop-out array:
    (arrays, units), or None when the layer has no maps on the arrays."""
    if src.popout_maps is None or not arrays:
        return None
    maps = src.popout_maps()
    if maps.shape[0] != len(arrays):
        raise DataError(f"{src.model}/{src.layer}", f"{maps.shape[0]} pop-out maps for "
                                                    f"{len(arrays)} arrays")
    cols = [_unit_index(src.assoc, u) for u in units]
    out = np.empty((len(arrays), len(units)))
    for i, a in enumerate(arrays):
        mask = np.asarray(a.mask).astype(bool)
        out[i] = unit_nmm(np.asarray(maps[i][cols], dtype=np.float64), mask.shape, mask)
    return out


def _popout_cells(w: _Writer, src: SiteLayer, unit: int, units: Sequence[int],
                  arrays: Sequence[Any], nmm: np.ndarray | None) -> dict[str, Any] | None:
    """The unit's pop-out section: its ``n_popout`` arrays of highest NMM with its map over
    them (one colour scale for the row), or, for a layer without maps on the arrays, the arrays
    on which it is its layer's best unit (from the pop-out table)."""
    by_id = {str(a.id): a for a in arrays}
    if nmm is not None:
        j = list(units).index(unit)
        v = nmm[:, j]
        order = [i for i in np.argsort(-np.where(np.isfinite(v), v, -np.inf), kind="stable")
                 if np.isfinite(v[i])][: w.opts.n_popout]
        maps = src.popout_maps()
        col = _unit_index(src.assoc, unit)
        row = np.stack([maps[i][col] for i in order]) if order else np.zeros((0, 1, 1))
        lo, hi = _range(row)
        cells = []
        for i in order:
            a = arrays[i]
            mask = np.asarray(a.mask).astype(bool)
            rgb = overlay(thumbnail(a.image, w.opts.thumb_width), maps[i][col], lo, hi,
                          image_size=mask.shape, region_mask=mask)
            rel = w.jpeg(f"pages/img/popout/{slug(src.model, src.layer, unit, a.id)}.jpg", rgb)
            cells.append({"src": "../../" + rel, "array": a.id, "dimension": a.dimension,
                          "nmm": float(v[i])})
        feature = [float(x) for x, a in zip(v, arrays, strict=True)
                   if np.isfinite(x) and a.dimension != "conjunction"]
        return {"own": True, "cells": cells, "vmin": lo, "vmax": hi,
                "mean": float(np.mean(feature)) if feature else np.nan}
    if src.popout is None:
        return None
    rows = src.popout[src.popout["best_unit"].astype(int) == unit]
    rows = rows.sort_values("best_nmm", ascending=False).head(w.opts.n_popout)
    cells = []
    for r in rows.itertuples(index=False):
        a = by_id.get(str(r.array))
        if a is None:
            raise DataError(f"{src.model}/{src.layer}", f"pop-out array {r.array} of the "
                            "pop-out unit table is not among the generated arrays")
        rel = f"pages/img/popout/{slug(r.array)}.jpg"
        if w.out / rel not in w.files:
            mask = np.asarray(a.mask).astype(bool)
            w.jpeg(rel, overlay(thumbnail(a.image, w.opts.thumb_width), None, 0, 1,
                                image_size=mask.shape, region_mask=mask))
        cells.append({"src": "../../" + rel, "array": r.array, "dimension": r.dimension,
                      "nmm": r.best_nmm})
    return {"own": False, "cells": cells}


def _coloured(w: _Writer, image_id: str, amap: np.ndarray, rel: str, points: bool) -> str:
    """A map over the image's thumbnail, min–max coloured, optionally with the fixations."""
    if w.out / rel in w.files:  # the same density on every model's page: drawn once
        return "../../" + rel
    stim = w.dataset[image_id]
    size = (stim.height, stim.width)
    amap = np.asarray(amap(image_id) if callable(amap) else amap, dtype=np.float64)
    if amap.shape != size:
        raise DataError(rel, f"image {image_id}: the map is {amap.shape}, the image {size}")
    lo, hi = _range(amap)
    pts = w.dataset.points(image_id, drop_first=w.opts.drop_first) if points else None
    rgb = overlay(w.thumb(image_id), amap, lo, hi, image_size=size, points=pts)
    w.jpeg(rel, rgb)
    return "../../" + rel


def _model_page(w: _Writer, mp: ModelPage, opts: SiteOptions,
                density: Callable[[str], np.ndarray] | None) -> dict[str, Any]:
    examples = []
    if mp.predict is not None:
        for image_id in opts.example_images:
            cell = {"image": image_id, "src": _coloured(
                w, image_id, mp.predict(image_id),
                f"pages/img/models/{slug(mp.name)}--{slug(image_id)}.jpg", points=True)}
            if density is not None:
                cell["density"] = _coloured(w, image_id, density,
                                            f"pages/img/density/{slug(image_id)}.jpg",
                                            points=False)
            examples.append(cell)
    figs = []
    for f in mp.figures:  # one copy of each figure, however many pages show it
        rel = f"pages/img/figures/{slug(f.parent.name)}--{f.name}"
        if w.out / rel not in w.files:
            shutil.copyfile(f, w.path(rel))
        figs.append({"src": "../../" + quote(rel), "name": f.name})
    units = []
    for spec, note in mp.units:
        m, ly, u = spec.split("/")
        units.append({"href": f"../units/{slug(m, ly, int(u))}.html", "name": spec, "note": note})
    layers = [{"href": f"../layers/{slug(m, ly)}.html", "name": f"{m}/{ly}"}
              for m, ly in mp.layers]
    w.page(f"pages/models/{slug(mp.name)}.html", "model.html", mp=mp,
           scores=mp.scores.to_dict("records"), examples=examples, figures=figs, units=units,
           layers=layers)
    s = mp.scores.set_index("metric")["value"] if len(mp.scores) else pd.Series(dtype=float)
    return {"name": mp.name, "label": mp.label, "href": f"pages/models/{slug(mp.name)}.html",
            "ig": s.get("ig_explained", np.nan), "nss": s.get("nss", np.nan),
            "auc": s.get("auc_judd", np.nan)}

