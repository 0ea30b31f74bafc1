"""DVC overhead of the staged pipeline: a no-op ``dvc repro`` and a rerun after changing only T.

Runs on a throwaway copy of the repository layout whose ``pipelines/dvc.yaml`` is the project's
with every ``cmd`` replaced by a cheap fake stage (see ``tests/test_dvc_pipeline.py``), so the
times are DVC's own bookkeeping (hashing deps, checking params and outs, the lock file) plus one
Python start per rerun stage, not the stages' work. Prints e.g.
``noop 2.1 s, after T change 3.4 s (stages rerun: statistics, figures, report)`` and, last,
``noop 2.1``.

    .venv/bin/python bench/dvc_rerun.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_dvc_pipeline import clone, make_fake_pipeline, repro, set_param  # noqa: E402


def timed_repro(pipe: Path) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    ran = repro(pipe)
    return time.perf_counter() - t0, ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timings per case (best is kept)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvc_rerun_"))
    try:
        pipe = make_fake_pipeline(tmp / "base")
        full, ran = timed_repro(pipe)
        print(f"full fake repro: {full:.1f} s ({len(ran)} stages)")
        noop = []
        for _ in range(args.repeat):
            t, ran = timed_repro(pipe)
            if ran:
                raise SystemExit(f"a no-op repro ran stages {ran}")
            noop.append(t)
        after_t, rerun = [], []
        old = yaml.safe_load((pipe / "params.yaml").read_text())["stats"]["threshold"]
        for i in range(args.repeat):
            copy = clone(pipe, tmp / f"copy{i}")
            set_param(copy, "stats.threshold", float(old) + 0.5)
            t, rerun = timed_repro(copy)
            after_t.append(t)
        print(f"noop {min(noop):.1f} s, after T change {min(after_t):.1f} s "
              f"(stages rerun: {', '.join(rerun)})")
        print(f"noop {min(noop):.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
