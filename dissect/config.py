"""Pipeline parameters: a ``params.yaml`` loaded into a nested dict.

Which file: the ``path`` given (``dissect <stage> --params FILE``), else ``params.yaml`` in the
working directory (``dvc repro`` runs the stages in ``pipelines/``), else
``pipelines/params.yaml`` under the working directory (the repository root) — never a file found
relative to the installed package, so an install used from another checkout reads that
checkout's parameters. The CLI logs the file it used.

Relative paths in the file are resolved against the file's folder, so the same file works from
any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dissect.errors import DataError

#: where :func:`find_params` looks, relative to the working directory, in this order
SEARCH = (Path("params.yaml"), Path("pipelines") / "params.yaml")


class Params(dict):
    """A dict of parameters that knows the folder its relative paths are relative to."""

    base: Path
    file: str = "params.yaml"

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


def find_params(path: str | Path | None = None) -> Path:
    """The parameter file to use: ``path`` when given, else the first of :data:`SEARCH` that
    exists in the working directory."""
    if path is not None:
        return Path(path)
    for candidate in SEARCH:
        if candidate.is_file():
            return candidate.resolve()
    raise DataError(Path.cwd(), "no params.yaml here nor pipelines/params.yaml below; pass "
                    "--params FILE")


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read a params.yaml (:func:`find_params`); ``overrides`` maps dotted keys
    (``"stats.threshold"``) to values."""
    path = find_params(path)
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
    params.file = path.name
    return params
