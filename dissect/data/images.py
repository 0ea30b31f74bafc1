"""Safe image reading: header-only sizes, full decodes that refuse truncated files, label PNGs.

Every failure is a :class:`~dissect.errors.DataError` naming the file. Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES`` switch is forced off while decoding here, so a cut-off JPEG
is an error and never a silently grey-padded image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from dissect.errors import DataError

__all__ = ["read_size", "read_rgb", "read_label_png", "write_label_png"]


@contextmanager
def _strict_decoding() -> Iterator[None]:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(path, "image file does not exist") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown format or corrupt header)") from None
    except OSError as e:
        raise DataError(path, f"cannot open image: {e}") from None


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header only (the pixels are not decoded)."""
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
    if h <= 0 or w <= 0:
        raise DataError(path, f"image header gives an empty size {w}x{h}")
    return int(h), int(w)


def _decode(path: Path) -> Image.Image:
    im = _open(path)
    try:
        with _strict_decoding():
            im.load()
    except (OSError, SyntaxError, ValueError) as e:
        im.close()
        raise DataError(path, f"image data is corrupt or truncated ({e})") from None
    return im


def read_rgb(path: str | Path) -> np.ndarray:
    """Fully decode an image to ``uint8 (H, W, 3)`` RGB (grey / palette / CMYK are converted)."""
    path = Path(path)
    with _decode(path) as im:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8)
    return arr


_LABEL_MODES = {"L", "P", "I;16", "I;16B", "I;16L", "I"}


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label image (region ids or category codes) as a 2-D integer array.

    Palette PNGs give their raw indices (the palette is ignored). RGB/RGBA label images are
    refused: their values would be colours, not labels.
    """
    path = Path(path)
    with _decode(path) as im:
        if im.mode not in _LABEL_MODES:
            raise DataError(
                path, f"label image has mode {im.mode!r}; expected single-channel (L, P or I;16)"
            )
        arr = np.asarray(im)
    return arr.astype(np.int32, copy=False)


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write a 2-D label array (values 0..255) as an 8-bit greyscale ('L') PNG."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(path, f"label array must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DataError(
            path, f"labels must lie in 0..255 for an 8-bit PNG, got {labels.min()}..{labels.max()}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)
