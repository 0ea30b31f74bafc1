"""SALICON reader (Jiang, Huang, Duan & Zhao, "SALICON: Saliency in Context", CVPR 2015).

SALICON (LSUN 2015 / 2017 releases, 10,000 train + 5,000 val MS-COCO images, 640×480) records
mouse-contingent "fixations". Two documented formats are read into the package's
:class:`~dissect.data.osie.FixationDataset`; SALICON itself is not redistributed here.

**Per-image MATLAB files** (``fixations/<split>/<image>.mat``, the 2015 and 2017 challenge
releases). Variables: ``image`` (the image name, e.g. ``COCO_train2014_000000000009``),
``resolution`` (``[height, width]``, ``[480, 640]``) and ``gaze``, a struct array with one entry
per observer: ``location`` (raw mouse samples, ``n × 2``), ``timestamp`` (``n``, ms) and
``fixations`` (the fixations detected from them, ``m × 2``). Coordinates are MATLAB 1-based
pixel indices stored as **(x, y) = (column, row)** — the order used by the widely used readers
of this format (e.g. pysaliency's ``get_SALICON`` takes column 0 as x) and consistent with
``resolution`` being (height, width).

**COCO-style JSON** (``fixations_<split>2014.json``, the format of the SALICON API): ``images``
(``id``, ``file_name``, ``width``, ``height``) and ``annotations`` (``image_id``, ``worker_id``,
``fixations``). The SALICON API builds its fixation map as ``for y, x in fixations:
map[y-1][x-1] = 1``, i.e. each JSON point is **[row, col]**, 1-based.

Both are converted to 0-based (x, y) **once**, in :func:`_mat_to_zero_based` and
:func:`_json_to_zero_based`. SALICON has no fixation durations (``duration`` is NaN). Observers
are numbered per image (the .mat files do not identify workers across images; the JSON
``worker_id`` is kept as ``subject``). ``order`` is the position in the observer's sequence; note
that SALICON's first fixation is *not* an imposed central starting point as in OSIE, so train
with ``drop_first=False`` on SALICON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.io

from dissect.data.images import read_size
from dissect.data.osie import (
    FIXATION_COLUMNS,
    EmptyPolicy,
    FixationDataset,
    OutOfBounds,
    Stimulus,
)
from dissect.errors import DataError

__all__ = ["load_salicon", "read_salicon_mat", "read_salicon_json"]

Kind = Literal["fixations", "mouse"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _mat_to_zero_based(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """THE conversion of SALICON .mat points, 1-based (x, y) = (col, row): x − 1, y − 1."""
    return xy[:, 0] - 1.0, xy[:, 1] - 1.0


def _json_to_zero_based(rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """THE conversion of SALICON JSON points, 1-based [row, col]: x = col − 1, y = row − 1."""
    return rc[:, 1] - 1.0, rc[:, 0] - 1.0


def _points(value: Any, source: Path, what: str) -> np.ndarray:
    """An ``n × 2`` numeric MATLAB/JSON array (after ``squeeze_me``: 1 point → (2,), 0 → (0,))."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(source, f"{what} is not numeric") from None
    if a.size == 0:
        return np.empty((0, 2))
    if a.ndim == 1 and a.size == 2:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != 2:
        raise DataError(source, f"{what} has shape {a.shape}, expected (n, 2)")
    if not np.isfinite(a).all():
        raise DataError(source, f"{what} contains NaN/inf")
    return a


def read_salicon_mat(
    path: str | Path, kind: Kind = "fixations"
) -> tuple[str, tuple[int, int], pd.DataFrame]:
    """Read one SALICON .mat file → (image name, (height, width), fixation rows, 0-based).

    ``kind="fixations"`` reads ``gaze(j).fixations``; ``"mouse"`` the raw ``gaze(j).location``
    samples (``order`` = sample index)."""
    path = Path(path)
    if kind not in ("fixations", "mouse"):
        raise ValueError(f"kind must be 'fixations' or 'mouse', not {kind!r}")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except Exception as e:  # scipy raises several types for corrupt files
        raise DataError(path, f"cannot read MATLAB file: {e}") from None
    for var in ("image", "resolution", "gaze"):
        if var not in mat:
            raise DataError(path, f"has no variable {var!r} (not a SALICON fixation file?)")
    name = str(mat["image"]).strip()
    res = np.atleast_1d(np.asarray(mat["resolution"])).ravel()
    if res.size != 2 or not (res > 0).all():
        raise DataError(path, f"resolution {res.tolist()} is not [height, width]")
    size = (int(res[0]), int(res[1]))
    gaze = mat["gaze"]
    entries = list(gaze.ravel()) if isinstance(gaze, np.ndarray) else [gaze]
    field = "fixations" if kind == "fixations" else "location"
    parts = []
    for j, g in enumerate(entries):
        if not hasattr(g, field):
            raise DataError(path, f"gaze({j + 1}) has no field {field!r}")
        xy = _points(getattr(g, field), path, f"gaze({j + 1}).{field}")
        x, y = _mat_to_zero_based(xy)
        parts.append(_fixation_frame(name, j, np.arange(len(x)), x, y))
    return name, size, _concat(parts)


