"""Seeded train / held-out image splits, stored once as ``image, split`` CSV and then verified.

DESIGN: the split file (``annotations/splits/<dataset>.csv``) is created once and committed;
training reads it; analyses after training use held-out images only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from dissect.errors import DataError

__all__ = ["make_split", "save_split", "load_split", "ensure_split", "SPLITS"]

SPLITS = ("train", "heldout")


def make_split(ids: Iterable[str], n_heldout: int, seed: int) -> pd.DataFrame:
    """``DataFrame image, split`` with ``n_heldout`` images drawn as "heldout", the rest "train".

    The draw is ``numpy.random.default_rng(seed).permutation`` over the *sorted* ids, so it does
    not depend on the input order; rows keep the input order.
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("make_split: ids contain duplicates")
    n_heldout = int(n_heldout)
    if not 0 <= n_heldout <= len(ids):
        raise ValueError(f"make_split: n_heldout={n_heldout} must lie in 0..{len(ids)}")
    ordered = sorted(ids)
    perm = np.random.default_rng(int(seed)).permutation(len(ordered))
    held = {ordered[k] for k in perm[:n_heldout]}
    return pd.DataFrame({"image": ids, "split": ["heldout" if i in held else "train" for i in ids]})


def save_split(split: pd.DataFrame, path: str | Path) -> Path:
    """Write a split table as CSV (``image, split``), creating parent folders."""
    path = Path(path)
    _check(split, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split[["image", "split"]].to_csv(path, index=False)
    return path


def _check(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    if list(df.columns) != ["image", "split"]:
        raise DataError(path, f"split columns must be ['image', 'split'], got {list(df.columns)}")
    if df["image"].isna().any() or df["split"].isna().any():
        raise DataError(path, "split file has empty cells")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise DataError(path, f"unknown split value(s) {bad}; allowed {list(SPLITS)}")
    dup = df["image"][df["image"].duplicated()]
    if len(dup):
        raise DataError(path, f"image(s) listed twice: {sorted(set(dup))[:5]}")
    return df


def load_split(path: str | Path) -> pd.DataFrame:
    """Read and check a split CSV (image ids stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(path, f"cannot parse split CSV: {e}") from None
    return _check(df, path)


def ensure_split(path: str | Path, ids: Iterable[str], n_heldout: int, seed: int) -> pd.DataFrame:
    """Create the split file on first use; afterwards load it and verify it still fits.

    Verification: the file lists exactly ``ids`` (unknown images or missing images are a
    :class:`DataError`) and holds ``n_heldout`` held-out images. The seed cannot be checked from
    the file and is only used at creation.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    if not path.exists():
        split = make_split(ids, n_heldout, seed)
        save_split(split, path)
        return split
    split = load_split(path)
    listed, wanted = set(split["image"]), set(ids)
    unknown = sorted(listed - wanted)
    if unknown:
        raise DataError(path, f"split lists {len(unknown)} unknown image(s): {unknown[:5]}")
    missing = sorted(wanted - listed)
    if missing:
        raise DataError(path, f"split lacks {len(missing)} image(s) of the dataset: {missing[:5]}")
    n = int((split["split"] == "heldout").sum())
    if n != int(n_heldout):
        raise DataError(
            path,
            f"split holds {n} held-out images, but n_heldout={n_heldout} was asked; "
            "delete the file to re-create it deliberately",
        )
    return split
