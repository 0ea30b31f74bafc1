"""The DECLARED dependency graph of ``pipelines/dvc.yaml`` reruns what it must and nothing else
(issue "Staged, cached, scalable pipeline").

The real stages are far too slow for a unit test, so the test runs DVC for real on a throwaway
copy of the repository layout whose ``dvc.yaml`` is the project's, deps, params and outs
untouched, with only every ``cmd`` replaced by a fake stage (:data:`FAKE_STAGE`): it writes each
declared out (and a provenance record, like `dissect.provenance.stage_record`) with a digest of
the stage's declared deps and params, so an out changes exactly when the stage's declared inputs
change, as with the real stages. Then:

(a) a second ``dvc repro`` runs nothing and ``dvc status`` is clean;
(b) changing only ``stats.threshold`` (T) reruns exactly statistics, figures and report;
(c) changing ``backbone.layers`` reruns extraction and what follows it, but not prepare, train
    or the pop-out arrays.

`make_fake_pipeline` and `repro` are also used by ``bench/dvc_rerun.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# what changing only T (stats.threshold) must rerun, per the issue
T_RERUN = {"statistics", "figures", "report"}

FAKE_STAGE = r'''
"""Fake stage: write every declared out from a digest of the stage's declared deps and params."""
import hashlib, json, re, sys
from pathlib import Path

import yaml

FILE_SUFFIXES = {".csv", ".json", ".png", ".md", ".txt", ".html"}
name = sys.argv[1]
stages = yaml.safe_load(open("dvc.yaml"))["stages"]
spec = stages[name]
params = yaml.safe_load(open("params.yaml"))


def lookup(key):
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def resolve(text):
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(lookup(m.group(1))), text)


def entries(items):
    for item in items or []:
        yield resolve(next(iter(item)) if isinstance(item, dict) else item)


h = hashlib.sha256(name.encode())
for key in spec.get("params", []):
    h.update(json.dumps([key, lookup(key)], sort_keys=True).encode())
for dep in entries(spec.get("deps")):
    p = Path(dep)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        sys.exit(f"fake stage {name}: dependency {dep} is missing or empty")
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
digest = h.hexdigest()


def write(p):
    if p.suffix in FILE_SUFFIXES:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(digest)
    else:  # a folder (or a Zarr store)
        p.mkdir(parents=True, exist_ok=True)
        (p / "out.txt").write_text(digest)


# paths other stages depend on inside this stage's output folders (e.g. work/scene/x.zarr)
wanted = {Path(d) for s in stages.values() for d in entries(s.get("deps"))}
for out in entries(spec.get("outs")):
    p = Path(out)
    write(p)
    for d in wanted:
        if d != p and d.resolve().is_relative_to(p.resolve()):
            write(d)
