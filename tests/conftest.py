"""Shared fixtures. Real-data tests find OSIE at ../shared/data (or $DISSECT_DATA) and skip with a
reason where it is absent; the region annotations ship with the repository
(annotations/osie_sr); everything else runs on synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISSECT_DATA", ROOT.parent / "shared" / "data"))
OSIE = DATA / "osie"
OSIE_REGIONS = ROOT / "annotations" / "osie_sr"


@pytest.fixture(scope="session")
def osie_root() -> Path:
    if not (OSIE / "data" / "eye" / "fixations.mat").is_file():
        pytest.skip(f"OSIE not found at {OSIE} (set DISSECT_DATA to the folder holding osie/)")
    return OSIE


@pytest.fixture(scope="session")
def osie_regions_root() -> Path:
    if not (OSIE_REGIONS / "regions.csv").is_file():
        pytest.skip(f"OSIE regions not found at {OSIE_REGIONS}")
    return OSIE_REGIONS


@pytest.fixture(scope="session")
def osie(osie_root):
    from dissect.data import load_osie

    return load_osie(osie_root)


@pytest.fixture(scope="session")
def osie_regions(osie_regions_root, osie):
    from dissect.data import load_regions

    return load_regions(osie_regions_root, dataset=osie)


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, the previous count restored afterwards: tiny
    tensors gain nothing from threads, and on a shared 2-core machine two threads fighting
    another process are many times slower (OpenMP spin-waits). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vgg():
    """VGG-16 with random weights (its ImageNet weights cannot be downloaded here), one per test
    module (a test may change the trunk's weights: nothing leaks into other modules)."""
    from dissect.backbones import load_backbone

    return load_backbone("vgg16", weights="random")


@pytest.fixture(scope="module")
def lite():
    """EfficientNet-Lite0 with its ImageNet weights, one per test module."""
    from dissect.backbones import load_backbone

    return load_backbone("efficientnet_lite0")
