"""Region annotations: release format (PNG + regions.csv), labelme polygons, round trips and
every documented error, on tiny synthetic fixtures; real OSIE regions where present."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dissect.categories import BY_CODE, name_of
from dissect.data import (
    FixationDataset,
    RegionSet,
    Stimulus,
    load_labelme,
    load_regions,
    write_regions,
)
from dissect.errors import DataError

H, W = 20, 30


def masks_a() -> tuple[np.ndarray, np.ndarray]:
    inst = np.zeros((H, W), np.uint8)
    inst[2:6, 3:9] = 1
    inst[10:15, 20:28] = 2
    cls = np.zeros((H, W), np.uint8)
    cls[inst == 1] = 1  # person head
    cls[inst == 2] = 37  # text
    return inst, cls


def masks_b() -> tuple[np.ndarray, np.ndarray]:
    inst = np.zeros((H, W), np.uint8)
    inst[0:3, 0:3] = 1
    cls = np.where(inst == 1, 27, 0).astype(np.uint8)  # object
    return inst, cls


def write_release(root, masks: dict, csv: pd.DataFrame | None | str = "auto"):
    for d in ("SegmentationObject", "SegmentationClass"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (inst, cls) in masks.items():
        Image.fromarray(inst).save(root / "SegmentationObject" / f"{i}.png")
        Image.fromarray(cls).save(root / "SegmentationClass" / f"{i}.png")
        for r in range(1, int(inst.max()) + 1):
            c = int(cls[inst == r][0])
            rows.append((i, r, name_of(c) if c in BY_CODE else "?", c))
    if isinstance(csv, str):
        csv = pd.DataFrame(rows, columns=["image", "region", "category", "code"])
    if csv is not None:
        csv.to_csv(root / "regions.csv", index=False)
    return root


def dataset(ids=("a", "b"), size=(H, W)) -> FixationDataset:
    stim = [Stimulus(i, f"{i}.jpg", *size) for i in ids]
    fix = pd.DataFrame(
        {"image": list(ids), "subject": 0, "order": 0, "x": 1.0, "y": 1.0, "duration": 100.0}
    )
    return FixationDataset.from_table(stim, fix, "synthetic")


@pytest.mark.parametrize("with_csv", [True, False])
def test_load_release_format(tmp_path, with_csv):
    root = write_release(tmp_path, {"a": masks_a(), "b": masks_b()}, "auto" if with_csv else None)
    rs = load_regions(root, dataset(), verify=True)
    assert rs.images == ["a", "b"]
    t = rs.table
    assert list(t.columns[:4]) == ["image", "region", "category", "code"]
    assert t[["image", "region", "category", "code"]].values.tolist() == [
        ["a", 1, "person head", 1], ["a", 2, "text", 37], ["b", 1, "object", 27]
    ]
    inst = rs.instance_mask("a")
    assert inst.dtype == np.int32 and inst.shape == (H, W)
    np.testing.assert_array_equal(inst, masks_a()[0])
    np.testing.assert_array_equal(rs.class_mask("a"), masks_a()[1])
    sub = rs.subset(["b"])
    assert sub.images == ["b"] and len(sub.table) == 1


def test_region_of_rounding(tmp_path):
    rs = load_regions(write_release(tmp_path, {"a": masks_a(), "b": masks_b()}))
    # region 1 covers rows 2..5, cols 3..8. x=2.5 rounds to 2 (half to even) -> outside;
    # x=3.5 rounds to 4 -> inside; y=5.5 rounds to 6 -> outside; y=1.5 rounds to 2 -> inside
    pts = np.array([[2.5, 3.0], [3.5, 3.0], [4.0, 5.5], [4.0, 1.5], [21.0, 12.0], [0.0, 0.0]])
    np.testing.assert_array_equal(rs.region_of("a", pts), [0, 1, 0, 1, 2, 0])
    assert rs.region_of("a", np.empty((0, 2))).shape == (0,)
    with pytest.raises(DataError, match="outside"):
        rs.region_of("a", [[W - 0.5, 0.0]])
    with pytest.raises(DataError, match="NaN"):
        rs.region_of("a", [[np.nan, 0.0]])


def test_mask_size_mismatch(tmp_path):
    root = write_release(tmp_path, {"a": masks_a(), "b": masks_b()})
    with pytest.raises(DataError, match=r"SegmentationObject/a\.png.*\(20, 30\).*\(21, 30\)"):
        load_regions(root, dataset(size=(H + 1, W)))


def test_unknown_code(tmp_path):
    inst, cls = masks_a()
    cls[inst == 2] = 99
    assert 99 not in BY_CODE
    root = write_release(tmp_path / "png", {"a": (inst, cls)}, None)
    with pytest.raises(DataError, match=r"SegmentationClass/a\.png.*code\(s\) \[99\]"):
        load_regions(root)
    root = write_release(tmp_path / "csv", {"a": (inst, cls)})
    with pytest.raises(DataError, match=r"regions\.csv \(row 2\).*code 99"):
        load_regions(root)


def test_region_with_two_codes(tmp_path):
    inst, cls = masks_a()
    cls[2, 3] = 10  # one pixel of region 1 is 'person part'
    root = write_release(tmp_path, {"a": (inst, cls)}, None)
    with pytest.raises(DataError, match=r"a\.png.*region 1.*two different class codes"):
        load_regions(root)


def test_empty_region_listed_in_csv(tmp_path):
    csv = pd.DataFrame(
        [("a", 1, "person head", 1), ("a", 2, "text", 37), ("a", 3, "food", 57)],
        columns=["image", "region", "category", "code"],
    )
    rs = load_regions(write_release(tmp_path, {"a": masks_a()}, csv))
    with pytest.raises(DataError, match=r"region\(s\) \[3\].*empty mask"):
        rs.instance_mask("a")


def test_csv_disagrees_with_pngs(tmp_path):
    wrong_code = pd.DataFrame(
        [("a", 1, "person head", 1), ("a", 2, "symbol", 46)],
        columns=["image", "region", "category", "code"],
    )
    rs = load_regions(write_release(tmp_path / "x", {"a": masks_a()}, wrong_code))
    with pytest.raises(DataError, match="region 2: table 46, mask 37"):
        rs.validate()
    unlisted = wrong_code.iloc[:1]
    rs = load_regions(write_release(tmp_path / "y", {"a": masks_a()}, unlisted))
    with pytest.raises(DataError, match=r"region\(s\) \[2\] in the mask are not listed"):
        rs.region_of("a", [[0.0, 0.0]])
    underscores = wrong_code.assign(category=["Person_Head", "symbol"])
    rs = load_regions(write_release(tmp_path / "u", {"a": masks_a()}, underscores))
    assert rs.table["category"].tolist() == ["person head", "symbol"]
    bad_name = wrong_code.assign(category=["person head", "text"])
    with pytest.raises(DataError, match="does not match code 46"):
        load_regions(write_release(tmp_path / "z", {"a": masks_a()}, bad_name))


def test_write_round_trip(tmp_path):
    rs = load_regions(write_release(tmp_path / "in", {"a": masks_a(), "b": masks_b()}))
    out = write_regions(rs, tmp_path / "out")
    back = load_regions(out, verify=True)
    pd.testing.assert_frame_equal(back.table, rs.table)
    for i in rs.images:
        np.testing.assert_array_equal(back.instance_mask(i), rs.instance_mask(i))
        np.testing.assert_array_equal(back.class_mask(i), rs.class_mask(i))


def labelme_doc(shapes, h=H, w=W):
    return {"version": "5.2.1", "shapes": shapes, "imagePath": "x.jpg", "imageData": None,
            "imageHeight": h, "imageWidth": w}


def shape(label, points, kind="polygon", group_id=None):
    return {"label": label, "points": points, "shape_type": kind, "group_id": group_id,
            "flags": {}}


def test_labelme_rasterise_overlap_and_round_trip(tmp_path):
    d = tmp_path / "lm"
    d.mkdir()
    shapes = [
        shape("object", [[2, 2], [12, 2], [12, 12], [2, 12]]),  # region 1, square 2..12
        shape("person_head", [[8, 8], [16, 16]], "rectangle"),  # region 2 overwrites corner
        shape("46", [[24, 10], [24, 13]], "circle"),  # region 3: code given as text, r = 3
        shape("Text", [[0, 18], [4, 18], [4, 19], [0, 19]], group_id=7),  # region 4 ...
        shape("text", [[26, 0], [29, 0], [29, 2]], group_id=7),  # ... same group
    ]
    (d / "a.json").write_text(json.dumps(labelme_doc(shapes)))
    rs = load_labelme(d, dataset(("a",)))
    assert rs.table[["region", "category", "code"]].values.tolist() == [
        [1, "object", 27], [2, "person head", 1], [3, "symbol", 46], [4, "text", 37]
    ]
    inst = rs.instance_mask("a")
    assert inst[2, 2] == 1 and inst[12, 2] == 1 and inst[7, 7] == 1
    assert inst[8, 8] == 2 and inst[12, 12] == 2 and inst[16, 16] == 2  # later shape wins
    assert inst[10, 24] == 3 and inst[10, 27] == 3 and inst[10, 28] == 0
    assert inst[18, 2] == 4 and inst[1, 28] == 4
    assert rs.class_mask("a")[10, 24] == 46
    out = write_regions(rs, tmp_path / "release")
    back = load_regions(out, verify=True)
    pd.testing.assert_frame_equal(back.table, rs.table)
    np.testing.assert_array_equal(back.instance_mask("a"), inst)
    np.testing.assert_array_equal(back.class_mask("a"), rs.class_mask("a"))


def test_labelme_errors(tmp_path):
    def load(shapes, h=H, w=W, **kw):
        d = tmp_path / f"lm{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "a.json").write_text(json.dumps(labelme_doc(shapes, h, w)))
        return load_labelme(d, **kw)

    square = [[2, 2], [6, 2], [6, 6], [2, 6]]
    with pytest.raises(DataError, match=r"a\.json \(shape 0\).*'lamp'.*not in the category"):
        load([shape("lamp", square)])
    with pytest.raises(DataError, match="unsupported shape_type 'line'"):
        load([shape("object", [[0, 0], [3, 3]], "line")])
    with pytest.raises(DataError, match="mixes categories"):
        load([shape("object", square, group_id=1), shape("text", square, group_id=1)])
    with pytest.raises(DataError, match=r"a\.json.*\(20, 30\).*\(20, 31\)"):
        load([shape("object", square)], dataset=dataset(("a",), size=(H, W + 1)))
    covered = load([shape("object", square), shape("text", [[0, 0], [9, 0], [9, 9], [0, 9]])])
    with pytest.raises(DataError, match=r"region\(s\) \[1\].*empty mask"):
        covered.instance_mask("a")


def test_from_masks():
    inst, _ = masks_a()
    table = pd.DataFrame([("a", 1, "food", 57), ("a", 2, "drink", 68)],
                         columns=["image", "region", "category", "code"])
    rs = RegionSet.from_masks(table, {"a": inst})
    assert rs.class_mask("a")[3, 4] == 57 and rs.class_mask("a")[11, 21] == 68


@pytest.mark.osie
def test_real_osie_regions(osie_regions, osie):
    t = osie_regions.table
    assert len(t) == 3570 and t["image"].nunique() == 700
    expected = {"object": 964, "person head": 765, "text": 596, "food": 292, "person part": 290,
                "animal head": 212, "vehicle": 91, "drink": 86, "animal part": 80, "plant": 72,
                "symbol": 64, "other": 58}
    assert t["category"].value_counts().to_dict() == expected
    sub = osie_regions.subset(osie.ids[:5])
    assert sub.validate() == 5  # PNGs agree with regions.csv for these
    # the number of fixations in each region matches regions.csv's n_fixations
    # (which counts the clustered fixations; every clustered fixation lies inside its mask)
    for i in osie.ids[:5]:
        hits = np.bincount(sub.region_of(i, osie.points(i, drop_first=True)),
                           minlength=int(sub.instance_mask(i).max()) + 1)[1:]
        assert np.all(hits >= sub.regions(i)["n_fixations"].to_numpy())
