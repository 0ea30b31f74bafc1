"""Seeded splits: deterministic, persisted once, verified afterwards."""

from __future__ import annotations

import pandas as pd
import pytest

from dissect.data import ensure_split, load_split, make_split
from dissect.data.splits import save_split
from dissect.errors import DataError

IDS = [f"{1000 + k}" for k in range(20)]


def test_make_split_deterministic_and_order_free():
    a = make_split(IDS, 5, seed=3)
    assert list(a.columns) == ["image", "split"] and a["image"].tolist() == IDS
    assert (a["split"] == "heldout").sum() == 5 and (a["split"] == "train").sum() == 15
    b = make_split(list(reversed(IDS)), 5, seed=3)
    held = set(a.loc[a.split == "heldout", "image"])
    assert held == set(b.loc[b.split == "heldout", "image"])
    c = make_split(IDS, 5, seed=4)
    assert held != set(c.loc[c.split == "heldout", "image"])
    with pytest.raises(ValueError):
        make_split(IDS, 21, seed=0)
    with pytest.raises(ValueError):
        make_split(IDS + IDS[:1], 2, seed=0)


def test_save_load_round_trip_keeps_string_ids(tmp_path):
    ids = ["0007", "0100", "12"]
    split = make_split(ids, 1, seed=0)
    path = save_split(split, tmp_path / "sub" / "s.csv")
    back = load_split(path)
    pd.testing.assert_frame_equal(back, split)


def test_ensure_split_creates_once_then_verifies(tmp_path):
    path = tmp_path / "osie.csv"
    first = ensure_split(path, IDS, 5, seed=1)
    assert path.is_file()
    # a later call with another seed reads the file instead of re-drawing
    again = ensure_split(path, IDS, 5, seed=99)
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(DataError, match=r"osie\.csv.*lacks 1 image"):
        ensure_split(path, IDS + ["9999"], 5, seed=1)
    with pytest.raises(DataError, match=r"osie\.csv.*2 unknown image\(s\)"):
        ensure_split(path, IDS[2:], 5, seed=1)
    with pytest.raises(DataError, match="held-out"):
        ensure_split(path, IDS, 6, seed=1)


def test_load_split_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("image,split\n1,train\n2,test\n")
    with pytest.raises(DataError, match=r"bad\.csv.*'test'"):
        load_split(p)
    p.write_text("image,split\n1,train\n1,heldout\n")
    with pytest.raises(DataError, match="twice"):
        load_split(p)
    p.write_text("id,split\n1,train\n")
    with pytest.raises(DataError, match="columns"):
        load_split(p)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "none.csv")
