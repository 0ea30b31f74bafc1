"""OSIE reader and FixationDataset: synthetic .mat/JPEG fixtures for every failure mode, plus
the real-data counts (skipped where OSIE is absent)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from dissect.data import FixationDataset, Stimulus, load_osie
from dissect.errors import DataError

W, H = 40, 30


def write_osie(
    root: Path,
    images: dict[str, list[list[tuple[float, float, float]]]],
    *,
    missing_files: tuple[str, ...] = (),
    extra_files: tuple[str, ...] = (),
    size: tuple[int, int] = (H, W),
) -> Path:
    """A tiny OSIE tree: ``images[id][subject] = [(fix_x, fix_y, duration), ...]`` in MATLAB
    1-based coordinates, saved in OSIE's struct layout."""
    stim = root / "data" / "stimuli"
    eye = root / "data" / "eye"
    stim.mkdir(parents=True)
    eye.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in list(images) + list(extra_files):
        if i in missing_files:
            continue
        arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(stim / f"{i}.jpg", quality=90)
    sub_dtype = [("fix_x", "O"), ("fix_y", "O"), ("fix_duration", "O")]
    fix = np.zeros((1, len(images)), dtype=[("img", "O"), ("subjects", "O")])
    for k, (i, subjects) in enumerate(images.items()):
        subs = np.zeros((1, len(subjects)), dtype=sub_dtype)
        for j, f in enumerate(subjects):
            a = np.array(f, dtype=np.float64).reshape(-1, 3)
            subs[0, j]["fix_x"] = a[:, 0].reshape(1, -1)
            subs[0, j]["fix_y"] = a[:, 1].reshape(1, -1)
            subs[0, j]["fix_duration"] = a[:, 2].reshape(1, -1)
        fix[0, k]["img"] = f"{i}.jpg"
        fix[0, k]["subjects"] = subs
    scipy.io.savemat(eye / "fixations.mat", {"fixations": fix})
    return root


GOOD = {
    "1001": [
        [(20.5, 15.5, 200), (1.0, 1.0, 150), (40.0, 30.0, 100)],
        [(21.0, 16.0, 300)],  # one fixation: a scalar after squeeze_me
        [],  # no fixation at all for this subject
    ],
    "1002": [[(10.0, 5.0, 120), (11.0, 6.0, 130)], [(30.0, 20.0, 90), (31.0, 21.0, 80)]],
}


def test_load_synthetic_converts_once_to_zero_based(tmp_path):
    ds = load_osie(write_osie(tmp_path, GOOD))
    assert len(ds) == 2 and ds.ids == ["1001", "1002"]
    f = ds.fixations
    assert list(f.columns) == ["image", "subject", "order", "x", "y", "duration"]
    assert len(f) == 8
    s = ds["1001"]
    assert isinstance(s, Stimulus) and (s.height, s.width) == (H, W) and s.file.name == "1001.jpg"
    assert [st.id for st in ds] == ["1001", "1002"]
    p = ds.points("1001")
    np.testing.assert_array_equal(p, [[19.5, 14.5], [0.0, 0.0], [39.0, 29.0], [20.0, 15.0]])
    assert p.dtype == np.float64
    # drop_first removes order 0 of every subject
    np.testing.assert_array_equal(ds.points("1001", drop_first=True), [[0.0, 0.0], [39.0, 29.0]])
    one = f[(f.image == "1001") & (f.subject == 1)]
    assert one["order"].tolist() == [0] and one["duration"].tolist() == [300.0]
    assert f[f.image == "1001"]["order"].tolist() == [0, 1, 2, 0]
    assert f[f.image == "1002"]["subject"].tolist() == [0, 0, 1, 1]


def test_load_image_and_subset(tmp_path):
    ds = load_osie(write_osie(tmp_path, GOOD))
    img = ds.load_image("1002")
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    sub = ds.subset(["1002"])
    assert sub.ids == ["1002"] and len(sub.fixations) == 4
    np.testing.assert_array_equal(sub.points("1002"), ds.points("1002"))
    with pytest.raises(KeyError):
        ds.subset(["9999"])
    with pytest.raises(KeyError):
        ds["9999"]
    assert ds.validate() == 2 and ds.validate(full=True) == 2


def test_image_listed_without_file(tmp_path):
    root = write_osie(tmp_path, GOOD, missing_files=("1002",))
    with pytest.raises(DataError, match=r"1002\.jpg.*does not exist"):
        load_osie(root)


def test_truncated_jpeg(tmp_path):
    root = write_osie(tmp_path, GOOD, size=(120, 160))
    f = root / "data" / "stimuli" / "1002.jpg"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    ds = load_osie(root)  # the header is still readable
    with pytest.raises(DataError, match=r"1002\.jpg.*(corrupt|truncated)"):
        ds.load_image("1002")
    assert ds.validate(full=False) == 2  # headers are fine
    with pytest.raises(DataError, match=r"1002\.jpg"):
        ds.validate(full=True)


