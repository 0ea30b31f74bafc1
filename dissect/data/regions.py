"""Salient-region annotations: the OSIE-SR release format and labelme polygons.

Release format (what ``/work/shared/data/osie_regions`` and the study's OSIE-SR use)::

    <root>/SegmentationObject/<id>.png   uint8, 0 = no region, 1..n = region (instance) id
    <root>/SegmentationClass/<id>.png    uint8, 0 = no region, else the category code
                                         (table in :mod:`dissect.categories`)
    <root>/regions.csv                   optional; image, region, category, code[, extra columns]

A :class:`RegionSet` holds the region table (one row per region) and reads masks lazily, on first
use, through a small LRU cache. Every mask is verified the first time it is read (and all of them
by :meth:`RegionSet.validate` or ``load_regions(..., verify=True)``): size equal to the stimulus
(when a dataset is given) and between the two PNGs; codes in the category table; one class code
per region; no class pixels outside regions; and the table agreeing with the PNGs (no listed region
with an empty mask, no unlisted region, same code). Any violation is a :class:`DataError` naming
the file.

A fixation belongs to the region under ``mask[rint(y), rint(x)]`` (0-based pixel coordinates;
numpy ``rint`` rounds exact halves to even — see :mod:`dissect.metrics.conventions`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from dissect.categories import BY_CODE, code_of, name_of
from dissect.data.images import read_label_png, read_size, write_label_png
from dissect.data.osie import FixationDataset, _examples
from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices

__all__ = ["RegionSet", "load_regions", "load_labelme", "write_regions", "REGION_COLUMNS"]

REGION_COLUMNS: tuple[str, ...] = ("image", "region", "category", "code")
OBJECT_DIR = "SegmentationObject"
CLASS_DIR = "SegmentationClass"
REGIONS_CSV = "regions.csv"

# reader(image_id) -> (instance mask, class mask or None: derive it from the table)
MaskReader = Callable[[str], tuple[np.ndarray, np.ndarray | None]]


def _analyse(inst: np.ndarray, cls: np.ndarray, where: str, cls_where: str) -> dict[int, int]:
    """{region id: class code} of a pair of masks, checking their consistency (vectorised)."""
    if inst.min(initial=0) < 0 or cls.min(initial=0) < 0:
        raise DataError(where, "negative label values")
    base = int(cls.max(initial=0)) + 1
    pairs = np.bincount((inst.astype(np.int64) * base + cls).ravel())
    nz = np.flatnonzero(pairs)
    reg, code = nz // base, nz % base
    unknown = sorted({int(c) for c in code if c != 0 and int(c) not in BY_CODE})
    if unknown:
        raise DataError(
            cls_where, f"category code(s) {unknown} are not in the category table {sorted(BY_CODE)}"
        )
    if np.any((reg == 0) & (code != 0)):
        n = int(pairs[nz[(reg == 0) & (code != 0)]].sum())
        raise DataError(cls_where, f"{n} pixel(s) carry a class code but lie in no region")
    if np.any((reg != 0) & (code == 0)):
        bad = sorted({int(r) for r in reg[(reg != 0) & (code == 0)]})
        raise DataError(cls_where, f"region(s) {bad} have pixels without a class code")
    out: dict[int, int] = {}
    for r, c in zip(reg.tolist(), code.tolist(), strict=True):
        if r == 0:
            continue
        if r in out:
            raise DataError(
                cls_where,
                f"region {r} (in {where}) carries two different class codes {out[r]} and {c}",
            )
        out[r] = c
    return out


class RegionSet:
    """Region table + lazily read, verified instance/class masks for a set of images.

    Parameters are normally filled by :func:`load_regions` / :func:`load_labelme`;
    :meth:`from_masks` builds one from in-memory instance masks.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        images: Iterable[str],
        reader: MaskReader,
        sizes: Mapping[str, tuple[int, int]],
        source: str | Path,
        files: Mapping[str, tuple[str, str]] | None = None,
        *,
        cache_size: int = 8,
    ):
        self.source = str(source)
        self._images = [str(i) for i in images]
        self._reader = reader
        self._sizes = dict(sizes)
        self._files = dict(files or {})
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._checked: set[str] = set()
        self.table = self._normalise_table(table)
        self._listed: dict[str, dict[int, int]] = {}
        for i, r, c in self.table[["image", "region", "code"]].itertuples(index=False):
            self._listed.setdefault(i, {})[int(r)] = int(c)

    # ------------------------------------------------------------------ construction
    def _normalise_table(self, table: pd.DataFrame) -> pd.DataFrame:
        src = self.source
        missing = [c for c in REGION_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(src, f"region table lacks column(s) {missing}")
        t = table.copy()
        t["image"] = t["image"].astype(str)
        try:
            t["region"] = t["region"].astype(np.int64)
            t["code"] = t["code"].astype(np.int64)
        except (TypeError, ValueError) as e:
            raise DataError(src, f"region/code columns must be integers: {e}") from None
        if (t["region"] < 1).any():
            raise DataError(src, "region ids must be >= 1 (0 means 'no region')")
        names = []
        for k, (code, cat) in enumerate(zip(t["code"], t["category"], strict=True)):
            where = f"{src} (row {k + 1})"
            name = name_of(code, where)
            if code_of(str(cat), where) != code:
                raise DataError(
                    src, f"row {k + 1}: category {cat!r} does not match code {code} ({name!r})"
                )
            names.append(name)
        t["category"] = pd.Series(names, index=t.index, dtype=object).astype(str)
        dup = t.duplicated(["image", "region"])
        if dup.any():
            r = t.loc[dup].iloc[0]
            raise DataError(src, f"region {r['region']} of image {r['image']} is listed twice")
        unknown = sorted(set(t["image"]) - set(self._images))
        if unknown:
            raise DataError(src, f"regions listed for image(s) without masks: {_examples(unknown)}")
        order = {i: k for k, i in enumerate(self._images)}
        t["_k"] = t["image"].map(order)
        t = t.sort_values(["_k", "region"], kind="stable").drop(columns="_k")
        extra = [c for c in t.columns if c not in REGION_COLUMNS]
        return t[list(REGION_COLUMNS) + extra].reset_index(drop=True)

    @classmethod
    def from_masks(
        cls,
        table: pd.DataFrame,
        instance_masks: Mapping[str, np.ndarray],
        source: str | Path = "<memory>",
    ) -> RegionSet:
        """Build a set from in-memory instance masks; class masks follow from ``table``."""
        masks = {str(k): np.asarray(v) for k, v in instance_masks.items()}

        def reader(image_id: str) -> tuple[np.ndarray, None]:
            return masks[image_id].astype(np.int32), None

        sizes = {k: (int(v.shape[0]), int(v.shape[1])) for k, v in masks.items()}
        return cls(table, list(masks), reader, sizes, source)

    # ------------------------------------------------------------------ masks
    def _where(self, image_id: str) -> tuple[str, str]:
        return self._files.get(image_id, (f"{self.source}[{image_id}]",) * 2)

    def _masks(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image_id = str(image_id)
        if image_id not in self._sizes:
            raise KeyError(f"{self.source}: no region masks for image {image_id!r}")
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        inst, cls = self._reader(image_id)
        inst = np.asarray(inst, dtype=np.int32)
        obj_file, cls_file = self._where(image_id)
        listed = self._listed.get(image_id, {})
        expected = self._sizes[image_id]
        if inst.ndim != 2 or inst.shape != expected:
            raise DataError(
                obj_file, f"mask size {inst.shape} does not match the image size {expected}"
            )
        if inst.min(initial=0) < 0:
            raise DataError(obj_file, "negative region ids")
        if cls is None:
            present = np.flatnonzero(np.bincount(inst.ravel()))
            unlisted = sorted(set(present[present > 0].tolist()) - set(listed))
            if unlisted:
                raise DataError(
                    obj_file, f"region(s) {unlisted} in the mask are not listed in {self.source}"
                )
            lut = np.zeros(max(int(inst.max(initial=0)), max(listed, default=0)) + 1, np.int32)
            for r, c in listed.items():
                lut[r] = c
            cls = lut[inst]
            derived = True
        else:
            cls = np.asarray(cls, dtype=np.int32)
            derived = False
            if cls.shape != inst.shape:
                raise DataError(
                    cls_file,
                    f"class mask size {cls.shape} differs from the object mask {obj_file} "
                    f"size {inst.shape}",
                )
        if image_id not in self._checked:
            found = _analyse(inst, cls, obj_file, cls_file)
            unlisted = sorted(set(found) - set(listed))
            if unlisted:
                raise DataError(
                    obj_file, f"region(s) {unlisted} in the mask are not listed in {self.source}"
                )
            empty = sorted(set(listed) - set(found))
            if empty:
                raise DataError(
                    obj_file, f"region(s) {empty} listed in {self.source} have an empty mask"
                )
            if not derived:
                diff = [(r, listed[r], found[r]) for r in listed if listed[r] != found[r]]
                if diff:
                    raise DataError(
                        cls_file,
                        f"codes disagree with {self.source}: "
                        + ", ".join(f"region {r}: table {a}, mask {b}" for r, a, b in diff),
                    )
            self._checked.add(image_id)
        inst.setflags(write=False)
        cls.setflags(write=False)
        self._cache[image_id] = (inst, cls)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return inst, cls

    def instance_mask(self, image_id: str) -> np.ndarray:
        """``(H, W) int32`` region ids (0 = no region); read-only."""
        return self._masks(image_id)[0]

    def class_mask(self, image_id: str) -> np.ndarray:
        """``(H, W) int32`` category codes (0 = no region); read-only."""
        return self._masks(image_id)[1]

    def region_of(self, image_id: str, points: np.ndarray) -> np.ndarray:
        """Region id under each 0-based (x, y) point: ``mask[rint(y), rint(x)]`` (0 = none).

        Halves round to even (numpy ``rint``). Points outside the image or NaN raise
        :class:`DataError`.
        """
        inst = self.instance_mask(image_id)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if np.isnan(pts).any():
            raise DataError(self._where(image_id)[0], "region_of got NaN coordinates")
        r, c = pixel_indices(pts)
        h, w = inst.shape
        out = (r < 0) | (r >= h) | (c < 0) | (c >= w)
        if out.any():
            raise DataError(
                self._where(image_id)[0],
                f"{int(out.sum())} of {len(pts)} point(s) lie outside the {h}x{w} image "
                f"{image_id}, e.g. (x, y) = {tuple(pts[out][0])}",
            )
        return inst[r, c].astype(np.int64)

    # ------------------------------------------------------------------ access
    @property
    def images(self) -> list[str]:
        """Annotated image ids (an image may have zero regions)."""
        return list(self._images)

    def size(self, image_id: str) -> tuple[int, int]:
        return self._sizes[str(image_id)]

    def regions(self, image_id: str) -> pd.DataFrame:
        """Table rows of one image."""
        return self.table[self.table["image"] == str(image_id)].reset_index(drop=True)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._sizes

    def __repr__(self) -> str:
        return f"RegionSet({self.source!r}, {len(self._images)} images, {len(self.table)} regions)"

    def validate(self) -> int:
        """Read and verify every mask; returns the number of images checked."""
        for i in self._images:
            self._masks(i)
        return len(self._images)

    def subset(self, ids: Iterable[str]) -> RegionSet:
        """The regions of the given images (in the given order)."""
        ids = [str(i) for i in ids]
        for i in ids:
            if i not in self._sizes:
                raise KeyError(f"{self.source}: no region masks for image {i!r}")
        new = RegionSet(
            self.table[self.table["image"].isin(set(ids))],
            ids,
            self._reader,
            {i: self._sizes[i] for i in ids},
            self.source,
            {i: self._files[i] for i in ids if i in self._files},
            cache_size=self._cache_size,
        )
        new._checked = self._checked & set(ids)
        return new


# ---------------------------------------------------------------------- release format
def _check_dataset_size(
    dataset: FixationDataset | None, image_id: str, file: Path, size: tuple[int, int]
) -> None:
    if dataset is None:
        return
    if image_id not in dataset:
        raise DataError(file, f"image {image_id} is not in the dataset {dataset.source}")
    want = dataset[image_id].size
    if size != want:
        raise DataError(
            file,
            f"mask size (H, W) = {size} does not match the image size {want} "
            f"of {dataset[image_id].file}",
        )


def load_regions(
    root: str | Path,
    dataset: FixationDataset | None = None,
    *,
    verify: bool = False,
    cache_size: int = 8,
) -> RegionSet:
    """Read region annotations in the release format (module docstring).

    With ``regions.csv`` the table is read from it and each image's PNGs are verified against it
    when first read (all at once with ``verify=True``); without it the table is derived by
    scanning every PNG pair. With ``dataset``, every mask's header size must equal its stimulus
    size and every annotated image must be in the dataset; images are then ordered as in the
    dataset. PNG headers (not pixels) are read at construction.
    """
    root = Path(root)
    obj_dir, cls_dir = root / OBJECT_DIR, root / CLASS_DIR
    for d in (obj_dir, cls_dir):
        if not d.is_dir():
            raise DataError(d, "annotation folder does not exist")
    obj = {p.stem: p for p in obj_dir.glob("*.png")}
    cls = {p.stem: p for p in cls_dir.glob("*.png")}
    for a, b, d in ((obj, cls, cls_dir), (cls, obj, obj_dir)):
        lacking = sorted(set(a) - set(b))
        if lacking:
            raise DataError(d, f"missing PNG(s) for image(s) {_examples(lacking)}")
    if dataset is not None:
        pos = {i: k for k, i in enumerate(dataset.ids)}
        images = sorted(obj, key=lambda i: (pos.get(i, len(pos)), i))
    else:
        images = sorted(obj)

    sizes: dict[str, tuple[int, int]] = {}
    for i in images:
        so, sc = read_size(obj[i]), read_size(cls[i])
        if so != sc:
            raise DataError(cls[i], f"size {sc} differs from {obj[i]} size {so}")
        _check_dataset_size(dataset, i, obj[i], so)
        sizes[i] = so
    files = {i: (str(obj[i]), str(cls[i])) for i in images}

    def reader(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        return read_label_png(obj[image_id]), read_label_png(cls[image_id])

    csv = root / REGIONS_CSV
    if csv.is_file():
        try:
            table = pd.read_csv(csv, dtype={"image": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(csv, f"cannot parse CSV: {e}") from None
        rs = RegionSet(table, images, reader, sizes, csv, files, cache_size=cache_size)
        if verify:
            rs.validate()
        return rs

    rows = []
    for i in images:
        inst, cl = reader(i)
        for r, c in sorted(_analyse(inst, cl, files[i][0], files[i][1]).items()):
            rows.append((i, r, name_of(c, files[i][1]), c))
    table = pd.DataFrame(rows, columns=list(REGION_COLUMNS))
    rs = RegionSet(table, images, reader, sizes, root, files, cache_size=cache_size)
    rs._checked = set(images)  # the table was derived from the masks themselves
    return rs


def write_regions(regionset: RegionSet, out_dir: str | Path) -> Path:
    """Write ``regionset`` in the release format (both PNG folders + ``regions.csv``).

    Every table column is written (extra columns too). Region ids must be ≤ 255 (8-bit PNGs).
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    for i in regionset.images:
        inst, cls = regionset._masks(i)
        write_label_png(out / OBJECT_DIR / f"{i}.png", inst)
        write_label_png(out / CLASS_DIR / f"{i}.png", cls)
    out.mkdir(parents=True, exist_ok=True)
    regionset.table.to_csv(out / REGIONS_CSV, index=False)
    return out


# ---------------------------------------------------------------------- labelme
def _label_code(label: object, where: str) -> int:
    text = str(label).strip()
    if text.isdigit():
        name_of(int(text), where)  # raises for unknown codes
        return int(text)
    return code_of(text, where)


def load_labelme(
    directory: str | Path,
    dataset: FixationDataset | None = None,
    *,
    cache_size: int = 8,
) -> RegionSet:
    """Read labelme annotations ``<directory>/<id>.json`` into a :class:`RegionSet`.

    Each shape's ``label`` is a category name (case-insensitive, ``_`` for space) or code.
    Shapes sharing a non-null ``group_id`` form one region (their labels must agree); every
    other shape is its own region. Regions are numbered 1..n in order of first appearance.
    Supported ``shape_type``: polygon (≥ 3 points; the default when absent), rectangle (two
    corners), circle (centre, a point on the circle). Rasterisation uses PIL ``ImageDraw`` in
    pixel coordinates (pixel centres at integers, as labelme itself does), filling interior and
    outline. **Overlaps: a later shape overwrites earlier ones**; a region left with no pixels
    is an error when its mask is read. The image id is the JSON file stem; the size comes from
    ``imageHeight``/``imageWidth`` (checked against ``dataset`` when given).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "labelme folder does not exist")
    files = sorted(directory.glob("*.json"))
    if dataset is not None:
        pos = {i: k for k, i in enumerate(dataset.ids)}
        files.sort(key=lambda p: (pos.get(p.stem, len(pos)), p.stem))
    rows: list[tuple[str, int, str, int]] = []
    shapes_of: dict[str, list[tuple[int, str, list[tuple[float, float]]]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
            h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
            shapes = doc.get("shapes", [])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f, f"not a labelme JSON file with imageHeight/imageWidth: {e}"
            ) from None
        image_id = f.stem
        _check_dataset_size(dataset, image_id, f, (h, w))
        sizes[image_id] = (h, w)
        groups: dict[object, int] = {}
        codes: dict[int, int] = {}
        drawn = []
        for k, s in enumerate(shapes):
            where = f"{f} (shape {k})"
            try:
                label, pts = s["label"], [(float(x), float(y)) for x, y in s["points"]]
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(where, f"shape lacks label/points: {e}") from None
            kind = s.get("shape_type") or "polygon"
            need = {"polygon": 3, "rectangle": 2, "circle": 2}
            if kind not in need:
                raise DataError(
                    where, f"unsupported shape_type {kind!r} (polygon, rectangle, circle)"
                )
            if len(pts) < need[kind] or (kind != "polygon" and len(pts) != 2):
                raise DataError(where, f"{kind} has {len(pts)} point(s)")
            if not np.all(np.isfinite(pts)):
                raise DataError(where, "non-finite point coordinates")
            code = _label_code(label, where)
            gid = s.get("group_id")
            key = ("g", gid) if gid is not None else ("s", k)
            if key not in groups:
                groups[key] = len(groups) + 1
                codes[groups[key]] = code
            elif codes[groups[key]] != code:
                raise DataError(
                    where, f"group_id {gid} mixes categories {codes[groups[key]]} and {code}"
                )
            drawn.append((groups[key], kind, pts))
        if len(groups) > 255:
            raise DataError(f, f"{len(groups)} regions; at most 255 fit the 8-bit release format")
        rows += [(image_id, r, name_of(c), c) for r, c in codes.items()]
        shapes_of[image_id] = drawn

    def reader(image_id: str) -> tuple[np.ndarray, None]:
        h, w = sizes[image_id]
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for rid, kind, pts in shapes_of[image_id]:
            if kind == "polygon":
                draw.polygon(pts, fill=rid, outline=rid)
            elif kind == "rectangle":
                (x0, y0), (x1, y1) = pts
                draw.rectangle(
                    [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=rid, outline=rid
                )
            else:
                (cx, cy), (px, py) = pts
                rad = float(np.hypot(px - cx, py - cy))
                draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=rid, outline=rid)
        return np.asarray(canvas, dtype=np.int32), None

    table = pd.DataFrame(rows, columns=list(REGION_COLUMNS))
    names = {f.stem: (str(f), str(f)) for f in files}
    return RegionSet(table, list(sizes), reader, sizes, directory, names, cache_size=cache_size)
