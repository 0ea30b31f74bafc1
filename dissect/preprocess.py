"""Image preprocessing: uint8 RGB images → the normalised float tensors a backbone reads.

The package's one input convention (DESIGN.md, "Conventions"): ``x / 255`` → bilinear resize with
antialiasing to the model input size (224×224 by default) → ImageNet mean / std per channel.
:class:`Preprocess` describes itself (:meth:`Preprocess.to_dict`) for cache metadata and keys.

A module of its own, below both :mod:`dissect.backbones` (a ``Backbone`` carries its
``Preprocess``) and :mod:`dissect.capture` (the hooks), so that neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dissect.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_METHOD", "Preprocess"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

RESIZE_METHOD = (
    "torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False)"
)

@dataclass(frozen=True)
class Preprocess:
    """uint8 RGB images → normalised float tensors ``(B, 3, h, w)``.

    Steps: ``x / 255`` (float32, [0, 1]) → bilinear resize with antialiasing
    (``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``,
    deterministic on CPU) to ``size = (height, width)`` → ``(x - mean) / std`` per channel.
    ``size=None`` keeps each image's native resolution (a list must then share one size).
    """

    size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"Preprocess size must be (height, width) > 0, got {self.size}")
            object.__setattr__(self, "size", size)
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("Preprocess mean and std need one value per RGB channel")
        if min(std) <= 0:
            raise ValueError(f"Preprocess std must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored in cache metadata and hashed into its key)."""
        return {
            "size": None if self.size is None else list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": "x / 255 (float32)",
            "resize": RESIZE_METHOD,
        }

    def __call__(self, images: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> Tensor:
        """Preprocess one ``(H, W, 3)`` uint8 image or a list of them → ``(B, 3, h, w)``."""
        if isinstance(images, np.ndarray | Tensor) and images.ndim == 3:
            images = [images]
        batch = [_to_chw_float(img, f"image[{i}]") for i, img in enumerate(images)]
        if not batch:
            raise DataError("images", "empty list of images")
        if self.size is None:
            shapes = {tuple(t.shape[-2:]) for t in batch}
            if len(shapes) > 1:
                raise DataError(
                    "images",
                    "Preprocess(size=None) keeps native sizes, but the batch mixes "
                    f"{sorted(shapes)}; give a size or batch images of one size",
                )
            x = torch.stack(batch)
        else:
            resized = []
            for t in batch:
                if tuple(t.shape[-2:]) != self.size:
                    t = F.interpolate(
                        t[None], size=self.size, mode="bilinear", antialias=True,
                        align_corners=False,
                    )[0]
                resized.append(t)
            x = torch.stack(resized)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _to_chw_float(img: np.ndarray | Tensor, name: str) -> Tensor:
    if isinstance(img, np.ndarray):
        img = np.ascontiguousarray(img)
        t = torch.from_numpy(img if img.flags.writeable else img.copy())
    else:
        t = img
    if t.dtype != torch.uint8:
        raise DataError(name, f"expected a uint8 RGB image, got dtype {t.dtype}")
    if t.ndim != 3 or t.shape[2] != 3:
        raise DataError(name, f"expected an (H, W, 3) RGB image, got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise DataError(name, f"empty image of shape {tuple(t.shape)}")
    return t.permute(2, 0, 1).to(torch.float32) / 255.0
