"""Pipeline parameters: a ``params.yaml`` loaded into a nested dict.

Which file: the ``path`` given (``dissect <stage> --params FILE``), else ``params.yaml`` in the
working directory (``dvc repro`` runs the stages in ``pipelines/``), else
``pipelines/params.yaml`` under the working directory (the repository root) — never a file found
relative to the installed package, so an install used from another checkout reads that
checkout's parameters. The CLI logs the file it used.

Relative paths in the file are resolved against the file's folder, so the same file works from
any working directory.

:func:`load_params` validates the parameters, overrides applied, against the schema of
:mod:`dissect.params_schema`: an unknown or missing key, a wrong type, NaN or a value out of
range is refused with :class:`ParamsError`, one line per key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dissect.errors import DataError
from dissect.params_schema import ParamsError, validate_params

__all__ = ["SEARCH", "Params", "ParamsError", "find_params", "load_params"]

#: where :func:`find_params` looks, relative to the working directory, in this order
SEARCH = (Path("params.yaml"), Path("pipelines") / "params.yaml")


class Params(dict):
    """A dict of parameters that knows the folder its relative paths are relative to.

    Built directly (tests), it is not validated; :func:`load_params` validates."""

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
    (``"stats.threshold"``) to values. The result is validated
    (:func:`dissect.params_schema.validate_params`): :class:`ParamsError` names the file and
    every refused key."""
    path = find_params(path)
    if not path.is_file():
        raise DataError(path, "parameter file not found")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise DataError(path, "not valid YAML: " + " ".join(str(exc).split())) from None
    if not isinstance(data, dict):
        raise DataError(path, "parameter file must hold a mapping")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = str(key).split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: i + 1])
                raise ParamsError(path, [(str(key), f"cannot be set: {where} is not a section "
                                                    f"(it holds {node!r})")])
        node[leaf] = value
    data = validate_params(data, path, {str(k) for k in overrides or {}})
    params = Params(data)
    params.base = path.resolve().parent
    params.file = path.name
    return params
