"""Pipeline parameters: ``pipelines/params.yaml`` loaded into a nested dict.

Relative paths in the file are resolved against the file's folder (where ``dvc repro`` runs the
stages), so the same file works from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dissect.errors import DataError

DEFAULT_PARAMS = Path(__file__).resolve().parents[1] / "pipelines" / "params.yaml"


class Params(dict):
    """A dict of parameters that knows the folder its relative paths are relative to."""

    base: Path

    def path(self, value: str | Path | None) -> Path | None:
        """Resolve a path value from the file against its folder (``None`` stays ``None``)."""
        if value is None:
            return None
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else (self.base / p).resolve()

    @property
    def work(self) -> Path:
        return self.path(self["work"])

    @property
    def results(self) -> Path:
        return self.path(self["results"])


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read a params.yaml; ``overrides`` maps dotted keys (``"stats.threshold"``) to values."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.is_file():
        raise DataError(path, "parameter file not found")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise DataError(path, "parameter file must hold a mapping")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params = Params(data)
    params.base = path.resolve().parent
    return params
