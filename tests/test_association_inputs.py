"""`associate` refuses inputs that would give silently wrong numbers: region masks of another
size than their image (fixations would land in the wrong regions, none outside the mask), and
an image id listed twice (its regions would be counted twice)."""

from __future__ import annotations

import numpy as np
import pytest
from test_pipeline_dask import synthetic_inputs, tiny_backbone

from dissect.association import associate
from dissect.cache import extract_activations
from dissect.data import RegionSet
from dissect.errors import DataError


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assoc")
    dataset, regions = synthetic_inputs(folder)
    store = folder / "act.zarr"
    extract_activations(dataset, tiny_backbone(), ["c1", "c2"], store)
    return dataset, regions, store


def test_region_masks_of_another_size_are_refused(inputs):
    dataset, regions, store = inputs
    ok = associate(store, dataset, regions)
    assert np.isfinite(ok["c1"].values).any()
    # the same masks at twice the resolution (what loading them without the dataset allows):
    # every fixation still falls inside the mask, in the wrong place
    big = {i: np.kron(regions.instance_mask(i), np.ones((2, 2), np.int32)) for i in regions.images}
    doubled = RegionSet.from_masks(regions.table, big, "doubled")
    with pytest.raises(DataError, match=r"s00.*is 40x56 but its region masks are 80x112"):
        associate(store, dataset, doubled)


def test_an_image_listed_twice_is_refused(inputs):
    dataset, regions, store = inputs
    with pytest.raises(DataError, match=r"more than once.*s01"):
        associate(store, dataset, regions, image_ids=["s00", "s01", "s01"])
    one = associate(store, dataset, regions, image_ids=["s01"])["c1"]
    assert set(one["image"].values) == {"s01"}
