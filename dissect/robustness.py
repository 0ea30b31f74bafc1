"""Robustness to heavy Gaussian blur of the input (Sun, Prabhushankar & AlRegib 2020, Table 2).

The paper blurs MIT1003's stimuli with a Gaussian of radius 50 px and scores every method again
on the blurred images against the *original* fixations: a model that reads saliency from what
is left (global layout, colour blobs) keeps its score, one that needs fine detail loses it.

**The blur on OSIE.** MIT1003's images are 1024 px wide (most of them 1024 × 768), OSIE's 800:
the radius is scaled by the width, ``σ = 50 × W / 1024`` (39.06 px for OSIE's 800 px;
:func:`reference_blur_sigma`). "Radius" is taken as the Gaussian's standard deviation, as in
PIL's ``ImageFilter.GaussianBlur(radius)`` and MATLAB's ``imgaussfilt(I, sigma)``. The blur is
OpenCV's ``cv2.GaussianBlur`` (kernel size derived from σ by OpenCV, reflected borders
``BORDER_REFLECT_101``), per RGB channel of the uint8 image, rounded back to uint8
(:func:`gaussian_blur`). Fixations are the original image's.

**Scores.** NSS and CC of each model's raw map (:func:`dissect.metrics.nss`, :func:`~dissect.
metrics.cc` with the scorecard's conventions; the density as CC's reference, the fixation density
of ``gt`` parameters) — the same scores the ``evaluate`` stage gives the clean images, so the
drop is ``clean − blurred`` per image, averaged with a paired image-bootstrap interval
(:func:`dissect.image_means.paired_differences`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from dissect.data.maps import density_map
from dissect.errors import DataError
from dissect.metrics import cc, nss
from dissect.models.base import SaliencyModel, StimulusImage

__all__ = ["REFERENCE_RADIUS", "REFERENCE_WIDTH", "BlurredImages", "blurred_records",
           "gaussian_blur", "reference_blur_sigma", "score_nss_cc"]

#: Sun et al.'s blur: radius 50 px on MIT1003's 1024-px-wide images
REFERENCE_RADIUS: float = 50.0
REFERENCE_WIDTH: int = 1024


def reference_blur_sigma(width: int, radius: float = REFERENCE_RADIUS,
                         reference_width: int = REFERENCE_WIDTH) -> float:
    """The paper's blur scaled to an image ``width`` px wide: ``radius × width / reference``."""
    if width <= 0 or radius < 0 or reference_width <= 0:
        raise DataError("blur", f"width {width}, radius {radius} and reference width "
                                f"{reference_width} must be positive")
    return float(radius) * float(width) / float(reference_width)


def gaussian_blur(pixels: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    """``cv2.GaussianBlur`` of an ``(H, W, 3)`` uint8 image with standard deviation ``sigma``
    px in both directions (kernel size from σ, ``BORDER_REFLECT_101``); σ = 0 → a copy."""
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError("image", f"expected a uint8 (H, W, 3) image, got {arr.dtype} "
                                 f"{arr.shape}")
    if sigma < 0 or not np.isfinite(sigma):
        raise DataError("blur", f"sigma must be finite and >= 0, got {sigma}")
    if sigma == 0:
        return arr.copy()
    return cv2.GaussianBlur(np.ascontiguousarray(arr), (0, 0), sigmaX=float(sigma),
                            sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)


class BlurredImages:
    """A fixation dataset whose ``load_image`` returns the blurred image (σ from the image's
    width by :func:`reference_blur_sigma` with ``radius`` / ``reference_width``); everything
    else (ids, sizes, fixations) is the wrapped dataset's."""

    def __init__(self, dataset: Any, radius: float = REFERENCE_RADIUS,
                 reference_width: int = REFERENCE_WIDTH):
        self.dataset = dataset
        self.radius = float(radius)
        self.reference_width = int(reference_width)

    def sigma(self, image_id: str) -> float:
        return reference_blur_sigma(int(self.dataset[image_id].size[1]), self.radius,
                                    self.reference_width)

    def load_image(self, image_id: str) -> NDArray[np.uint8]:
        return gaussian_blur(self.dataset.load_image(image_id), self.sigma(image_id))

    def __getitem__(self, image_id: str) -> Any:
        return self.dataset[image_id]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # ids, points, fixations_of, …
        return getattr(self.dataset, name)


def score_nss_cc(smap: NDArray[np.float64], points: NDArray[np.float64],
                 density: NDArray[np.float64], *, conventions: str = "dissect",
                 source: str = "map") -> dict[str, float]:
    """NSS at the fixations and CC with the fixation density of one map (the scorecard's
    functions and conventions); a map of the wrong shape or with NaN/inf is a ``DataError``."""
    m = np.asarray(smap, dtype=np.float64)
    if m.shape != density.shape:
        raise DataError(source, f"map shape {m.shape} differs from the image's {density.shape}")
    if not np.all(np.isfinite(m)):
        raise DataError(source, "map has NaN or inf values")
    return {"nss": nss(m, points, conventions=conventions),
            "cc": cc(m, density, conventions=conventions)}


def blurred_records(models: Mapping[str, SaliencyModel], dataset: Any, ids: Sequence[str], *,
                    gt_sigma_px: float, drop_first: bool = True, conventions: str = "dissect",
                    radius: float = REFERENCE_RADIUS, reference_width: int = REFERENCE_WIDTH,
                    progress: bool = False) -> pd.DataFrame:
    """NSS and CC of every model's map of each *blurred* image (:class:`BlurredImages`)
    against the original fixations: tidy ``model, image, sigma_px, nss, cc``."""
    from tqdm.auto import tqdm

    blurred = BlurredImages(dataset, radius, reference_width)
    rows = []
    for i in tqdm(list(ids), desc="blurred images", unit="image", disable=not progress):
        stim = StimulusImage(str(i), blurred.load_image(i))
        pts = dataset.points(i, drop_first=drop_first)
        if len(pts) == 0:
            raise DataError(str(i), "no fixations to score")
        dens = density_map(pts, tuple(dataset[i].size), sigma=float(gt_sigma_px))
        for label, model in models.items():
            scores = score_nss_cc(model.saliency_map(stim), pts, dens, conventions=conventions,
                                  source=f"{label} on blurred image {i}")
            rows.append({"model": label, "image": str(i), "sigma_px": blurred.sigma(i),
                         **scores})
    return pd.DataFrame(rows)
