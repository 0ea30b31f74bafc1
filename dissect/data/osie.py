"""Stimuli and fixations: the OSIE reader and the dataset object every reader builds.

OSIE (Xu et al., 2014) ships ``data/stimuli/<id>.jpg`` and ``data/eye/fixations.mat``, a MATLAB
struct array ``fixations(i).img`` / ``fixations(i).subjects(j).fix_x, fix_y, fix_duration`` with
1-based pixel coordinates. :func:`load_osie` converts them **once**, in :func:`_osie_to_zero_based`
(x = fix_x − 1, y = fix_y − 1); everything in this package afterwards uses 0-based pixel
coordinates, x to the right, y down, pixel (r, c) covering [c − ½, c + ½) × [r − ½, r + ½).

Policies (all documented, none silent):

- **bounds**: a fixation is inside the image when the pixel it falls on,
  ``(rint(y), rint(x))``, exists (``0 ≤ rint(x) ≤ W−1`` and ``0 ≤ rint(y) ≤ H−1``; numpy ``rint``
  rounds halves to even). This is the same rule :meth:`dissect.data.RegionSet.region_of` and
  :func:`dissect.data.fixation_map` use. ``out_of_bounds="error"`` (default) raises
  :class:`DataError` naming the images and counts; ``"clip"`` moves such points onto the nearest
  border pixel centre, ``"drop"`` removes them; both warn and record the count in
  :attr:`FixationDataset.report`. Dropping does not renumber ``order`` (it keeps the position in
  the recorded scanpath), so ``order == 0`` always means the starting fixation.
- **NaN or ±inf coordinates**: always an error naming the images (an infinite point has no
  pixel; it is never clipped or dropped like an ordinary out-of-bounds point).
- **images without fixations** (a stimulus with no fixation rows, e.g. all subjects empty in the
  .mat, or a JPEG in the stimuli folder that fixations.mat does not list): ``empty="error"``
  (default) raises; ``empty="skip"`` leaves the image out, warns and counts it in ``report``.
- **durations** are stored as float64 milliseconds; NaN is allowed (datasets without durations).
- **stimuli folder** (:func:`load_osie`): files whose suffix is an image suffix
  (:data:`~dissect.data.images.IMAGE_SUFFIXES`, any case: ``.jpg``, ``.JPG``, ``.jpeg``,
  ``.png``, …) are stimuli; a file that fixations.mat does not list is an image without fixations
  (the ``empty`` policy above: an error naming it by default). Two image files with the same
  stem (the image id) are an error. Other files (``.txt``, ``Thumbs.db``, hidden files) are not
  images and are ignored.
- **fixations.mat fields**: ``fix_x``, ``fix_y``, ``fix_duration`` of each subject must be
  numeric vectors (1×N or N×1) of one length; a matrix (e.g. a 2×N stack of x and y), a ragged
  or non-numeric cell, or different lengths raise :class:`DataError` naming the file, the
  image, the subject and the shapes.
- **content manifest**: :meth:`FixationDataset.manifest` hashes each stimulus file;
  :meth:`FixationDataset.verify_manifest` names every stimulus changed since.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.io

from dissect.data.images import IMAGE_SUFFIXES, read_rgb, read_size
from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices
from dissect.provenance import hash_files

__all__ = ["Stimulus", "FixationDataset", "load_osie", "FIXATION_COLUMNS"]

FIXATION_COLUMNS: tuple[str, ...] = ("image", "subject", "order", "x", "y", "duration")
OutOfBounds = Literal["error", "clip", "drop"]
EmptyPolicy = Literal["error", "skip"]


@dataclass(frozen=True)
class Stimulus:
    """One stimulus image: id (file stem), path, and size in pixels from the image header."""

    id: str
    file: Path
    height: int
    width: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "file", Path(self.file))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)


def _examples(items: Iterable, n: int = 5) -> str:
    items = list(items)
    more = f" … (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the points whose pixel ``(rint(y), rint(x))`` lies in an (H, W) image."""
    h, w = size
    r, c = pixel_indices(points)
    return (r >= 0) & (r < h) & (c >= 0) & (c < w)