def test_corrupt_header(tmp_path):
    root = write_osie(tmp_path, GOOD)
    (root / "data" / "stimuli" / "1001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"1001\.jpg.*not a readable image"):
        load_osie(root)


def test_out_of_bounds_policies(tmp_path):
    imgs = {"1001": [[(20.0, 15.0, 100), (45.0, 10.0, 100), (5.0, 0.2, 100)]]}
    root = write_osie(tmp_path, imgs)
    with pytest.raises(DataError, match=r"2 fixation\(s\) lie outside.*1001 \(2\)"):
        load_osie(root)
    with pytest.warns(UserWarning, match="2 out-of-bounds"):
        clipped = load_osie(root, out_of_bounds="clip")
    assert clipped.report == {"clipped_out_of_bounds": 2}
    np.testing.assert_array_equal(clipped.points("1001"), [[19, 14], [W - 1, 9], [4, 0]])
    with pytest.warns(UserWarning, match="dropped"):
        dropped = load_osie(root, out_of_bounds="drop")
    assert dropped.report == {"dropped_out_of_bounds": 2}
    assert dropped.fixations["order"].tolist() == [0]  # orders are not renumbered


def test_half_pixel_bound(tmp_path):
    # 0-based x = W - 0.5 rounds (half to even) to W (even W=40) -> outside; W - 0.6 -> inside
    stim = [Stimulus("a", tmp_path / "a.jpg", H, W)]
    ok = pd.DataFrame(
        {"image": ["a"], "subject": [0], "order": [0], "x": [W - 0.6], "y": [0.0], "duration": [1]}
    )
    FixationDataset.from_table(stim, ok, "mem")
    bad = ok.assign(x=[W - 0.5])
    with pytest.raises(DataError, match="outside"):
        FixationDataset.from_table(stim, bad, "mem")


def test_nan_coordinates(tmp_path):
    imgs = {"1001": [[(20.0, 15.0, 100), (np.nan, 10.0, 100)]]}
    with pytest.raises(DataError, match=r"fixations\.mat.*NaN.*1001"):
        load_osie(write_osie(tmp_path, imgs))


def test_image_without_fixations(tmp_path):
    imgs = {"1001": [[(20.0, 15.0, 100)]], "1002": [[], []]}
    root = write_osie(tmp_path, imgs, extra_files=("1003",))
    with pytest.raises(DataError, match=r"2 image\(s\) have no fixations: 1002, 1003"):
        load_osie(root)
    with pytest.warns(UserWarning, match="skipped"):
        ds = load_osie(root, empty="skip")
    assert ds.ids == ["1001"] and ds.report == {"skipped_empty_images": 2}


def test_from_table_validation(tmp_path):
    stim = [Stimulus("a", tmp_path / "a.jpg", 10, 10)]
    df = pd.DataFrame(
        {"image": ["a", "a"], "subject": [0, 0], "order": [1, 0], "x": [1.0, 2.0],
         "y": [3.0, 4.0], "duration": [np.nan, np.nan]}
    )
    ds = FixationDataset.from_table(stim, df, "synthetic")
    np.testing.assert_array_equal(ds.points("a"), [[2, 4], [1, 3]])  # sorted by order
    with pytest.raises(DataError, match="columns"):
        FixationDataset.from_table(stim, df.drop(columns="duration"), "synthetic")
    with pytest.raises(DataError, match="no stimulus"):
        FixationDataset.from_table(stim, df.assign(image="b"), "synthetic")
    with pytest.raises(DataError, match="duplicate"):
        FixationDataset.from_table(stim, df.assign(order=0), "synthetic")


@pytest.mark.osie
def test_real_osie_counts_and_speed(osie_root):
    t0 = time.perf_counter()
    ds = load_osie(osie_root)
    elapsed = time.perf_counter() - t0
    assert len(ds) == 700
    assert ds.fixations["subject"].nunique() == 15
    assert len(ds.fixations) == 98_321
    assert ds["1001"].size == (600, 800)
    first = ds.fixations.iloc[0]
    assert (first.image, first.subject, first.order) == ("1001", 0, 0)
    assert first.x == pytest.approx(395.5 - 1) and first.y == pytest.approx(265.7 - 1)
    # ~0.6 s on an idle core; generous bound for a loaded shared CI machine
    assert elapsed < 10.0, f"load_osie took {elapsed:.2f} s"


def test_single_image_single_subject_single_fixation(tmp_path):
    # after squeeze_me the struct array, the subjects array and the vectors are all scalars
    ds = load_osie(write_osie(tmp_path, {"1001": [[(3.0, 4.0, 50)]]}))
    assert ds.ids == ["1001"]
    np.testing.assert_array_equal(ds.points("1001"), [[2.0, 3.0]])
    assert ds.fixations["duration"].tolist() == [50.0]
