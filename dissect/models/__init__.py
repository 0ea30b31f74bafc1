"""Saliency models used as references: classical (non-deep) models in ``dissect.models.classical``
(Itti–Koch, GBVS, BMS, spectral residual, fine-grained), with a registry and a loader."""

from dissect.models.classical import (
    BMS,
    CLASSICAL_MODELS,
    GBVS,
    ClassicalSaliency,
    FineGrained,
    IttiKoch,
    SpectralResidual,
    load_classical,
)

__all__ = [
    "BMS",
    "CLASSICAL_MODELS",
    "GBVS",
    "ClassicalSaliency",
    "FineGrained",
    "IttiKoch",
    "SpectralResidual",
    "load_classical",
]
