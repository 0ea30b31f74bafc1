"""The prepare stage's manifest hashes contents, never paths: the same OSIE data reached through
two different folders gives a byte-identical manifest (so dvc.lock, which hashes the manifest,
is the same in every clone), and changing one stimulus changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dissect.config import load_params
from dissect.stages import common
from dissect.stages.prepare import run_prepare

pytestmark = pytest.mark.osie
PARAMS = Path(__file__).resolve().parents[1] / "pipelines" / "params.yaml"


def _prepare(tmp_path, name, osie, regions):
    folder = tmp_path / name
    params = load_params(PARAMS, {
        "work": str(folder / "work"), "results": str(folder / "results"),
        "data.osie": str(osie), "data.regions": str(regions),
        "data.scenes": str(regions / "scenes.csv"),
        "data.split_file": str(folder / "split.csv"), "progress": False})
    common._dataset.cache_clear()
    run_prepare(params)
    return (folder / "work" / "prepare" / "manifest.json").read_bytes()


def test_manifest_is_the_same_from_two_folders_and_follows_content(tmp_path, osie_root,
                                                                   osie_regions_root):
    a = tmp_path / "clone a" / "osie"
    b = tmp_path / "deeper" / "clone-b" / "data" / "osie"
    for link in (a, b):
        link.parent.mkdir(parents=True)
        link.symlink_to(osie_root, target_is_directory=True)
    first = _prepare(tmp_path, "one", a, osie_regions_root)
    assert first == _prepare(tmp_path, "two", b, osie_regions_root)
    for text in (str(tmp_path), str(osie_root), "/work", "/home"):
        assert text.encode() not in first
    # one stimulus replaced by another image of the same size: the manifest must change
    c = tmp_path / "copy" / "osie"
    shutil.copytree(osie_root / "data" / "eye", c / "data" / "eye")
    (c / "data" / "stimuli").mkdir(parents=True)
    for f in (osie_root / "data" / "stimuli").iterdir():
        (c / "data" / "stimuli" / f.name).symlink_to(f)
    (c / "data" / "stimuli" / "1001.jpg").unlink()
    shutil.copy(osie_root / "data" / "stimuli" / "1002.jpg", c / "data" / "stimuli" / "1001.jpg")
    assert _prepare(tmp_path, "three", c, osie_regions_root) != first
