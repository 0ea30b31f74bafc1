"""Scene label reader: columns, validation errors, thresholding, real file."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dissect.data.scenes import load_scenes
from dissect.errors import DataError


def write(tmp_path: Path, text: str, name: str = "scenes.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def rows(counts: dict[str, int], start: int = 1, col: str = "scene") -> str:
    lines = [f"image,{col}"]
    i = start
    for scene, n in counts.items():
        for _ in range(n):
            lines.append(f"{i},{scene}")
            i += 1
    return "\n".join(lines) + "\n"


def test_reads_scene_column_ids_as_str(tmp_path):
    labels = load_scenes(write(tmp_path, rows({"a": 3, "b": 2})), min_images=1)
    assert labels.ids == ["1", "2", "3", "4", "5"]
    assert labels.classes == ["a", "b"]
    assert labels.scene_of("4") == "b"
    assert labels.scene_of(4) == "b"  # ints are looked up as their str
    np.testing.assert_array_equal(labels.indices(["5", "1"]), [1, 0])
    assert labels.counts().to_dict() == {"a": 3, "b": 2}
    assert labels.dropped.empty


def test_accepts_category_column_and_blanks(tmp_path):
    text = "Image , Category\n 0012 , indoor \n0013,outdoor\n"
    labels = load_scenes(write(tmp_path, text), min_images=1)
    assert labels.ids == ["0012", "0013"]  # leading zeros kept: ids are strings
    assert labels.scene_of("0012") == "indoor"


def test_threshold_drops_and_reports(tmp_path, caplog):
    p = write(tmp_path, rows({"big": 25, "mid": 20, "tiny": 3, "few": 19}))
    with caplog.at_level(logging.WARNING, logger="dissect.data.scenes"):
        labels = load_scenes(p)  # default threshold 20
    assert labels.min_images == 20
    assert labels.classes == ["big", "mid"]
    assert labels.dropped.to_dict("list") == {"scene": ["few", "tiny"], "n_images": [19, 3]}
    assert len(labels) == 45
    assert "few (19)" in caplog.text and "tiny (3)" in caplog.text
    # ids of dropped categories are not silently usable
    dropped_id = str(25 + 20 + 1)
    with pytest.raises(DataError, match="dropped"):
        labels.scenes([dropped_id])
    assert labels.restrict(["1", dropped_id]) == ["1"]


def test_threshold_nothing_left(tmp_path):
    with pytest.raises(DataError, match="min_images=5"):
        load_scenes(write(tmp_path, rows({"a": 2, "b": 3})), min_images=5)
    with pytest.raises(ValueError):
        load_scenes(write(tmp_path, rows({"a": 2})), min_images=0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("image,label\n1,a\n", "no label column"),
        ("scene\na\n", "no 'image' column"),
        ("image,scene\n1,a\n2,\n", "empty label.*2"),
        ("image,scene\n1,a\n,b\n", "empty image id"),
        ("image,scene\n1,a\n1,b\n", "conflicting labels: 1: \\['a', 'b'\\]"),
        ("image,scene\n", "no rows"),
        ("", "cannot be read"),
    ],
)
def test_errors_name_file(tmp_path, text, match):
    p = write(tmp_path, text, "bad_labels.csv")
    with pytest.raises(DataError, match=match) as e:
        load_scenes(p, min_images=1)
    assert "bad_labels.csv" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_scenes(tmp_path / "nope.csv")


def test_identical_duplicates_count_once(tmp_path):
    labels = load_scenes(write(tmp_path, "image,scene\n1,a\n1,a\n2,b\n"), min_images=1)
    assert labels.ids == ["1", "2"]


def test_dataset_validation(tmp_path, caplog):
    ds = SimpleNamespace(ids=["1", "2", "3"])
    with pytest.raises(DataError, match="not in the dataset: 9"):
        load_scenes(write(tmp_path, "image,scene\n1,a\n9,a\n"), min_images=1, dataset=ds)
    with caplog.at_level(logging.WARNING, logger="dissect.data.scenes"):
        labels = load_scenes(write(tmp_path, "image,scene\n1,a\n2,a\n"), min_images=1, dataset=ds)
    assert labels.unlabelled == ["3"]
    assert "no scene label" in caplog.text


def test_real_scene_file(osie_regions_root, osie):
    labels = load_scenes(osie_regions_root / "scenes.csv", dataset=osie)
    assert len(labels) == 700 and labels.unlabelled == []
    assert labels.dropped.empty
    assert labels.counts().to_dict() == {
        "closeup": 146,
        "indoor_home": 163,
        "indoor_public": 95,
        "nature": 78,
        "sports_event": 62,
        "street_urban": 63,
        "water_coast": 93,
    }
