"""Provenance of each stage run: parameters, input hashes, package versions, date and duration.

Every stage writes ``<work>/provenance/<stage>.json``; the report gathers them. The closing line
of ``dissect <stage>`` (:func:`closing_line`) says what the stage wrote, read from its ``outs``
in ``dvc.yaml`` (:func:`stage_outputs`), and how long it took.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import stat
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("dissect", "torch", "numpy", "scipy", "pandas", "xarray", "zarr", "dask",
            "statsmodels", "seaborn", "opencv-contrib-python-headless", "dvc")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (and Python); "not installed" where absent."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hash_files(paths, *, root: str | Path | None = None, chunk: int = 1 << 20) -> str:
    """sha256 (16 hex) over the names and bytes of files, in sorted order. A file's name is its
    path relative to ``root`` when given (so files of the same name in two sub-folders differ),
    else its base name — never an absolute path, so the hash is the same in every clone."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update((p.relative_to(root).as_posix() if root is not None else p.name).encode())
        with open(p, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


@contextmanager
def stage_record(work: Path, stage: str, params: dict[str, Any] | None = None):
    """Time a stage and write its provenance record; yields a dict the stage may add to."""
    record: dict[str, Any] = {
        "stage": stage,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params or {},
        "versions": versions(),
        # `make repro` sets DISSECT_RUN_ID once per run, so the report can tell which records
        # come from the same run
        "run": os.environ.get("DISSECT_RUN_ID"),
    }
    t0 = time.perf_counter()
    yield record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    torch = sys.modules.get("torch")  # recorded when the stage used torch (results depend on it)
    if torch is not None:
        record["torch_threads"] = torch.get_num_threads()
    out = Path(work) / "provenance" / f"{stage}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))


# --------------------------------------------------------------------------------------------
# what a stage wrote: the closing line of `dissect <stage>`


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: leaf}`` of a nested mapping (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _under(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def stage_outputs(params: Any, stage: str) -> list[Path] | None:
    """The outputs of ``stage`` as this run writes them: the ``outs`` of the stage in the
    ``dvc.yaml`` beside the parameter file, each moved where an overridden path parameter puts
    it (a profile's ``work: ../work/quick`` moves ``../work/readouts`` to
    ``../work/quick/readouts``; the longest matching parameter wins). ``None`` when there is no
    ``dvc.yaml`` there or it has no such stage (or no outs)."""
    base = Path(params.base)
    dvc = base / "dvc.yaml"
    if not dvc.is_file():
        return None
    spec = ((yaml.safe_load(dvc.read_text()) or {}).get("stages") or {}).get(stage)
    if not isinstance(spec, dict) or not spec.get("outs"):
        return None
    file = base / str(getattr(params, "file", "params.yaml"))
    raw = flatten(yaml.safe_load(file.read_text()) or {}) if file.is_file() else {}
    now = flatten(dict(params))
    moved = [(_under(base, old), _under(base, now[key])) for key, old in raw.items()
             if isinstance(old, str) and isinstance(now.get(key), str) and now[key] != old]
    out = []
    for entry in spec["outs"]:
        text = str(next(iter(entry)) if isinstance(entry, dict) else entry)
        # DVC's templating reads the file's values (overrides are applied below)
        text = re.sub(r"\$\{\s*([^}\s]+)\s*\}", lambda m: str(raw.get(m[1], m[0])), text)
        path = _under(base, text)
        hits = [(old, new) for old, new in moved if old == path or old in path.parents]
        if hits:
            old, new = max(hits, key=lambda h: len(h[0].parts))
            path = new / path.relative_to(old)
        out.append(path)
    return out


def disk_usage(path: str | Path) -> tuple[int, int]:
    """``(files, bytes)`` of a file or a folder (every regular file below it, links not
    followed); ``(0, 0)`` when it does not exist."""
    path = Path(path)
    if path.is_file():
        return 1, path.stat().st_size
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def human_size(n: int) -> str:
    """Bytes in decimal units, three significant digits: ``'812 B'``, ``'12.3 kB'``,
    ``'156 MB'``, ``'1.2 GB'``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 999.5 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError  # pragma: no cover


def _shown(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if path == root or root in path.parents:
            return path.relative_to(root).as_posix() or "."
    return str(path)


def _repo_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / ".dvc").is_dir():
            return folder
    return None


def describe_output(path: str | Path, roots: list[Path] | None = None) -> str:
    """``'work/readouts (14 files, 156 MB)'`` for a folder, ``'results/x.csv (40 kB)'`` for a
    file, ``'… (missing)'``; the path relative to the first of ``roots`` holding it (default:
    the working directory), else absolute."""
    path = Path(path).resolve()
    shown = _shown(path, [Path(r).resolve() for r in (roots or [Path.cwd()])])
    if not path.exists():
        return f"{shown} (missing)"
    files, size = disk_usage(path)
    if path.is_file():
        return f"{shown} ({human_size(size)})"
    return f"{shown} ({files} file{'' if files == 1 else 's'}, {human_size(size)})"


def closing_line(stage: str, params: Any, result: Any, seconds: float) -> str:
    """The last line of ``dissect <stage>``: what it wrote (:func:`stage_outputs`, else the
    path(s) the stage returned) with file counts and sizes, and how long it took —
    ``dissect train: wrote work/readouts (14 files, 156 MB), … in 1234.5 s``; ``dissect
    <stage>: done in N s`` when neither names an output or they cannot be read."""
    done = f"dissect {stage}: done in {seconds:.1f} s"
    try:
        outs = stage_outputs(params, stage) if params is not None else None
        if outs is None:
            items = result if isinstance(result, list | tuple) else [result]
            if not items or not all(isinstance(p, Path) for p in items):
                return done
            outs = list(items)
        roots = [Path.cwd()]
        repo = _repo_root(Path(params.base).resolve()) if params is not None else None
        if repo is not None:
            roots.append(repo)
        wrote = ", ".join(describe_output(p, roots) for p in outs)
    except (OSError, ValueError, yaml.YAMLError):
        return done
    return f"dissect {stage}: wrote {wrote} in {seconds:.1f} s"
