"""Issue 11, "images decoded wrong without a word" and the fixations.mat traps: each bad input is
built in tmp_path from a few real OSIE files and must end in a clear DataError (or the documented
behaviour), never in silently wrong pixels or a raw numpy traceback."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from dissect.data import FixationDataset, Stimulus, load_osie
from dissect.data.images import read_rgb, read_size
from dissect.errors import DataError

IDS = ("1001", "1002", "1003")
#: one central fixation per subject (MATLAB 1-based), two subjects per image
GOOD_SUBJECTS = [
    {"fix_x": [400.5, 120.0], "fix_y": [300.5, 80.0], "fix_duration": [200.0, 150.0]},
    {"fix_x": [401.0], "fix_y": [299.0], "fix_duration": [300.0]},
]


def _struct(subjects: list[dict[str, object]]) -> np.ndarray:
    """OSIE's per-image subjects struct array; values are saved exactly as given (so tests can
    write matrices, cells and strings), plain lists as 1×N row vectors like the real file."""
    fields = ("fix_x", "fix_y", "fix_duration")
    subs = np.zeros((len(subjects), 1), dtype=[(k, "O") for k in fields])
    for j, sub in enumerate(subjects):
        for k, v in sub.items():
            row = isinstance(v, list)
            subs[j, 0][k] = np.array(v, dtype=np.float64).reshape(1, -1) if row else v
    return subs


def write_mat(root: Path, images: dict[str, list[dict[str, object]]]) -> Path:
    """``<root>/data/eye/fixations.mat`` in OSIE's layout: ``fixations(i).img`` (file name) and
    ``fixations(i).subjects(j).fix_x / fix_y / fix_duration``."""
    eye = root / "data" / "eye"
    eye.mkdir(parents=True, exist_ok=True)
    fix = np.zeros((len(images), 1), dtype=[("img", "O"), ("subjects", "O")])
    for k, (name, subjects) in enumerate(images.items()):
        fix[k, 0]["img"] = name
        fix[k, 0]["subjects"] = _struct(subjects)
    scipy.io.savemat(eye / "fixations.mat", {"fixations": fix})
    return eye / "fixations.mat"


@pytest.fixture
def tree(tmp_path: Path, osie_root: Path) -> Path:
    """Three real OSIE JPEGs and a valid fixations.mat for them."""
    stim = tmp_path / "data" / "stimuli"
    stim.mkdir(parents=True)
    for i in IDS:
        shutil.copy(osie_root / "data" / "stimuli" / f"{i}.jpg", stim / f"{i}.jpg")
    write_mat(tmp_path, {f"{i}.jpg": GOOD_SUBJECTS for i in IDS})
    return tmp_path


def _stim(root: Path, name: str) -> Path:
    return root / "data" / "stimuli" / name


# ---------------------------------------------------------------------- valid data unchanged
def test_real_stimuli_decode_exactly_as_plain_pillow(osie_root):
    files = sorted((osie_root / "data" / "stimuli").glob("*.jpg"))
    for f in files[:: len(files) // 5][:5]:
        want = np.asarray(Image.open(f).convert("RGB"))
        got = read_rgb(f)
        assert got.dtype == np.uint8 and got.shape == want.shape == (600, 800, 3)
        np.testing.assert_array_equal(got, want)
        assert read_size(f) == (600, 800)


def test_valid_tree_loads(tree):
    ds = load_osie(tree)
    assert ds.ids == list(IDS) and len(ds.fixations) == 9
    np.testing.assert_array_equal(ds.points("1001")[:2], [[399.5, 299.5], [119.0, 79.0]])
    np.testing.assert_array_equal(
        ds.load_image("1002"), np.asarray(Image.open(_stim(tree, "1002.jpg")).convert("RGB"))
    )


# ---------------------------------------------------------------------- 16-bit and odd modes
def test_16bit_grey_png_keeps_the_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 257], [0x1234, 0x7FFF, 0x8000, 65535]], dtype=np.uint16)
    f = tmp_path / "grey16.png"
    Image.fromarray(values).save(f)
    assert Image.open(f).mode == "I;16"
    # the trap: Pillow's own conversion clips every value above 255 to white
    assert np.asarray(Image.open(f).convert("RGB"))[1, 0, 0] == 255
    by_hand = np.array([[0, 0, 1, 1], [0x12, 0x7F, 0x80, 255]], dtype=np.uint8)
    got = read_rgb(f)
    assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
    for ch in range(3):
        np.testing.assert_array_equal(got[:, :, ch], by_hand)


def test_16bit_rgb_png_follows_the_same_rule(tmp_path):
    rgb16 = np.array([[[0x1234, 0xFFFF, 0x00FF]], [[0x8000, 0x0100, 0xABCD]]], dtype=np.uint16)
    f = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(f), rgb16[..., ::-1])  # OpenCV writes BGR
    by_hand = np.array([[[0x12, 0xFF, 0x00]], [[0x80, 0x01, 0xAB]]], dtype=np.uint8)
    np.testing.assert_array_equal(read_rgb(f), by_hand)


@pytest.mark.parametrize("dtype, mode", [(np.int32, "I"), (np.float32, "F")])
def test_pixels_of_undefined_range_are_refused(tmp_path, dtype, mode):
    f = tmp_path / f"deep_{mode}.tif"
    Image.fromarray(np.full((4, 5), 70000, dtype=dtype)).save(f)
    assert Image.open(f).mode == mode
    with pytest.raises(DataError, match=rf"deep_{mode}\.tif.*mode '{mode}'.*no defined range"):
        read_rgb(f)


# ---------------------------------------------------------------------- corrupt / truncated JPEG
def _overwrite(data: bytes, seed: int, n: int = 2000) -> bytes:
    b = bytearray(data)
    m = len(b) // 2
    b[m : m + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(b)


def test_jpeg_overwritten_mid_stream_is_refused(tree):
    f = _stim(tree, "1002.jpg")
    original = np.asarray(Image.open(f).convert("RGB")).astype(int)
    f.write_bytes(_overwrite(f.read_bytes(), seed=1))
    # the trap: Pillow decodes this without an error or a warning, the pixels wrong
    plain = np.asarray(Image.open(f).convert("RGB")).astype(int)
    assert (np.abs(plain - original).max(axis=2) > 20).mean() > 0.2
    with pytest.raises(DataError, match=r"1002\.jpg.*JPEG data is corrupt"):
        read_rgb(f)
    ds = load_osie(tree)  # headers are intact: the dataset loads, decoding refuses
    with pytest.raises(DataError, match=r"1002\.jpg.*corrupt"):
        ds.load_image("1002")
    with pytest.raises(DataError, match=r"1 bad image file.*1002\.jpg"):
        ds.validate(full=True)


@pytest.mark.parametrize("kind", ["zeros", "random-2", "random-4"])
def test_other_mid_stream_damage_is_refused(tree, kind):
    f = _stim(tree, "1003.jpg")
    data = f.read_bytes()
    if kind == "zeros":
        m = len(data) // 2
        data = data[:m] + bytes(2000) + data[m + 2000 :]
    else:
        data = _overwrite(data, seed=int(kind[-1]))
    f.write_bytes(data)
    with pytest.raises(DataError, match=r"1003\.jpg.*(corrupt|truncated)"):
        read_rgb(f)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg_is_refused(tree, cut):
    f = _stim(tree, "1001.jpg")
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError, match=r"1001\.jpg.*(corrupt|truncated)"):
        read_rgb(f)


# ---------------------------------------------------------------------- EXIF orientation
def _with_orientation(src: Path, dst: Path, value: int, fmt: str = "JPEG") -> None:
    exif = Image.Exif()
    exif[0x0112] = value
    with Image.open(src) as im:
        im.save(dst, format=fmt, exif=exif.tobytes(), quality=95)


def test_exif_rotation_is_refused_at_load_time(tree):
    f = _stim(tree, "1003.jpg")
    _with_orientation(f, f, 6)
    assert Image.open(f).getexif()[0x0112] == 6
    with pytest.raises(DataError, match=r"1003\.jpg.*EXIF orientation 6.*displayed pixels"):
        read_size(f)
    with pytest.raises(DataError, match=r"1003\.jpg.*EXIF orientation 6"):
        load_osie(tree)
    with pytest.raises(DataError, match=r"1003\.jpg.*EXIF orientation 6"):
        read_rgb(f)


def test_exif_orientation_1_is_accepted_unchanged(tree):
    f = _stim(tree, "1003.jpg")
    _with_orientation(f, f, 1)
    assert read_size(f) == (600, 800)
    np.testing.assert_array_equal(read_rgb(f), np.asarray(Image.open(f).convert("RGB")))


def test_exif_rotation_in_a_png_is_refused(tmp_path, osie_root):
    f = tmp_path / "rotated.png"
    _with_orientation(osie_root / "data" / "stimuli" / "1001.jpg", f, 8, fmt="PNG")
    with pytest.raises(DataError, match=r"rotated\.png.*EXIF orientation 8"):
        read_rgb(f)


# ---------------------------------------------------------------------- stimuli folder scan
@pytest.mark.parametrize("name", ["1004.JPG", "1004.jpeg", "1004.png", "1004.Png"])
def test_unlisted_image_of_any_image_suffix_is_reported(tree, name):
    with Image.open(_stim(tree, "1001.jpg")) as im:
        im.save(_stim(tree, name), format="PNG" if name.lower().endswith("png") else "JPEG")
    (tree / "data" / "stimuli" / "notes.txt").write_text("not an image")  # ignored: no image
    with pytest.raises(DataError, match=r"1 image\(s\) have no fixations: 1004"):
        load_osie(tree)
    with pytest.warns(UserWarning, match=r"1 image\(s\) without fixations skipped: 1004"):
        ds = load_osie(tree, empty="skip")
    assert ds.ids == list(IDS) and ds.report == {"skipped_empty_images": 1}


def test_listed_image_in_upper_case_is_named_with_a_hint(tree):
    _stim(tree, "1002.jpg").rename(_stim(tree, "1002.JPG"))
    with pytest.raises(DataError, match=r"1002\.jpg.*does not exist.*1002\.JPG.*case-sensitive"):
        load_osie(tree)


def test_listed_image_in_upper_case_is_accepted_when_the_mat_says_so(tree):
    _stim(tree, "1002.jpg").rename(_stim(tree, "1002.JPG"))
    write_mat(tree, {name: GOOD_SUBJECTS for name in ("1001.jpg", "1002.JPG", "1003.jpg")})
    ds = load_osie(tree)
    assert ds.ids == list(IDS) and ds["1002"].file.name == "1002.JPG"


def test_two_files_for_one_id_are_refused(tree):
    shutil.copy(_stim(tree, "1001.jpg"), _stim(tree, "1001.jpeg"))
    with pytest.raises(DataError, match=r"stimuli.*ambiguous.*1001 \(1001\.jpeg, 1001\.jpg\)"):
        load_osie(tree)


# ---------------------------------------------------------------------- content manifest
def _sha(path: Path) -> str:
    """Independent reference: SHA-256 over the base name then the bytes, 16 hex digits."""
    return hashlib.sha256(path.name.encode() + path.read_bytes()).hexdigest()[:16]


def test_manifest_names_every_changed_stimulus(tree):
    ds = load_osie(tree)
    manifest = ds.manifest()
    assert manifest == {i: _sha(_stim(tree, f"{i}.jpg")) for i in IDS}
    assert ds.verify_manifest(manifest) == 3
    assert ds.subset(["1003"]).verify_manifest(manifest) == 1
    # same id, other content (same size, so the header check cannot see it)
    shutil.copy(_stim(tree, "1003.jpg"), _stim(tree, "1001.jpg"))
    _stim(tree, "1002.jpg").unlink()
    with pytest.raises(DataError) as err:
        ds.verify_manifest(manifest)
    msg = str(err.value)
    assert "2 stimulus file(s) do not match" in msg
    assert "changed since the manifest: 1001" in msg and "missing: 1002" in msg
    assert "1003" not in msg.replace(str(tree), "")
    with pytest.raises(DataError, match=r"not in the manifest: 1003"):
        ds.subset(["1003"]).verify_manifest({"1001": manifest["1001"]})


# ---------------------------------------------------------------------- fixations.mat traps
def _bad_subject(**fields: object) -> list[dict[str, object]]:
    return [GOOD_SUBJECTS[0], {**GOOD_SUBJECTS[1], **fields}]


def test_2xn_coordinates_are_named_not_reported_outside(tree):
    xy = np.array([[400.0, 120.0, 30.0], [300.0, 80.0, 20.0]])  # (x; y) stacked, 2×N
    write_mat(tree, {"1001.jpg": GOOD_SUBJECTS, "1002.jpg": _bad_subject(
        fix_x=xy, fix_y=xy, fix_duration=np.ones((2, 3)))})
    with pytest.raises(DataError) as err:
        load_osie(tree, empty="skip")
    msg = str(err.value)
    assert "fixations.mat" in msg and "image 1002.jpg" in msg and "subject 2" in msg
    assert "fix_x has shape (2, 3)" in msg and "stacked (x, y)" in msg
    assert "outside" not in msg


@pytest.mark.parametrize(
    "fields, what",
    [
        ({"fix_x": np.array([np.array([1.0, 2.0]), np.array([3.0])], dtype=object)},
         "fix_x is a ragged or non-numeric cell"),
        ({"fix_y": "abc"}, "fix_y is text"),
        ({"fix_x": [400.0, 120.0, 7.0]}, "different lengths 3, 1, 1"),
    ],
)
def test_ragged_or_non_numeric_fixations_name_file_image_subject(tree, fields, what):
    write_mat(tree, {"1001.jpg": GOOD_SUBJECTS, "1003.jpg": _bad_subject(**fields)})
    with pytest.raises(DataError, match=rf"fixations\.mat: image 1003\.jpg.*subject 2.*{what}"):
        load_osie(tree, empty="skip")


@pytest.mark.parametrize("policy", ["error", "clip", "drop"])
def test_infinite_coordinates_are_refused_under_every_policy(tree, policy):
    write_mat(tree, {f"{i}.jpg": GOOD_SUBJECTS for i in ("1001", "1002")}
              | {"1003.jpg": _bad_subject(fix_x=[np.inf], fix_y=[5.0], fix_duration=[1.0])})
    msg = r"fixations\.mat.*1 fixation\(s\) have infinite.*1003 \(1\)"
    with pytest.raises(DataError, match=msg):
        load_osie(tree, out_of_bounds=policy)


def test_from_table_refuses_inf_and_names_the_image(osie_root):
    import pandas as pd

    f = osie_root / "data" / "stimuli" / "1001.jpg"
    table = pd.DataFrame({"image": ["1001", "1001"], "subject": [0, 0], "order": [0, 1],
                          "x": [10.0, -np.inf], "y": [10.0, np.nan], "duration": [1.0, 1.0]})
    with pytest.raises(DataError, match=r"my\.csv: 1 fixation\(s\) have NaN and infinite.*1001"):
        FixationDataset.from_table([Stimulus("1001", f, 600, 800)], table, "my.csv",
                                   out_of_bounds="clip")


def test_16bit_png_stimulus_through_the_dataset(tree):
    """A 16-bit stimulus listed in fixations.mat decodes to the scaled, not the white, image."""
    grey = np.asarray(Image.open(_stim(tree, "1001.jpg")).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(_stim(tree, "1001.png"))
    _stim(tree, "1001.jpg").unlink()
    write_mat(tree, {name: GOOD_SUBJECTS for name in ("1001.png", "1002.jpg", "1003.jpg")})
    ds = load_osie(tree)
    img = ds.load_image("1001")
    want = np.asarray(Image.open(io.BytesIO(_png_of(grey >> 8))).convert("RGB"))
    np.testing.assert_array_equal(img, want)


def _png_of(values: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(b, format="PNG")
    return b.getvalue()