def read_salicon_json(
    path: str | Path,
) -> tuple[dict[str, tuple[int, int]], dict[str, str], pd.DataFrame]:
    """Read a SALICON COCO-style JSON → ({image: (H, W)}, {image: file_name}, fixations)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read JSON: {e}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(path, "expected a COCO-style object with 'images' and 'annotations'")
    by_id: dict[Any, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    files: dict[str, str] = {}
    for k, im in enumerate(data["images"]):
        try:
            fname = str(im["file_name"])
            name = Path(fname).stem
            by_id[im["id"]] = name
            sizes[name] = (int(im["height"]), int(im["width"]))
            files[name] = fname
        except (KeyError, TypeError, ValueError):
            raise DataError(path, f"images[{k}] lacks id/file_name/width/height") from None
    parts = []
    seen: dict[tuple[str, int], int] = {}
    for k, ann in enumerate(data["annotations"]):
        try:
            name = by_id[ann["image_id"]]
            worker = int(ann["worker_id"])
            pts = ann["fixations"]
        except KeyError as e:
            raise DataError(path, f"annotations[{k}]: missing or unknown {e}") from None
        rc = _points(pts, path, f"annotations[{k}].fixations")
        x, y = _json_to_zero_based(rc)
        first = seen.get((name, worker), 0)  # a worker's later annotations continue its order
        seen[(name, worker)] = first + len(x)
        parts.append(_fixation_frame(name, worker, first + np.arange(len(x)), x, y))
    return sizes, files, _concat(parts)


def _fixation_frame(image: str, subject: int, order: np.ndarray, x: np.ndarray,
                    y: np.ndarray) -> pd.DataFrame:
    """One observer's fixations on one image (SALICON has no durations: NaN)."""
    return pd.DataFrame({"image": image, "subject": subject, "order": order, "x": x, "y": y,
                         "duration": np.nan})


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    table = (pd.concat(parts, ignore_index=True) if parts
             else pd.DataFrame(columns=list(FIXATION_COLUMNS)))
    return table[list(FIXATION_COLUMNS)]


def _find_image(images: Path, name: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        f = images / f"{name}{ext}"
        if f.is_file():
            return f
    return None


def load_salicon(
    root: str | Path | None = None,
    split: str = "train",
    *,
    fixations: str | Path | None = None,
    images: str | Path | None = None,
    kind: Kind = "fixations",
    ids: Sequence[str] | None = None,
    check_images: bool = True,
    out_of_bounds: OutOfBounds = "error",
    empty: EmptyPolicy = "error",
) -> FixationDataset:
    """Read SALICON into a :class:`FixationDataset` (0-based (x, y), see the module docstring).

    Default layout under ``root`` (the challenge downloads unzipped): ``fixations/<split>/*.mat``
    (or ``fixations_<split>2014.json``) and ``images/<split>/*.jpg`` (or ``images/*.jpg``).
    ``fixations`` / ``images`` override the two locations (a .mat folder or a .json file).
    ``kind`` selects detected fixations or raw mouse samples (.mat only). ``ids`` restricts to
    some images. With ``check_images`` each stimulus file must exist and its header size must
    equal the recorded resolution (else :class:`DataError`); without it only the recorded size
    is used. ``out_of_bounds`` and ``empty`` as in :class:`FixationDataset`.
    """
    root_p = Path(root) if root is not None else None
    if fixations is None:
        if root_p is None:
            raise ValueError("give root or fixations=")
        cands = [
            root_p / "fixations" / split,
            root_p / f"fixations_{split}2014.json",
            root_p / "fixations" / f"fixations_{split}2014.json",
        ]
        fixations = next((c for c in cands if c.exists()), cands[0])
    fix_path = Path(fixations)
    if images is None:
        if root_p is None:
            raise ValueError("give root or images=")
        images = root_p / "images" / split
        if not images.is_dir():
            images = root_p / "images"
    img_dir = Path(images)
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder does not exist")
    wanted = None if ids is None else {str(i) for i in ids}

    sizes: dict[str, tuple[int, int]] = {}
    tables: list[pd.DataFrame] = []
    if fix_path.is_dir():
        files = sorted(fix_path.glob("*.mat"))
        if not files:
            raise DataError(fix_path, "folder has no .mat fixation files")
        for f in files:
            if wanted is not None and f.stem not in wanted:
                continue
            name, size, table = read_salicon_mat(f, kind)
            if name != f.stem:
                raise DataError(f, f"file name and its 'image' variable ({name!r}) differ")
            if name in sizes:
                raise DataError(f, f"image {name} appears twice")
            sizes[name] = size
            tables.append(table)
    elif fix_path.suffix.lower() == ".json":
        if kind != "fixations":
            raise DataError(fix_path, "the JSON format holds fixations only (kind='fixations')")
        sizes, _, table = read_salicon_json(fix_path)
        if wanted is not None:
            sizes = {k: v for k, v in sizes.items() if k in wanted}
            table = table[table["image"].isin(wanted)]
        tables.append(table)
    else:
        raise DataError(fix_path, "expected a folder of SALICON .mat files or a .json file")
    if wanted is not None and (missing := sorted(wanted - set(sizes))):
        raise DataError(fix_path, f"{len(missing)} requested image(s) not found: {missing[:5]}")

    stimuli = []
    for name, (h, w) in sizes.items():
        f = _find_image(img_dir, name)
        if check_images:
            if f is None:
                raise DataError(img_dir / f"{name}.jpg", "image file does not exist")
            hw = read_size(f)
            if hw != (h, w):
                raise DataError(f, f"image size {hw} differs from the recorded {(h, w)}")
        stimuli.append(Stimulus(name, f if f is not None else img_dir / f"{name}.jpg", h, w))
    table = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=list(FIXATION_COLUMNS))
    )
    return FixationDataset.from_table(
        stimuli, table, fix_path, out_of_bounds=out_of_bounds, empty=empty
    )
