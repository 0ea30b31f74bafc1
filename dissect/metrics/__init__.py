"""Saliency metrics (MIT/Tübingen benchmark definitions) and exact unit × region NSS / NMM.

* :mod:`dissect.metrics.conventions` — the pixel rule ``(rint(y), rint(x))``, the
  constant-map tolerance and the ``conventions`` switch (``CONVENTIONS``: ``"dissect"``, the
  project's defaults, or ``"mit"``, the MIT benchmark's MATLAB code), defined once.
* :mod:`dissect.metrics.saliency` — ``nss, cc, sim, kld, auc_judd, auc_borji, sauc,
  information_gain, nmm`` on 2-D maps, numpy float64; each but ``nmm`` takes
  ``conventions=``; ``matlab_imresize`` / ``matlab_colon`` reproduce the MATLAB primitives the
  ``"mit"`` conventions need.
* :mod:`dissect.metrics.region` — ``region_nss`` (He et al. 2019, Eq. 1), ``unit_nmm``,
  ``upsample_matrix``, ``upsampled_moments`` and the differentiable ``nss_at_points_torch``:
  statistics of bilinearly upsampled unit maps computed exactly without upsampling.

torch is imported lazily (only by ``nss_at_points_torch``).
"""

from dissect.metrics.conventions import CONSTANT_RTOL, CONVENTIONS, check_conventions, pixel_indices
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
    imresize_matrix,
    information_gain,
    kld,
    matlab_colon,
    matlab_imresize,
    nmm,
    nss,
    point_pixels,
    sauc,
    sim,
)

__all__ = [
    "CONSTANT_RTOL",
    "CONVENTIONS",
    "EPS",
    "auc_borji",
    "auc_judd",
    "cc",
    "check_conventions",
    "fixation_pixels",
    "imresize_matrix",
    "information_gain",
    "kld",
    "matlab_colon",
    "matlab_imresize",
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
