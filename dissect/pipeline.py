"""Run the stages of ``pipelines/dvc.yaml`` outside DVC, in dependency order, with a profile.

``make repro PROFILE=quick`` calls ``python -m dissect.pipeline quick``: each stage runs as its
own ``dissect <stage> --set key=value …`` process with the profile's overrides (a YAML mapping of
dotted keys to values, ``pipelines/profiles/<name>.yaml``), so a small configuration exercises
every stage without touching the committed results or ``dvc.lock``. The full run stays
``dvc repro``, which also decides what needs rerunning; this runner always runs every stage.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from graphlib import TopologicalSorter
from pathlib import Path, PurePosixPath

import yaml

from dissect.errors import DataError

__all__ = ["load_profile", "run_profile", "stage_order", "upstream_stages"]


def _path(entry) -> str:
    return str(next(iter(entry)) if isinstance(entry, dict) else entry).rstrip("/")


def _overlap(a: str, b: str) -> bool:
    """Two paths name the same file or folder, or one lies inside the other."""
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pb in pa.parents or pa in pb.parents


def upstream_stages(dvc_yaml: str | Path) -> dict[str, set[str]]:
    """For every stage of a ``dvc.yaml`` (in file order), the stages whose outs it depends on: a
    dep equal to, inside, or containing another stage's out (a folder dep such as ``work/act``
    holds the outs ``work/act/pt.zarr`` and ``work/act/finetuned``)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}
    outs = {name: [_path(o) for o in spec.get("outs") or []] for name, spec in stages.items()}
    return {name: {other for other, o in outs.items() if other != name
                   and any(_overlap(_path(d), out) for d in spec.get("deps") or [] for out in o)}
            for name, spec in stages.items()}


def stage_order(dvc_yaml: str | Path) -> list[str]:
    """Stage names of a ``dvc.yaml`` in an order where every stage comes after the stages whose
    outs it depends on (:func:`upstream_stages`); ties keep file order."""
    graph = upstream_stages(dvc_yaml)
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    order: list[str] = []
    rank = {name: i for i, name in enumerate(graph)}
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=rank.__getitem__)
        order += ready
        sorter.done(*ready)
    return order


def load_profile(profile: str | Path, folder: str | Path = "pipelines/profiles") -> dict:
    """A profile's overrides ``{dotted key: value}``: a path to a YAML file, or a name in
    ``folder``."""
    path = Path(profile)
    if not path.suffix:
        path = Path(folder) / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder).glob("*.yaml"))
        raise DataError(path, f"no such profile (known: {', '.join(known) or 'none'})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise DataError(path, "a profile is a mapping of dotted parameter keys to values")
    return data


def _yaml(value) -> str:
    """One-line YAML of a value (``--set`` parses its right-hand side as YAML)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()  # a scalar's dump ends with a document marker


def commands(overrides: dict, stages: list[str], params: Path) -> list[list[str]]:
    """The ``dissect`` command line of every stage."""
    sets = [a for key, value in overrides.items() for a in ("--set", f"{key}={_yaml(value)}")]
    return [[sys.executable, "-m", "dissect.cli", s, "--params", str(params), *sets]
            for s in stages]


def run_profile(profile: str | Path, *, pipeline: str | Path = "pipelines",
                only_popout: bool = False) -> float:
    """Run every stage of ``<pipeline>/dvc.yaml`` with the profile's overrides; returns seconds.
    ``only_popout`` runs the pop-out stages only (they need no OSIE)."""
    pipeline = Path(pipeline)
    overrides = load_profile(profile, pipeline / "profiles")
    stages = stage_order(pipeline / "dvc.yaml")
    if only_popout:
        stages = [s for s in stages if s.startswith("popout")]
    t0 = time.perf_counter()
    for cmd in commands(overrides, stages, Path("params.yaml")):  # relative to cwd=pipeline
        print("$ dissect " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=pipeline)
        if proc.returncode != 0:
            raise SystemExit(f"stage {cmd[3]} failed (exit {proc.returncode})")
    seconds = time.perf_counter() - t0
    print(f"profile {profile}: {len(stages)} stages in {seconds:.0f} s", file=sys.stderr)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dissect.pipeline", description=__doc__)
    parser.add_argument("profile", help="a name in pipelines/profiles/ or a YAML file")
    parser.add_argument("--pipeline", default="pipelines", help="folder of dvc.yaml/params.yaml")
    parser.add_argument("--popout-only", action="store_true", help="only the pop-out stages")
    args = parser.parse_args(argv)
    try:
        run_profile(args.profile, pipeline=args.pipeline, only_popout=args.popout_only)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
