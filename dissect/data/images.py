"""Safe image reading: header-only sizes, strict full decodes, label PNGs.

Every failure is a :class:`~dissect.errors.DataError` naming the file. The rules (none silent):

- **truncation**: Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` switch is forced off while
  decoding here, so a cut-off file is an error and never a silently grey-padded image.
- **corrupt JPEG data**: Pillow's JPEG decoder swallows libjpeg's "Corrupt JPEG data" warnings
  (they are neither Python warnings nor errors: 2,000 random bytes written over the middle of a
  real OSIE JPEG decode without a word, 40 % of the pixels off by more than 20). A JPEG is
  therefore also decoded once by libjpeg-turbo through ``simplejpeg`` with ``strict=True``, which
  turns every such warning into an error; the pixels returned are still Pillow's.
- **bit depth**: a 16-bit greyscale image (Pillow modes ``I;16*``, or ``I`` from a PNG) keeps its
  high byte, ``v >> 8`` (0..65535 → 0..255), the rule Pillow itself applies to 16-bit RGB(A) PNGs;
  32-bit integer (``I`` from other formats) and float (``F``) images have no defined range and
  are refused.
- **EXIF orientation**: an image whose EXIF (or XMP) orientation is 2..8 (displayed rotated or
  mirrored) is refused, by :func:`read_size` as well as the decoders: eye trackers record
  fixations on the pixels shown, and whether the experiment showed the stored or the rotated
  pixels cannot be known from the file, so neither choice would be honest. Other values (1, 0,
  absent) mean "as stored", as in ``PIL.ImageOps.exif_transpose``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from dissect.errors import DataError

__all__ = ["read_size", "read_rgb", "read_label_png", "write_label_png", "IMAGE_SUFFIXES"]

#: file suffixes (compared in lower case) that stimulus folders are scanned for
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)

_JPEG_FORMATS = {"JPEG", "MPO"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
#: simplejpeg output colour space for each JPEG colour space its header reports
_STRICT_COLORSPACE = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


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


def _check_orientation(im: Image.Image, path: Path, *, decoded: bool) -> None:
    """Refuse an EXIF/XMP orientation of 2..8 (see the module docstring).

    Before decoding, a PNG is checked only when its eXIf chunk precedes the pixels (Pillow
    would otherwise decode the whole image to find one); the full decode checks it again.
    """
    if not decoded and im.format == "PNG" and "exif" not in im.info:
        return
    try:
        value = im.getexif().get(ExifTags.Base.Orientation)
    except Exception as e:  # Pillow raises several types for a damaged EXIF block
        raise DataError(
            path, f"EXIF block is unreadable ({e}); its orientation is unknown"
        ) from None
    if isinstance(value, int) and 2 <= value <= 8:
        raise DataError(
            path,
            f"image carries EXIF orientation {value} (shown rotated/mirrored, not as stored); "
            "fixations are recorded on the displayed pixels and whether those were the stored "
            "or the rotated ones cannot be told from the file: save the pixels as displayed "
            "(e.g. PIL.ImageOps.exif_transpose) without the tag, with fixations recorded on them",
        )


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header only (the pixels are not decoded).

    Refuses an image with an EXIF orientation other than "as stored" (module docstring).
    """
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        _check_orientation(im, path, decoded=False)
    if h <= 0 or w <= 0:
        raise DataError(path, f"image header gives an empty size {w}x{h}")
    return int(h), int(w)


def _check_jpeg_data(path: Path) -> None:
    """Decode a JPEG with libjpeg-turbo in strict mode: corrupt-data warnings become errors."""
    try:
        data = path.read_bytes()
        colorspace = _STRICT_COLORSPACE.get(simplejpeg.decode_jpeg_header(data)[2], "RGB")
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except (OSError, ValueError) as e:
        raise DataError(path, f"JPEG data is corrupt ({e})") from None


def _decode(path: Path) -> Image.Image:
    """Open and fully decode an image, refusing truncated or corrupt data and EXIF rotations."""
    im = _open(path)
    try:
        with _strict_decoding():
            im.load()
        _check_orientation(im, path, decoded=True)
        if im.format in _JPEG_FORMATS:
            _check_jpeg_data(path)
    except (OSError, SyntaxError, ValueError) as e:
        im.close()
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"image data is corrupt or truncated ({e})") from None
    return im


def _rgb(im: Image.Image, path: Path) -> np.ndarray:
    """The decoded image as ``uint8 (H, W, 3)``; the bit-depth rules of the module docstring."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and im.format == "PNG"):
        values = np.asarray(im)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise DataError(path, f"{mode} image has values outside 0..65535")
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        raise DataError(
            path,
            f"image has mode {mode!r} ({'32-bit integer' if mode.startswith('I') else 'float'} "
            "pixels) with no defined range; save it as 8- or 16-bit",
        )
    try:
        rgb = im if mode == "RGB" else im.convert("RGB")
    except ValueError as e:
        raise DataError(path, f"cannot convert mode {mode!r} to RGB ({e})") from None
    return np.asarray(rgb, dtype=np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Fully decode an image to ``uint8 (H, W, 3)`` RGB (grey / palette / CMYK are converted).

    Strict: truncated or corrupt data, an EXIF rotation, and pixels of undefined range raise
    :class:`~dissect.errors.DataError` (module docstring); 16-bit grey keeps its high byte.
    """
    path = Path(path)
    with _decode(path) as im:
        arr = _rgb(im, path)
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