prov = Path(resolve(str(params["work"]))) / "provenance" / f"{name}.json"
prov.parent.mkdir(parents=True, exist_ok=True)
prov.write_text(json.dumps({"stage": name, "digest": digest}))
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the DVC of this interpreter's environment in ``cwd``."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def make_fake_pipeline(tmp: Path, dvc_yaml: Path | None = None,
                       params_yaml: Path | None = None) -> Path:
    """Copy the repository layout into ``tmp`` with fake stage commands; returns the pipelines
    folder. The project's params.yaml is used as is: its ``../../shared/data`` inputs are
    created as tiny files under ``tmp/shared/data``."""
    dvc_yaml = dvc_yaml or ROOT / "pipelines" / "dvc.yaml"
    params_yaml = params_yaml or ROOT / "pipelines" / "params.yaml"
    repo = tmp / "main"
    pipe = repo / "pipelines"
    pipe.mkdir(parents=True)
    spec = yaml.safe_load(dvc_yaml.read_text())
    for name, stage in spec["stages"].items():
        stage["cmd"] = f"python fake_stage.py {name}"
    (pipe / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(params_yaml, pipe / "params.yaml")
    (pipe / "fake_stage.py").write_text(FAKE_STAGE)
    shutil.copytree(ROOT / "dissect", repo / "dissect",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # tiny stand-ins for the external inputs the params point at
    params = yaml.safe_load(params_yaml.read_text())
    data = params["data"]
    osie = (pipe / data["osie"]).resolve()
    (osie / "data" / "eye").mkdir(parents=True)
    (osie / "data" / "eye" / "fixations.mat").write_bytes(b"fixations")
    (osie / "data" / "stimuli").mkdir()
    (osie / "data" / "stimuli" / "1001.jpg").write_bytes(b"jpeg")
    regions = (pipe / data["regions"]).resolve()
    regions.mkdir(parents=True, exist_ok=True)
    (regions / "regions.csv").write_text("image,region,category,code\n")
    scenes = (pipe / data["scenes"]).resolve()
    scenes.parent.mkdir(parents=True, exist_ok=True)
    scenes.write_text("image,scene\n")
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=repo, env=_env(), check=True)
        dvc(repo, "init", "-q")
    else:
        dvc(repo, "init", "-q", "--no-scm")
    dvc(repo, "config", "core.analytics", "false")
    return pipe


def repro(pipe: Path, *args: str) -> list[str]:
    """``dvc repro`` in ``pipe``; the names of the stages it ran, in order."""
    out = dvc(pipe, "repro", *args).stdout
    return re.findall(r"^Running stage '([^']+)'", out, flags=re.M)


def set_param(pipe: Path, key: str, value) -> None:
    path = pipe / "params.yaml"
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def clone(pipe: Path, dest: Path) -> Path:
    """Copy a fake pipeline (repository and its external inputs) to ``dest``; the copy's
    ``dvc.lock`` stays valid (paths are relative)."""
    top = pipe.parents[1]
    for folder in ("main", "shared"):
        shutil.copytree(top / folder, dest / folder, symlinks=True)
    return dest / "main" / "pipelines"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fake pipeline after one full ``dvc repro``."""
    pytest.importorskip("dvc", reason="dvc is not installed")
    pipe = make_fake_pipeline(tmp_path_factory.mktemp("dvcrepo"))
    stages = list(yaml.safe_load((pipe / "dvc.yaml").read_text())["stages"])
    ran = repro(pipe)
    assert sorted(ran) == sorted(stages), "a full repro runs every stage once"
    return pipe


@pytest.fixture
def pipeline(built, tmp_path):
    """A private copy of the reproduced fake pipeline, free to change."""
    return clone(built, tmp_path)


def test_second_repro_runs_nothing(pipeline):
    assert repro(pipeline) == []
    status = dvc(pipeline, "status").stdout
    assert "up to date" in status, status


def test_threshold_change_reruns_only_statistics_figures_report(pipeline):
    old = yaml.safe_load((pipeline / "params.yaml").read_text())["stats"]["threshold"]
    set_param(pipeline, "stats.threshold", float(old) + 0.5)
    ran = set(repro(pipeline))
    assert ran == T_RERUN, (
        f"changing only stats.threshold reran {sorted(ran)}; expected {sorted(T_RERUN)} "
        f"(extra: {sorted(ran - T_RERUN)}, missing: {sorted(T_RERUN - ran)})"
    )
    assert repro(pipeline) == []


def test_layers_change_reruns_extraction_onwards(pipeline):
    layers = yaml.safe_load((pipeline / "params.yaml").read_text())["backbone"]["layers"]
    set_param(pipeline, "backbone.layers", layers[1:])
    ran = repro(pipeline)
    assert {"extract", "associate", "statistics", "figures", "report"} <= set(ran), ran
    assert not {"prepare", "train", "popout-arrays"} & set(ran), ran
    assert ran.index("extract") < ran.index("associate") < ran.index("statistics")
    assert repro(pipeline) == []
