"""Provenance of each stage run: parameters, input hashes, package versions, date and duration.

Every stage writes ``<work>/provenance/<stage>.json``; the report gathers them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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
