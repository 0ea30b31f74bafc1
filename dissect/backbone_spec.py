"""How ``params.yaml`` names a backbone's factory and layers (no torch import: the parameter
schema uses these checks, and :func:`dissect.backbones.load_custom_backbone` uses them again).

* ``backbone.factory``: ``"package.module:function"`` (the attribute part may be dotted,
  ``"package.module:Class.build"``); the module is imported with :func:`importlib.import_module`,
  so it must be importable (installed, or on ``PYTHONPATH``).
* ``backbone.layers``: a list of layer names (built-in backbones; for ``name: custom`` each
  entry is a dotted module path, which is also the layer's name), or, for ``name: custom`` only,
  a mapping ``{layer name: dotted module path}``. Either form lists the layers in forward order.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CUSTOM", "check_layers", "layer_paths", "module_path_ok", "parse_factory"]

#: ``backbone.name`` of a user-supplied network
CUSTOM = "custom"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY_RE = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)")
_PATH_RE = re.compile(r"[^.\s/]+(?:\.[^.\s/]+)*")


def parse_factory(value: Any) -> tuple[str, str]:
    """``"package.module:function"`` → ``("package.module", "function")``; ValueError when the
    text is not of that form."""
    m = _FACTORY_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"must read 'package.module:function' (a module path, a colon, the "
                         f"name of a function in it), got {value!r}")
    return m.group(1), m.group(2)


def module_path_ok(path: str) -> bool:
    """Whether ``path`` is a dotted module path such as ``features.3`` or ``layer1.0.relu``."""
    return bool(_PATH_RE.fullmatch(path))


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and bool(name.strip()) and "/" not in name


def check_layers(value: Any) -> Any:
    """``backbone.layers`` well formed (either form); returns it unchanged, else ValueError.

    A list: non-empty, distinct non-empty strings without ``/`` (a layer name becomes a Zarr
    array path). A mapping: non-empty, such names as keys, distinct dotted module paths as
    values. Whether the mapping is allowed (``name: custom``) and whether the names exist is
    checked elsewhere.
    """
    if isinstance(value, str):
        raise ValueError(f"must be a list, e.g. [{value}], not the string {value!r}")
    if isinstance(value, list):
        if not value:
            raise ValueError("should have at least 1 item, got []")
        bad = [v for v in value if not _name_ok(v)]
        if bad:
            raise ValueError(f"entries must be non-empty names without '/', got {bad[0]!r} "
                             f"in {value!r}")
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once: {value!r}")
        return value
    if isinstance(value, dict):
        if not value:
            raise ValueError("should have at least 1 item, got {}")
        bad = [k for k in value if not _name_ok(k)]
        if bad:
            raise ValueError(f"layer names must be non-empty strings without '/', got {bad[0]!r}")
        paths = list(value.values())
        bad = [p for p in paths if not isinstance(p, str) or not module_path_ok(p)]
        if bad:
            raise ValueError(f"each layer maps to a dotted module path such as 'features.3', got "
                             f"{bad[0]!r}")
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"maps two layers to the same module {twice[0]!r}: {value!r}")
        return value
    raise ValueError("must be a list of layer names (or, for backbone.name: custom, a mapping "
                     f"{{layer name: module path}}), got {value!r}")


def layer_paths(value: list[str] | dict[str, str]) -> dict[str, str]:
    """Layer name → module path of a custom backbone's ``backbone.layers`` (a list names each
    layer by its path), in the given order."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {str(p): str(p) for p in value}
