"""SALICON reader on small fixtures written in the documented .mat and JSON formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from dissect.data.salicon import load_salicon, read_salicon_mat
from dissect.errors import DataError

H, W = 30, 40  # deliberately non-square: x (column) runs to 39, y (row) to 29
GAZE_DTYPE = [("location", "O"), ("timestamp", "O"), ("fixations", "O")]


def write_mat(path, name, observers, resolution=(H, W)):
    """observers: list of (fixations (m, 2) 1-based (x, y), locations (n, 2)) per worker."""
    gaze = np.zeros((len(observers), 1), dtype=GAZE_DTYPE)
    for j, (fix, loc) in enumerate(observers):
        gaze[j, 0]["fixations"] = np.asarray(fix, dtype=np.uint16).reshape(-1, 2)
        gaze[j, 0]["location"] = np.asarray(loc, dtype=np.uint16).reshape(-1, 2)
        gaze[j, 0]["timestamp"] = np.arange(len(loc), dtype=np.float64).reshape(-1, 1) * 10
    scipy.io.savemat(path, {"image": name, "resolution": np.array([resolution], np.uint16),
                            "gaze": gaze})


@pytest.fixture
def salicon_root(tmp_path):
    root = tmp_path / "salicon"
    (root / "fixations" / "train").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    names = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    for n in names:
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "train" / f"{n}.jpg")
    write_mat(root / "fixations" / "train" / f"{names[0]}.mat", names[0], [
        ([[1, 1], [40, 5], [12, 30]], [[1, 1], [2, 2], [3, 3], [40, 30]]),
        ([[20, 10]], [[20, 10]]),  # one fixation: squeezed to shape (2,) by loadmat
        (np.zeros((0, 2)), np.zeros((0, 2))),  # an observer without fixations
    ])
    write_mat(root / "fixations" / "train" / f"{names[1]}.mat", names[1], [
        ([[5, 6], [7, 8]], [[5, 6]]),
    ])
    return root, names


def test_mat_points_are_x_y_and_become_zero_based(salicon_root):
    root, names = salicon_root
    ds = load_salicon(root, "train")
    assert ds.ids == names
    assert (ds[names[0]].height, ds[names[0]].width) == (H, W)
    np.testing.assert_array_equal(
        ds.points(names[0]), [[0, 0], [39, 4], [11, 29], [19, 9]]
    )
    t = ds.fixations
    first = t[t.image == names[0]]
    assert list(first.subject) == [0, 0, 0, 1] and list(first.order) == [0, 1, 2, 0]
    assert first.duration.isna().all()
    np.testing.assert_array_equal(ds.points(names[1]), [[4, 5], [6, 7]])


def test_mouse_samples_and_id_filter(salicon_root):
    root, names = salicon_root
    ds = load_salicon(root, "train", kind="mouse", ids=[names[0]])
    assert ds.ids == [names[0]]
    np.testing.assert_array_equal(ds.points(names[0]),
                                  [[0, 0], [1, 1], [2, 2], [39, 29], [19, 9]])
    with pytest.raises(DataError, match="not found"):
        load_salicon(root, "train", ids=["COCO_nope"])


def test_json_points_are_row_col(salicon_root, tmp_path):
    root, names = salicon_root
    # the same fixations as the first .mat file, written as the SALICON API's [row, col]
    data = {
        "images": [{"id": 9, "file_name": f"{names[0]}.jpg", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 9, "worker_id": 7, "fixations": [[1, 1], [5, 40], [30, 12]]},
            {"id": 2, "image_id": 9, "worker_id": 8, "fixations": [[10, 20]]},
        ],
    }
    f = tmp_path / "fixations_train2014.json"
    f.write_text(json.dumps(data))
    ds = load_salicon(fixations=f, images=root / "images" / "train")
    mat = load_salicon(root, "train", ids=[names[0]])
    np.testing.assert_array_equal(ds.points(names[0]), mat.points(names[0]))
    assert sorted(ds.fixations.subject.unique()) == [7, 8]


def test_bad_inputs_name_the_file(salicon_root, tmp_path):
    root, names = salicon_root
    bad = tmp_path / "bad"
    bad.mkdir()
    scipy.io.savemat(bad / "x.mat", {"image": "x", "resolution": np.array([[H, W]])})
    with pytest.raises(DataError, match=r"x\.mat.*gaze"):
        load_salicon(fixations=bad, images=root / "images" / "train")
    # recorded resolution differs from the image file
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    write_mat(wrong / f"{names[0]}.mat", names[0], [([[1, 1]], [[1, 1]])], resolution=(W, H))
    with pytest.raises(DataError, match="differs from the recorded"):
        load_salicon(fixations=wrong, images=root / "images" / "train")
    # a fixation outside the image (x = 41 > W) is an error unless asked otherwise
    oob = tmp_path / "oob"
    oob.mkdir()
    write_mat(oob / f"{names[0]}.mat", names[0], [([[41, 1], [2, 2]], [[1, 1]])])
    with pytest.raises(DataError, match="outside"):
        load_salicon(fixations=oob, images=root / "images" / "train")
    with pytest.warns(UserWarning, match="dropped"):
        ds = load_salicon(fixations=oob, images=root / "images" / "train", out_of_bounds="drop")
    np.testing.assert_array_equal(ds.points(names[0]), [[1, 1]])
    # missing image file
    (root / "images" / "train" / f"{names[1]}.jpg").unlink()
    with pytest.raises(DataError, match="does not exist"):
        load_salicon(root, "train")
    assert len(load_salicon(root, "train", check_images=False)) == 2


def test_read_one_mat_file(salicon_root):
    root, names = salicon_root
    name, size, table = read_salicon_mat(root / "fixations" / "train" / f"{names[1]}.mat")
    assert name == names[1] and size == (H, W) and len(table) == 2
    with pytest.raises(ValueError):
        read_salicon_mat(root / "fixations" / "train" / f"{names[1]}.mat", kind="clicks")