class FixationDataset:
    """Stimuli plus a tidy fixation table; the common object of every fixation reader.

    Build it with :meth:`from_table` (or :func:`load_osie`). ``ids`` keep the stimulus order;
    the fixation table is sorted by (image in ``ids`` order, subject, order). ``report`` counts
    what the ``out_of_bounds`` / ``empty`` policies changed (empty dict: nothing).
    """

    def __init__(
        self,
        stimuli: Sequence[Stimulus],
        fixations: pd.DataFrame,
        source: str | Path = "",
        *,
        out_of_bounds: OutOfBounds = "error",
        empty: EmptyPolicy = "error",
        _report: dict[str, int] | None = None,
    ):
        self.source = str(source)
        self.report: dict[str, int] = dict(_report or {})
        stimuli, table = self._validate(list(stimuli), fixations, out_of_bounds, empty)
        self._stimuli: dict[str, Stimulus] = {s.id: s for s in stimuli}
        self._ids: list[str] = [s.id for s in stimuli]
        self._fix = table
        # rows of each image are contiguous: precompute the slice of each
        codes = pd.Categorical(table["image"], categories=self._ids).codes
        bounds = np.searchsorted(codes, np.arange(len(self._ids) + 1))
        self._slices = {i: (int(bounds[k]), int(bounds[k + 1])) for k, i in enumerate(self._ids)}
        self._xy = table[["x", "y"]].to_numpy(np.float64)
        self._first = table["order"].to_numpy() == 0

    @classmethod
    def from_table(
        cls,
        stimuli: Sequence[Stimulus],
        fixations: pd.DataFrame,
        source: str | Path = "",
        *,
        out_of_bounds: OutOfBounds = "error",
        empty: EmptyPolicy = "error",
    ) -> FixationDataset:
        """Validate and build a dataset from stimuli and a fixation table.

        ``fixations`` must have exactly the columns ``image, subject, order, x, y, duration``
        (0-based pixel coordinates). ``source`` names the origin in error messages. See the
        module docstring for the ``out_of_bounds`` and ``empty`` policies.
        """
        return cls(stimuli, fixations, source, out_of_bounds=out_of_bounds, empty=empty)

    # ------------------------------------------------------------------ validation
    def _validate(
        self,
        stimuli: list[Stimulus],
        fix: pd.DataFrame,
        out_of_bounds: OutOfBounds,
        empty: EmptyPolicy,
    ) -> tuple[list[Stimulus], pd.DataFrame]:
        src = self.source or None
        if out_of_bounds not in ("error", "clip", "drop"):
            raise ValueError(
                f"out_of_bounds must be 'error', 'clip' or 'drop', not {out_of_bounds!r}"
            )
        if empty not in ("error", "skip"):
            raise ValueError(f"empty must be 'error' or 'skip', not {empty!r}")
        cols = list(fix.columns)
        if sorted(cols) != sorted(FIXATION_COLUMNS):
            raise DataError(
                src, f"fixation table columns {cols} must be exactly {list(FIXATION_COLUMNS)}"
            )
        ids = [s.id for s in stimuli]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(src, f"duplicate stimulus ids: {_examples(dup)}")
        try:
            table = pd.DataFrame(
                {
                    "image": fix["image"].astype(str).to_numpy(object),
                    "subject": fix["subject"].to_numpy(np.int64),
                    "order": fix["order"].to_numpy(np.int64),
                    "x": fix["x"].to_numpy(np.float64),
                    "y": fix["y"].to_numpy(np.float64),
                    "duration": fix["duration"].to_numpy(np.float64),
                }
            )
        except (TypeError, ValueError) as e:
            raise DataError(src, f"fixation table has non-numeric values: {e}") from None
        table["image"] = table["image"].astype(str)

        unknown = sorted(set(table["image"].unique()) - set(ids))
        if unknown:
            raise DataError(
                src, f"{len(unknown)} fixated image(s) have no stimulus: {_examples(unknown)}"
            )
        xy = table[["x", "y"]].to_numpy()
        nonfinite = ~np.isfinite(xy).all(axis=1)
        if nonfinite.any():
            per = table.loc[nonfinite, "image"].value_counts()
            n_nan = int(np.isnan(xy).any(axis=1).sum())
            n_inf = int(np.isinf(xy).any(axis=1).sum())
            kinds = " and ".join(
                k for k, n in (("NaN", n_nan), ("infinite", n_inf)) if n
            )
            raise DataError(
                src,
                f"{int(nonfinite.sum())} fixation(s) have {kinds} coordinates, in image(s) "
                + _examples(f"{i} ({n})" for i, n in per.items())
                + "; a non-finite point has no pixel and is never clipped or dropped",
            )
        if (table["order"] < 0).any():
            raise DataError(src, "fixation 'order' must be >= 0")
        dup = table.duplicated(["image", "subject", "order"])
        if dup.any():
            raise DataError(
                src,
                f"{int(dup.sum())} duplicate (image, subject, order) rows, e.g. image "
                f"{table.loc[dup, 'image'].iloc[0]}",
            )

        # bounds: the pixel (rint(y), rint(x)) must exist
        sizes = np.array([s.size for s in stimuli], dtype=np.int64).reshape(-1, 2)
        hw = sizes[pd.Categorical(table["image"], categories=ids).codes]
        xy = table[["x", "y"]].to_numpy()
        r, c = pixel_indices(xy)
        bad = (r < 0) | (r >= hw[:, 0]) | (c < 0) | (c >= hw[:, 1])
        if bad.any():
            per = table.loc[bad, "image"].value_counts()
            where = _examples(f"{i} ({n})" for i, n in per.items())
            n_bad = int(bad.sum())
            if out_of_bounds == "error":
                raise DataError(
                    src,
                    f"{n_bad} fixation(s) lie outside their image, in image(s) {where}; "
                    "pass out_of_bounds='clip' or 'drop' to accept them",
                )
            if out_of_bounds == "clip":
                table.loc[bad, "x"] = np.clip(xy[bad, 0], 0, hw[bad, 1] - 1)
                table.loc[bad, "y"] = np.clip(xy[bad, 1], 0, hw[bad, 0] - 1)
                self.report["clipped_out_of_bounds"] = (
                    self.report.get("clipped_out_of_bounds", 0) + n_bad
                )
                verb = "clipped to the image border"
            else:
                table = table.loc[~bad].reset_index(drop=True)
                self.report["dropped_out_of_bounds"] = (
                    self.report.get("dropped_out_of_bounds", 0) + n_bad
                )
                verb = "dropped"
            warnings.warn(
                f"{self.source}: {n_bad} out-of-bounds fixation(s) {verb}, in image(s) {where}",
                stacklevel=3,
            )

        # images without fixations
        present = set(table["image"].unique())
        missing = [i for i in ids if i not in present]
        if missing:
            if empty == "error":
                raise DataError(
                    src,
                    f"{len(missing)} image(s) have no fixations: {_examples(missing)}; "
                    "pass empty='skip' to leave them out",
                )
            stimuli = [s for s in stimuli if s.id in present]
            ids = [s.id for s in stimuli]
            self.report["skipped_empty_images"] = self.report.get("skipped_empty_images", 0) + len(
                missing
            )
            warnings.warn(
                f"{self.source}: {len(missing)} image(s) without fixations skipped: "
                f"{_examples(missing)}",
                stacklevel=3,
            )

        table["_k"] = pd.Categorical(table["image"], categories=ids).codes
        table = (
            table.sort_values(["_k", "subject", "order"], kind="stable")
            .drop(columns="_k")
            .reset_index(drop=True)
        )
        return stimuli, table[list(FIXATION_COLUMNS)]

    # ------------------------------------------------------------------ access
    @property
    def ids(self) -> list[str]:
        """Image ids in dataset order."""
        return list(self._ids)

    @property
    def stimuli(self) -> list[Stimulus]:
        return [self._stimuli[i] for i in self._ids]

    @property
    def fixations(self) -> pd.DataFrame:
        """Tidy table ``image, subject, order, x, y, duration`` (0-based pixels; do not mutate)."""
        return self._fix

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Stimulus]:
        return (self._stimuli[i] for i in self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._stimuli

    def __getitem__(self, image_id: str) -> Stimulus:
        try:
            return self._stimuli[str(image_id)]
        except KeyError:
            raise KeyError(f"{self.source}: no image {image_id!r} in this dataset") from None

    def __repr__(self) -> str:
        return (
            f"FixationDataset({self.source!r}, {len(self)} images, "
            f"{self._fix['subject'].nunique()} subjects, {len(self._fix)} fixations)"
        )

    def points(self, image_id: str, drop_first: bool = False) -> np.ndarray:
        """``(N, 2)`` float64 (x, y) fixations of one image, all subjects.

        ``drop_first=True`` removes each subject's starting fixation (``order == 0``).
        """
        self[image_id]
        a, b = self._slices[str(image_id)]
        xy = self._xy[a:b]
        if drop_first:
            xy = xy[~self._first[a:b]]
        return xy.copy()

    def fixations_of(self, image_id: str, drop_first: bool = False) -> pd.DataFrame:
        """Rows of :attr:`fixations` for one image (a copy)."""
        self[image_id]
        a, b = self._slices[str(image_id)]
        rows = self._fix.iloc[a:b]
        if drop_first:
            rows = rows[rows["order"] != 0]
        return rows.reset_index(drop=True)

    def load_image(self, image_id: str) -> np.ndarray:
        """Decode the stimulus to ``uint8 (H, W, 3)`` RGB; corrupt/truncated files raise."""
        s = self[image_id]
        img = read_rgb(s.file)
        if img.shape[:2] != s.size:
            raise DataError(
                s.file, f"decoded size {img.shape[:2]} differs from the header size {s.size}"
            )
        return img

    def validate(self, full: bool = False) -> int:
        """Check every stimulus file: header readable and size unchanged, and with
        ``full=True`` the pixels fully decodable. Raises one :class:`DataError` listing the
        failures; returns the number of images checked."""
        problems: list[str] = []
        for s in self:
            try:
                if full:
                    self.load_image(s.id)
                else:
                    size = read_size(s.file)
                    if size != s.size:
                        raise DataError(s.file, f"size {size} differs from the recorded {s.size}")
            except DataError as e:
                problems.append(str(e))
        if problems:
            raise DataError(
                self.source or None,
                f"{len(problems)} bad image file(s): "
                + "; ".join(problems[:5])
                + (" …" if len(problems) > 5 else ""),
            )
        return len(self)

    def manifest(self) -> dict[str, str]:
        """Content hash of every stimulus file, ``{image id: hash}`` in dataset order.

        The hash is :func:`dissect.provenance.hash_files` of the one file (SHA-256 over its base
        name and bytes, 16 hex digits): the value the activation store records per image
        (:func:`dissect.cache.image_fingerprints`), so the two can be compared directly.
        """
        out: dict[str, str] = {}
        for s in self:
            try:
                out[s.id] = hash_files([s.file])
            except OSError as e:
                raise DataError(s.file, f"cannot read stimulus {s.id}: {e}") from None
        return out

    def verify_manifest(self, manifest: Mapping[str, str]) -> int:
        """Check every stimulus file against a :meth:`manifest` taken earlier.

        Raises one :class:`DataError` naming every image whose file changed, is gone or is not
        in ``manifest``; returns the number of images checked. Ids in ``manifest`` that this
        dataset lacks are ignored, so a :meth:`subset` verifies against the full manifest.
        """
        changed: list[str] = []
        gone: list[str] = []
        unrecorded: list[str] = []
        for s in self:
            if s.id not in manifest:
                unrecorded.append(s.id)
                continue
            try:
                now = hash_files([s.file])
            except OSError:
                gone.append(f"{s.id} ({s.file})")
                continue
            if now != manifest[s.id]:
                changed.append(f"{s.id} ({s.file})")
        parts = [
            f"{what}: {', '.join(items)}"
            for what, items in (
                ("changed since the manifest", changed),
                ("unreadable or missing", gone),
                ("not in the manifest", unrecorded),
            )
            if items
        ]
        if parts:
            n = len(changed) + len(gone) + len(unrecorded)
            raise DataError(
                self.source or None,
                f"{n} stimulus file(s) do not match the manifest; " + "; ".join(parts),
            )
        return len(self)

    def subset(self, ids: Iterable[str]) -> FixationDataset:
        """A dataset of the given images (in the given order) with their fixations."""
        ids = [str(i) for i in ids]
        for i in ids:
            self[i]
        if len(set(ids)) != len(ids):
            raise ValueError("subset ids contain duplicates")
        keep = set(ids)
        fix = self._fix[self._fix["image"].isin(keep)]
        return FixationDataset(
            [self._stimuli[i] for i in ids], fix, self.source, _report=self.report
        )


# ---------------------------------------------------------------------- OSIE
def _as_list(value: object) -> list:
    """A MATLAB struct array after ``squeeze_me``: 0 → [], 1 → scalar struct, n → ndarray."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _shape(value: object) -> str:
    """Shape of a loaded MATLAB value for messages ("(2, 12)", "ragged cell of 3", "str")."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return f"cell/object array {value.shape}"
        return str(value.shape)
    return type(value).__name__


def _vector(value: object, where: str, field: str) -> np.ndarray:
    """A numeric MATLAB vector after ``squeeze_me`` (scalar for 1 element, (0,0) for empty).

    ``where`` ("<file>", image, subject) names the struct in the :class:`DataError` raised for a
    matrix (after squeezing), a ragged/non-numeric cell, a string or complex values.
    """
    if isinstance(value, np.ndarray) and value.dtype != object and value.ndim >= 2:
        if value.size == 0:
            return np.empty(0, dtype=np.float64)
        hint = ""
        if 2 in value.shape:
            hint = (
                " (a 2×N or N×2 matrix looks like stacked (x, y) coordinates: OSIE stores x in "
                "fix_x and y in fix_y, each a 1×N vector)"
            )
        raise DataError(
            None,
            f"{where}: {field} has shape {value.shape}; expected a vector of N fixations "
            f"(1×N or N×1){hint}",
        )
    if isinstance(value, str | bytes) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "USO"
    ):
        kind = (
            "a ragged or non-numeric cell"
            if isinstance(value, np.ndarray) and value.dtype == object
            else "text"
        )
        raise DataError(
            None, f"{where}: {field} is {kind} ({_shape(value)}); expected a numeric vector"
        )
    if np.iscomplexobj(value):
        raise DataError(None, f"{where}: {field} has complex values; expected real numbers")
    try:
        return np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    except (TypeError, ValueError) as e:
        raise DataError(
            None, f"{where}: {field} is not a numeric vector ({_shape(value)}: {e})"
        ) from None


