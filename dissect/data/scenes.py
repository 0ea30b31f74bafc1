"""Scene labels: one scene category per image (He et al. 2019, §8 "task vs data").

The study fine-tunes the trunk of a saliency model for *scene recognition* on the same images and
compares the changes of the inner representation with those of saliency fine-tuning. This module
reads the scene labels it needs from a simple CSV::

    image,scene            (or: image,category — user label sets, e.g. SALICON-based)
    1001,closeup
    1002,indoor_public

Rules (every violation is a :class:`~dissect.errors.DataError` naming the file):

- image ids are read as strings (``"1001"``, never ``1001.0``), surrounding blanks stripped;
- every row needs a non-empty label; rows with an empty image id are an error too;
- an image listed twice with the same label counts once (logged); with conflicting labels it is
  an error;
- when ``dataset`` is given, every labelled image must be one of its ids.

Categories with fewer than ``min_images`` images (default :data:`DEFAULT_MIN_IMAGES` = 20) are
dropped, because a classifier cannot learn, and a held-out split cannot evaluate, a class with a
handful of examples (with a 20 % held-out split a 20-image class keeps ~4 test images). Dropping is
never silent: the dropped categories and their image counts are in :attr:`SceneLabels.dropped`
and are logged at WARNING level. Pass ``min_images=1`` to keep everything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dissect.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_MIN_IMAGES = 20
"""Default threshold: categories with fewer labelled images than this are dropped (reported)."""

LABEL_COLUMNS = ("scene", "category")
"""Accepted names of the label column, in order of preference."""


def _preview(items: Sequence[Any], n: int = 8) -> str:
    items = list(items)
    head = ", ".join(map(str, items[:n]))
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")


@dataclass
class SceneLabels:
    """Scene label of each kept image.

    Attributes:
        table: DataFrame ``image, scene`` (one row per kept image, file order).
        classes: kept scene categories, sorted; the class index of a scene is its position here.
        dropped: DataFrame ``scene, n_images`` of categories dropped by the ``min_images``
            threshold (empty when none).
        min_images: the threshold used.
        source: the file the labels came from.
        unlabelled: ids of ``dataset`` (when given to :func:`load_scenes`) without any label.
    """

    table: pd.DataFrame
    classes: list[str]
    dropped: pd.DataFrame
    min_images: int
    source: str
    unlabelled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = dict(zip(self.table["image"], self.table["scene"], strict=True))
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, image: object) -> bool:
        return str(image) in self._index

    @property
    def ids(self) -> list[str]:
        """Ids of the kept (labelled, not dropped) images, in file order."""
        return list(self.table["image"])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def counts(self, ids: Iterable[str] | None = None) -> pd.Series:
        """Images per class (all :attr:`classes`, zeros included), optionally of ``ids`` only."""
        scenes = self.table["scene"] if ids is None else pd.Series(self.scenes(ids))
        return scenes.value_counts().reindex(self.classes, fill_value=0).rename("n_images")

    def scene_of(self, image: str) -> str:
        """Scene of one image; an image without a kept label raises :class:`DataError`."""
        try:
            return self._index[str(image)]
        except KeyError:
            raise DataError(
                self.source, f"image {image!r} has no scene label (or its category was dropped)"
            ) from None

    def scenes(self, ids: Iterable[str]) -> list[str]:
        """Scenes of ``ids``; ids without a kept label raise one :class:`DataError` naming them."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise DataError(
                self.source,
                f"{len(missing)} image(s) have no scene label or belong to a dropped category: "
                f"{_preview(missing)}; restrict the ids first with SceneLabels.restrict(ids)",
            )
        return [self._index[i] for i in ids]

    def indices(self, ids: Iterable[str]) -> np.ndarray:
        """Class indices (int64, positions in :attr:`classes`) of ``ids``."""
        return np.array([self._class_index[s] for s in self.scenes(ids)], dtype=np.int64)

    def restrict(self, ids: Iterable[str]) -> list[str]:
        """The ids that have a kept label, in the given order; the excluded ones are logged."""
        ids = [str(i) for i in ids]
        kept = [i for i in ids if i in self._index]
        if len(kept) < len(ids):
            out = [i for i in ids if i not in self._index]
            log.warning(
                "%s: %d of %d images excluded (no scene label or dropped category): %s",
                self.source,
                len(out),
                len(ids),
                _preview(out),
            )
        return kept


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "scene label file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read as CSV ({e})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def load_scenes(
    csv_path: str | Path,
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
    dataset: Any | None = None,
) -> SceneLabels:
    """Read scene labels from ``csv_path`` (columns ``image, scene`` or ``image, category``).

    Args:
        csv_path: the CSV file.
        min_images: categories with fewer images are dropped and reported (see module doc).
        dataset: optional dataset with ``.ids``; every labelled image must be one of them, and its
            ids without a label are listed in :attr:`SceneLabels.unlabelled` (logged).

    Raises:
        DataError: missing file or columns, empty ids or labels, conflicting duplicates, unknown
            image ids, or no category left after thresholding.
    """
    if int(min_images) < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    path = Path(csv_path)
    df = _read_csv(path)
    if "image" not in df.columns:
        raise DataError(path, f"no 'image' column (columns: {list(df.columns)})")
    label_col = next((c for c in LABEL_COLUMNS if c in df.columns), None)
    if label_col is None:
        raise DataError(
            path, f"no label column: expected one of {LABEL_COLUMNS} (columns: {list(df.columns)})"
        )
    df = pd.DataFrame(
        {
            "image": df["image"].astype(str).str.strip(),
            "scene": df[label_col].astype(str).str.strip(),
        }
    )
    if df.empty:
        raise DataError(path, "no rows")

    no_id = np.flatnonzero(df["image"].eq("").to_numpy())
    if len(no_id):
        raise DataError(path, f"empty image id on data line(s) {_preview((no_id + 2).tolist())}")
    no_label = df.loc[df["scene"].eq(""), "image"].tolist()
    if no_label:
        raise DataError(path, f"{len(no_label)} image(s) with an empty label: {_preview(no_label)}")

    n_labels = df.groupby("image", sort=False)["scene"].nunique()
    conflicts = n_labels[n_labels > 1].index.tolist()
    if conflicts:
        detail = "; ".join(
            f"{i}: {sorted(set(df.loc[df['image'] == i, 'scene']))}" for i in conflicts[:5]
        )
        raise DataError(path, f"{len(conflicts)} image(s) listed with conflicting labels: {detail}")
    n_dup = int(df.duplicated().sum())
    if n_dup:
        log.info("%s: %d duplicate row(s) with identical labels counted once", path, n_dup)
        df = df.drop_duplicates().reset_index(drop=True)

    unlabelled: list[str] = []
    if dataset is not None:
        known = [str(i) for i in dataset.ids]
        known_set = set(known)
        unknown = [i for i in df["image"] if i not in known_set]
        if unknown:
            raise DataError(
                path, f"{len(unknown)} image id(s) not in the dataset: {_preview(unknown)}"
            )
        labelled = set(df["image"])
        unlabelled = [i for i in known if i not in labelled]
        if unlabelled:
            log.warning(
                "%s: %d dataset image(s) have no scene label: %s",
                path,
                len(unlabelled),
                _preview(unlabelled),
            )

    counts = df["scene"].value_counts()
    small = counts[counts < min_images].sort_index()
    dropped = pd.DataFrame({"scene": small.index.astype(str), "n_images": small.to_numpy(int)})
    if len(dropped):
        log.warning(
            "%s: %d scene categor%s with fewer than %d images dropped: %s",
            path,
            len(dropped),
            "y" if len(dropped) == 1 else "ies",
            min_images,
            ", ".join(
                f"{s} ({n})" for s, n in zip(dropped["scene"], dropped["n_images"], strict=True)
            ),
        )
    kept = df[~df["scene"].isin(set(small.index))].reset_index(drop=True)
    if kept.empty:
        raise DataError(
            path,
            f"no scene category has at least min_images={min_images} images ("
            + ", ".join(f"{s}: {n}" for s, n in counts.items()) + ")",
        )
    classes = sorted(kept["scene"].unique().tolist())
    if len(classes) < 2:
        log.warning("%s: only one scene category left (%s): nothing to classify", path, classes[0])
    return SceneLabels(
        table=kept,
        classes=classes,
        dropped=dropped,
        min_images=int(min_images),
        source=str(path),
        unlabelled=unlabelled,
    )
