"""Region proposal from fixations: the recipe on synthetic fixations, the annotation workflow
(masks, overlays, labelling CSV, merge), and agreement with the released OSIE regions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from dissect.data import (
    FixationDataset,
    Stimulus,
    merge_labels,
    propose_from_points,
    propose_regions,
    write_proposals,
)
from dissect.errors import DataError

H, W = 120, 160


def cluster(rng, cx, cy, subjects, per_subject=2, spread=3.0):
    pts, subj = [], []
    for s in subjects:
        for _ in range(per_subject):
            pts.append((cx + rng.normal(0, spread), cy + rng.normal(0, spread)))
            subj.append(s)
    return pts, subj


def synthetic():
    rng = np.random.default_rng(0)
    a = cluster(rng, 40, 40, range(6), per_subject=2)  # 12 fixations, 6 observers -> region 1
    b = cluster(rng, 120, 80, range(4), per_subject=2)  # 8 fixations, 4 observers -> region 2
    c = cluster(rng, 120, 20, range(3), per_subject=3)  # 9 fixations, 3 observers -> rejected
    d = cluster(rng, 40, 100, range(5), per_subject=1)  # 5 fixations -> rejected
    pts = np.array(a[0] + b[0] + c[0] + d[0])
    subj = np.array(a[1] + b[1] + c[1] + d[1])
    return pts, subj


def test_recipe_on_synthetic_clusters():
    pts, subj = synthetic()
    p = propose_from_points(pts, subj, (H, W), image="s")
    assert p.mask.shape == (H, W) and p.mask.dtype == np.int32
    assert p.table["region"].tolist() == [1, 2]
    assert p.table["n_fixations"].tolist() == [12, 8]
    assert p.table["n_subjects"].tolist() == [6, 4]
    np.testing.assert_allclose(p.table[["cx", "cy"]].to_numpy()[0], pts[:12].mean(axis=0))
    assert (p.labels[:12] == 1).all() and (p.labels[12:20] == 2).all()
    assert (p.labels[20:] == 0).all()
    # every mask pixel lies within 30 px of one of its region's (pixel-snapped) fixations,
    # and every pixel within 30 px of a region fixation is in some region
    yy, xx = np.mgrid[0:H, 0:W]
    snapped = np.rint(pts)
    for rid in (1, 2):
        f = snapped[p.labels == rid]
        d = np.sqrt((xx[..., None] - f[:, 0]) ** 2 + (yy[..., None] - f[:, 1]) ** 2).min(-1)
        assert d[p.mask == rid].max() <= 30
    f = snapped[p.labels > 0]
    d = np.sqrt((xx[..., None] - f[:, 0]) ** 2 + (yy[..., None] - f[:, 1]) ** 2).min(-1)
    np.testing.assert_array_equal(p.mask > 0, d <= 30)
    assert p.table["area_px"].tolist() == [int((p.mask == 1).sum()), int((p.mask == 2).sum())]


def test_single_fixation_disc_and_thresholds():
    # one region of 6 fixations at the same pixel: the mask is the disc of radius 30
    pts = np.tile([[80.0, 60.0]], (6, 1))
    p = propose_from_points(pts, np.arange(6), (H, W), min_subjects=4)
    yy, xx = np.mgrid[0:H, 0:W]
    np.testing.assert_array_equal(p.mask == 1, (xx - 80) ** 2 + (yy - 60) ** 2 <= 900)
    assert propose_from_points(pts, np.zeros(6), (H, W)).table.empty  # one observer only
    assert propose_from_points(np.empty((0, 2)), np.empty(0), (H, W)).mask.max() == 0


def dataset(tmp_path):
    pts, subj = synthetic()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path / "s.jpg")
    order = np.zeros(len(pts), int)
    for s in np.unique(subj):
        order[subj == s] = np.arange((subj == s).sum()) + 1  # keep all: no order-0 fixation
    fix = pd.DataFrame({"image": "s", "subject": subj, "order": order, "x": pts[:, 0],
                        "y": pts[:, 1], "duration": 100.0})
    return FixationDataset.from_table([Stimulus("s", tmp_path / "s.jpg", H, W)], fix, "syn")


def test_annotation_workflow(tmp_path):
    ds = dataset(tmp_path)
    prop = propose_regions(ds, "s")
    out = write_proposals(ds, [prop], tmp_path / "prop")
    overlay = Image.open(out / "overlays" / "s.png")
    assert overlay.size == (W, H)
    ov = np.asarray(overlay.convert("RGB"))
    assert (ov != 128).any(axis=2).sum() > 100  # outlines and numbers were drawn
    labels = pd.read_csv(out / "labels.csv", dtype={"image": str}, keep_default_na=False)
    assert labels.columns[:3].tolist() == ["image", "region", "category"]
    assert (labels["category"] == "").all()
    assert labels["cx"].iloc[0] == pytest.approx(prop.table["cx"].iloc[0] + 1, abs=0.06)
    with pytest.raises(DataError, match=r"labels\.csv.*2 region\(s\) not labelled"):
        merge_labels(out)
    labels["category"] = ["person head", "57"]
    labels.to_csv(out / "labels.csv", index=False)
    rs = merge_labels(out, out_dir=tmp_path / "release", dataset=ds)
    assert rs.table[["region", "category", "code"]].values.tolist() == [
        [1, "person head", 1], [2, "food", 57]
    ]
    np.testing.assert_array_equal(rs.instance_mask("s"), prop.mask)
    assert set(np.unique(rs.class_mask("s"))) == {0, 1, 57}
    assert (tmp_path / "release" / "regions.csv").is_file()
    labels["category"] = ["person head", "lamp"]
    labels.to_csv(out / "labels.csv", index=False)
    with pytest.raises(DataError, match="lamp"):
        merge_labels(out)
    labels = labels.iloc[:1].assign(category="object")
    labels.to_csv(out / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"region\(s\) \[2\] in the mask are not listed"):
        merge_labels(out)


def _matched_iou(ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    a, b = int(ref.max()), int(mask.max())
    inter = np.bincount((ref.astype(np.int64) * (b + 1) + mask).ravel(),
                        minlength=(a + 1) * (b + 1)).reshape(a + 1, b + 1)
    union = inter.sum(1)[1:, None] + inter.sum(0)[None, 1:] - inter[1:, 1:]
    iou = inter[1:, 1:] / union
    r, c = linear_sum_assignment(-iou)
    return iou[r, c]


@pytest.mark.osie
def test_matches_released_osie_regions(osie, osie_regions):
    # these images come out pixel-identical to the release (ids, masks, statistics)
    for i in ("1001", "1002", "1003"):
        p = propose_regions(osie, i)
        np.testing.assert_array_equal(p.mask, osie_regions.instance_mask(i))
        ref = osie_regions.regions(i)
        assert p.table["n_fixations"].tolist() == ref["n_fixations"].tolist()
        assert p.table["n_subjects"].tolist() == ref["n_subjects"].tolist()
        np.testing.assert_allclose(p.table["cx"] + 1, ref["cx"], atol=0.051)
        np.testing.assert_allclose(p.table["cy"] + 1, ref["cy"], atol=0.051)
        assert p.table["area_px"].tolist() == ref["area_px"].tolist()
    # others differ in mean-shift details (measured over 140 images: see the report);
    # here: region counts within one, matched regions overlap substantially
    for i in ("1006", "1012"):
        p = propose_regions(osie, i)
        ref = osie_regions.instance_mask(i)
        assert abs(int(p.mask.max()) - int(ref.max())) <= 1
        iou = _matched_iou(ref, p.mask)
        assert iou.mean() > 0.6 and np.median(iou) > 0.7
