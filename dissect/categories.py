"""The 12 salient-region categories of He et al. (2019): codes, names, display order, clusters.

This is the one place the category table lives. Codes are the pixel values of the OSIE-SR
``SegmentationClass`` PNGs. ``cluster`` is the factor of the study's ANOVA on output difference
(Eq. 3): "head" (person head, animal head) vs "rest".
"""

from __future__ import annotations

from dataclasses import dataclass

from dissect.errors import DataError


@dataclass(frozen=True)
class Category:
    code: int
    name: str
    cluster: str  # "head" or "rest"


CATEGORIES: tuple[Category, ...] = (
    Category(1, "person head", "head"),
    Category(10, "person part", "rest"),
    Category(16, "animal head", "head"),
    Category(22, "animal part", "rest"),
    Category(27, "object", "rest"),
    Category(37, "text", "rest"),
    Category(46, "symbol", "rest"),
    Category(51, "vehicle", "rest"),
    Category(57, "food", "rest"),
    Category(68, "drink", "rest"),
    Category(63, "plant", "rest"),
    Category(73, "other", "rest"),
)
"""Display order = the study's table order."""

NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
BY_CODE: dict[int, Category] = {c.code: c for c in CATEGORIES}
BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}


def name_of(code: int, source: str | None = None) -> str:
    """Category name of a code; a code not in the table raises :class:`DataError`."""
    try:
        return BY_CODE[int(code)].name
    except KeyError:
        raise DataError(
            source, f"category code {code} is not in the category table {sorted(BY_CODE)}"
        ) from None


def code_of(name: str, source: str | None = None) -> int:
    """Category code of a name (case-insensitive, '_' allowed for ' ')."""
    key = str(name).strip().lower().replace("_", " ")
    try:
        return BY_NAME[key].code
    except KeyError:
        raise DataError(source, f"category {name!r} is not in the category table {NAMES}") from None
