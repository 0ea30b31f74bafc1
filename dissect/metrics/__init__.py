"""Saliency metrics (MIT/Tübingen benchmark definitions) and exact unit × region NSS / NMM.

* :mod:`dissect.metrics.conventions` — the pixel rule ``(rint(y), rint(x))`` and the
  constant-map tolerance, defined once.
* :mod:`dissect.metrics.saliency` — ``nss, cc, sim, kld, auc_judd, auc_borji, sauc,
  information_gain, nmm`` on 2-D maps, numpy float64.
* :mod:`dissect.metrics.region` — ``region_nss`` (He et al. 2019, Eq. 1), ``unit_nmm``,
  ``upsample_matrix``, ``upsampled_moments`` and the differentiable ``nss_at_points_torch``:
  statistics of bilinearly upsampled unit maps computed exactly without upsampling.

torch is imported lazily (only by ``nss_at_points_torch``).
"""

from dissect.metrics.conventions import CONSTANT_RTOL, pixel_indices
from dissect.metrics.region import (
    nss_at_points_torch,
    region_nss,
    unit_nmm,
    upsample_matrix,
    upsampled_moments,
)
from dissect.metrics.saliency import (
    EPS,
    auc_borji,
    auc_judd,
    cc,
    fixation_pixels,
    information_gain,
    kld,
    nmm,
    nss,
    point_pixels,
    sauc,
    sim,
)

__all__ = [
    "CONSTANT_RTOL",
    "EPS",
    "auc_borji",
    "auc_judd",
    "cc",
    "fixation_pixels",
    "information_gain",
    "kld",
    "nmm",
    "nss",
    "nss_at_points_torch",
    "pixel_indices",
    "point_pixels",
    "region_nss",
    "sauc",
    "sim",
    "unit_nmm",
    "upsample_matrix",
    "upsampled_moments",
]
