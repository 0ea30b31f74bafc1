"""Errors raised on bad input. Every message names the offending file (or item) and the problem."""

from __future__ import annotations

from pathlib import Path


class DissectError(Exception):
    """Base class of the errors of this package."""


class DataError(DissectError, ValueError):
    """Bad input data: corrupt image, missing fixations, mismatched mask, unknown code, NaN…"""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class WeightsError(DissectError, FileNotFoundError):
    """Pretrained weights are not available; the message says how to obtain them."""


class StaleCacheError(DissectError):
    """A cache exists for different arguments and would be silently reused."""
