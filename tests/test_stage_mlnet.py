"""The ML-Net stages' own logic: the canvas-aspect check of the unit dissection, the prior's
centre-to-border ratio, the learned-prior figure, and the training data's bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dissect.errors import DataError
from dissect.figures import prior_figure, save_figure
from dissect.stages.mlnet_dissect import _centre_to_border, check_aspect


def test_check_aspect_names_the_first_bad_image():
    check_aspect({"a": (600, 800), "b": (300, 400)}, (480, 640), "test")
    with pytest.raises(DataError, match=r"^c: test: a 600×600 image .* \(2 such image\(s\)\)"):
        check_aspect({"a": (600, 800), "c": (600, 600), "d": (10, 10)}, (480, 640), "test")


def test_centre_to_border_hand_computed():
    m = np.ones((30, 30))
    m[10:20, 10:20] = 4.0  # the central ninth
    assert _centre_to_border(m) == pytest.approx(4.0)  # the border band (3 px) is all ones
    m[:3, :] = 2.0  # the top band: 90 of the band's 324 pixels are 2
    band = np.ones((30, 30), bool)
    band[3:27, 3:27] = False
    assert _centre_to_border(m) == pytest.approx(4.0 / m[band].mean())


def test_prior_figure(tmp_path):
    yy, xx = np.mgrid[0:60, 0:80]
    prior = 1 + np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 200.0)
    centre = prior / prior.sum()
    out = save_figure(prior_figure(prior, centre, cc=1.0), tmp_path / "prior.png")
    assert out.stat().st_size > 1000
    with pytest.raises(DataError, match="differ"):
        prior_figure(prior, centre[:-1])
    with pytest.raises(DataError, match="non-finite"):
        prior_figure(np.full((4, 4), np.nan), np.ones((4, 4)))


def test_training_data_refuses_an_image_without_fixations():
    from dissect.stages.mlnet import training_data

    class Empty:
        def load_image(self, i):
            return np.zeros((80, 80, 3), np.uint8)

        def points(self, i, drop_first=True):
            return np.zeros((0, 2))

    params = {"gt": {"sigma_deg": 1.0, "px_per_degree": 24.0}, "data": {"drop_first": True}}
    with pytest.raises(DataError, match="^img7: has no fixations"):
        training_data(params, Empty(), ["img7"], net=None)