def _image_files(stim_dir: Path) -> dict[str, list[Path]]:
    """Image files of the stimuli folder by id (stem); suffixes compared case-insensitively."""
    out: dict[str, list[Path]] = {}
    for p in sorted(stim_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
            out.setdefault(p.stem, []).append(p)
    return out


def _osie_to_zero_based(fix_x: np.ndarray, fix_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """THE one place MATLAB's 1-based pixel coordinates become 0-based: x − 1, y − 1."""
    return fix_x - 1.0, fix_y - 1.0


def load_osie(
    root: str | Path,
    *,
    out_of_bounds: OutOfBounds = "error",
    empty: EmptyPolicy = "error",
    stimuli_dir: str = "data/stimuli",
    fixations_file: str = "data/eye/fixations.mat",
) -> FixationDataset:
    """Read OSIE: ``<root>/data/stimuli/*.jpg`` and ``<root>/data/eye/fixations.mat``.

    Image ids are the file stems ("1001"); sizes come from the JPEG headers; subjects are
    numbered 0..14 in fixations.mat order; ``order`` is the 0-based position in each subject's
    scanpath (0 = the central starting fixation). Coordinates are converted to 0-based once
    (:func:`_osie_to_zero_based`). Real data: 700 images, 15 subjects, 98,321 fixations.

    The stimuli folder is scanned for every image suffix in any case (``.jpg``, ``.JPG``,
    ``.jpeg``, ``.png``, …): an image that fixations.mat does not list falls under ``empty``
    (an error naming it by default), two files with one stem are an error, and a listed file
    missing only by letter case is named with the file that is there. Headers with an EXIF
    rotation are refused here already (:mod:`dissect.data.images`); malformed fix_x / fix_y /
    fix_duration fields raise a :class:`DataError` naming the image and subject.
    """
    root = Path(root)
    mat_path = root / fixations_file
    stim_dir = root / stimuli_dir
    if not mat_path.is_file():
        raise DataError(mat_path, "fixations file does not exist")
    if not stim_dir.is_dir():
        raise DataError(stim_dir, "stimuli folder does not exist")
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for corrupt files
        raise DataError(mat_path, f"cannot read MATLAB file: {e}") from None
    if "fixations" not in mat:
        raise DataError(mat_path, "has no variable 'fixations'")

    on_disk = _image_files(stim_dir)
    twins = {i: ps for i, ps in on_disk.items() if len(ps) > 1}
    if twins:
        raise DataError(
            stim_dir,
            f"{len(twins)} image id(s) have several files, so the id is ambiguous: "
            + _examples(f"{i} ({', '.join(p.name for p in ps)})" for i, ps in twins.items()),
        )
    stimuli: list[Stimulus] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in FIXATION_COLUMNS}
    seen: set[str] = set()
    for i, entry in enumerate(_as_list(mat["fixations"])):
        try:
            img_name = str(entry.img)
            subjects = _as_list(entry.subjects)
        except AttributeError:
            raise DataError(mat_path, f"fixations({i + 1}) lacks the fields img/subjects") from None
        file = stim_dir / img_name
        image_id = Path(img_name).stem
        if image_id in seen:
            raise DataError(mat_path, f"image {img_name} is listed twice")
        seen.add(image_id)
        if not file.is_file():
            near = [p.name for p in on_disk.get(image_id, []) if p.name.lower() == img_name.lower()]
            hint = f" (the folder has {near[0]}: file names are case-sensitive)" if near else ""
            raise DataError(
                file, f"image listed in {mat_path} (fixations({i + 1})) does not exist{hint}"
            )
        h, w = read_size(file)
        stimuli.append(Stimulus(image_id, file, h, w))
        for j, sub in enumerate(subjects):
            where = f"image {img_name} (fixations({i + 1})), subject {j + 1}"
            try:
                raw = (sub.fix_x, sub.fix_y, sub.fix_duration)
            except AttributeError:
                raise DataError(
                    mat_path, f"fixations({i + 1}).subjects({j + 1}) lacks fix_x/fix_y/fix_duration"
                ) from None
            try:
                fx, fy, fd = (
                    _vector(v, where, f)
                    for v, f in zip(raw, ("fix_x", "fix_y", "fix_duration"), strict=True)
                )
            except DataError as e:
                raise DataError(mat_path, e.problem) from None
            if not (fx.size == fy.size == fd.size):
                raise DataError(
                    mat_path,
                    f"image {img_name} subject {j + 1}: fix_x, fix_y, fix_duration have "
                    f"different lengths {fx.size}, {fy.size}, {fd.size}",
                )
            n = fx.size
            x, y = _osie_to_zero_based(fx, fy)
            cols["image"].append(np.full(n, image_id, dtype=object))
            cols["subject"].append(np.full(n, j, dtype=np.int64))
            cols["order"].append(np.arange(n, dtype=np.int64))
            cols["x"].append(x)
            cols["y"].append(y)
            cols["duration"].append(fd)

    # image files that fixations.mat does not list are images without fixations (the `empty`
    # policy: an error naming them by default); a listed id with a second file of another name
    # was refused above
    extra = sorted(ps[0] for i, ps in on_disk.items() if i not in seen)
    for p in extra:
        h, w = read_size(p)
        stimuli.append(Stimulus(p.stem, p, h, w))

    table = pd.DataFrame({k: (np.concatenate(v) if v else np.empty(0)) for k, v in cols.items()})
    return FixationDataset(stimuli, table, mat_path, out_of_bounds=out_of_bounds, empty=empty)
