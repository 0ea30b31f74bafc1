"""Stage dependencies that cannot go stale (issue 9): every ``dissect`` module a stage's command
imports is covered by that stage's deps in ``pipelines/dvc.yaml``, and every ``params.yaml`` key
it reads is in its ``params``.

The import closure and the params tracker (``tests/stage_deps.py``) are checked here against
hand-made cases and against the imports Python really performs; the whole-chain test
(``test_pipeline_chain.py``) records the keys each real stage reads, and
``test_dvc_pipeline.py`` checks that DVC reports every stage when any module it imports changes.
"""

from __future__ import annotations

import copy
import importlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest
import yaml
from stage_deps import (
    EXEMPT_PARAMS,
    ROOT,
    Pipeline,
    Reads,
    SourceTree,
    StageReads,
    closure,
    covers,
    direct_imports,
    minimal_deps,
    module_files,
    record_imports,
    resolve_dep,
    stage_closure,
    stage_modules,
    stage_name,
    track_params,
    uncovered_modules,
    uncovered_params,
)

from dissect.config import Params, load_params

P = PurePosixPath


# --------------------------------------------------------------------------- the closure itself


@pytest.fixture
def toy(tmp_path) -> SourceTree:
    """A hand-made package exercising every import form the closure must follow."""
    files = {
        "pkg/__init__.py": "not_a_module = 1\n",
        "pkg/cli.py": "from pkg import errors\n",
        "pkg/errors.py": "",
        # function-level import; `from pkg import b` with b a submodule; a name, not a module
        "pkg/a.py": """
            import os
            import pkg.sub.x
            from pkg.c import helper

            def run():
                from pkg import b, not_a_module
                return b, not_a_module
            """,
        # relative imports, one with an alias
        "pkg/b.py": "from . import c\nfrom .sub import y as yy\n",
        "pkg/c.py": "def helper():\n    return 1\n",
        "pkg/sub/__init__.py": "from .x import thing\n",
        # only under TYPE_CHECKING (counted: conservative) ...
        "pkg/sub/x.py": """
            from typing import TYPE_CHECKING
            thing = 1
            if TYPE_CHECKING:
                from pkg import d
            """,
        # ... and importlib with a literal name; a name built at run time cannot be followed
        "pkg/sub/y.py": """
            import importlib

            def load(name):
                importlib.import_module("pkg.e")
                return importlib.import_module(f"pkg.{name}")
            """,
        # a registry that imports the modules it lists by name (models.base.BUILTIN_MODULES)
        "pkg/registry.py": """
            import importlib
            PLUGIN_MODULES: list[str] = ["pkg.d", "pkg.e"]
            OTHER = ["pkg.c"]

            def load():
                for m in PLUGIN_MODULES:
                    importlib.import_module(m)
            """,
        "pkg/d.py": "",
        "pkg/e.py": "import numpy\n",
        "pkg/unused.py": "from pkg import a\n",
        "pkg/deep/__init__.py": "",
        "pkg/deep/inner/__init__.py": "",
        "pkg/deep/inner/z.py": "from ... import d\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return SourceTree(tmp_path, "pkg")


def test_direct_imports_follow_every_form(toy):
    assert direct_imports("pkg.a", toy) == {"pkg", "pkg.sub", "pkg.sub.x", "pkg.c", "pkg.b"}
    assert direct_imports("pkg.b", toy) == {"pkg", "pkg.c", "pkg.sub", "pkg.sub.y"}
    assert direct_imports("pkg.sub", toy) == {"pkg", "pkg.sub.x"}
    assert direct_imports("pkg.sub.x", toy) == {"pkg", "pkg.d"}
    assert direct_imports("pkg.sub.y", toy) == {"pkg", "pkg.e"}
    assert direct_imports("pkg.e", toy) == set()
    assert direct_imports("pkg.deep.inner.z", toy) == {"pkg", "pkg.d"}
    # the modules a registry lists in a *_MODULES constant (imported by name at run time)
    assert direct_imports("pkg.registry", toy) == {"pkg", "pkg.d", "pkg.e"}


def test_closure_of_the_toy_package(toy):
    # a → sub.x (+ sub, whose __init__ imports x), c, b; b → sub.y; x → d; y → e
    expected = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e",
                "pkg.sub", "pkg.sub.x", "pkg.sub.y"}
    assert closure(["pkg.a"], toy, exempt=frozenset()) == expected
    # the exempt dispatcher is left out but its own imports count
    assert closure(["pkg.cli", "pkg.c"], toy, exempt=frozenset({"pkg.cli"})) == {
        "pkg", "pkg.errors", "pkg.c"}
    # importing a deep module runs every parent package
    assert closure(["pkg.deep.inner.z"], toy, exempt=frozenset()) == {
        "pkg", "pkg.deep", "pkg.deep.inner", "pkg.deep.inner.z", "pkg.d"}


def test_record_imports_sees_what_python_imports(toy, monkeypatch):
    """The runtime probe on the toy package: every edge it sees is one the scan found."""
    monkeypatch.syspath_prepend(str(toy.root))
    for name in [m for m in sys.modules if m.split(".")[0] == "pkg"]:
        monkeypatch.delitem(sys.modules, name)
    try:
        with record_imports("pkg") as edges:
            a = importlib.import_module("pkg.a")
            a.run()
        assert edges == {("pkg.a", "pkg.sub.x"), ("pkg.a", "pkg.c"), ("pkg.sub", "pkg.sub.x"),
                         ("pkg.a", "pkg"), ("pkg.a", "pkg.b"), ("pkg.b", "pkg"),
                         ("pkg.b", "pkg.c"), ("pkg.b", "pkg.sub"), ("pkg.b", "pkg.sub.y")}
        assert all(b in direct_imports(a, toy) for a, b in edges)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "pkg"]:
            del sys.modules[name]


def test_minimal_deps_use_a_folder_only_when_all_of_it_is_needed(toy):
    files = module_files(closure(["pkg.a"], toy, exempt=frozenset()), toy)
    assert files == {P("pkg/__init__.py"), P("pkg/a.py"), P("pkg/b.py"), P("pkg/c.py"),
                     P("pkg/d.py"), P("pkg/e.py"), P("pkg/sub/__init__.py"),
                     P("pkg/sub/x.py"), P("pkg/sub/y.py")}
    assert minimal_deps(files, toy) == [
        P("pkg/__init__.py"), P("pkg/a.py"), P("pkg/b.py"), P("pkg/c.py"), P("pkg/d.py"),
        P("pkg/e.py"), P("pkg/sub")]
    deep = module_files(closure(["pkg.deep.inner.z"], toy, exempt=frozenset()), toy)
    assert minimal_deps(deep, toy) == [P("pkg/__init__.py"), P("pkg/d.py"), P("pkg/deep")]


def test_dep_paths_resolve_and_cover_like_dvc(tmp_path):
    pipelines = tmp_path / "repo" / "pipelines"
    params = {"data": {"osie": "../../shared/osie", "regions": "../annotations/sr"}}
    root = tmp_path / "repo"
    assert resolve_dep("../dissect/data", params, pipelines, root) == P("dissect/data")
    assert resolve_dep("${data.regions}", params, pipelines, root) == P("annotations/sr")
    outside = resolve_dep("${data.osie}/data/stimuli", params, pipelines, root)
    assert outside == tmp_path / "shared" / "osie" / "data" / "stimuli"
    assert covers(P("dissect/data"), P("dissect/data/osie.py"))
    assert covers(P("dissect/data/osie.py"), P("dissect/data/osie.py"))
    assert covers(P("dissect"), P("dissect/metrics/region.py"))
    assert not covers(P("dissect/data"), P("dissect/database.py"))  # not a string prefix
    assert not covers(P("dissect/data/osie.py"), P("dissect/data"))
    assert not covers(outside, P("dissect/data/osie.py"))


IMPORT_PROBE = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from stage_deps import record_imports  # imports no dissect module

with record_imports() as edges:
    import dissect.cli
    for module in sorted({m for m, _ in dissect.cli.STAGES.values()}):
        importlib.import_module(f"dissect.stages.{module}")
print(json.dumps(sorted(edges)))
"""


def test_static_imports_include_every_import_python_performs():
    """Independent reference: the imports the interpreter really performs when the CLI and every
    stage module load (module-level ones; the chain test adds the function-level ones)."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(ROOT / "tests")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    edges = [tuple(e) for e in json.loads(proc.stdout)]
    assert len(edges) > 10
    tree = SourceTree()
    missed = [(a, b) for a, b in edges if b != a and b not in direct_imports(a, tree)]
    assert not missed, f"imports the static scan does not see: {missed}"


def test_every_dvc_stage_is_a_cli_stage_with_a_run_function():
    stages = Pipeline().stages
    modules = stage_modules()
    assert set(stages) <= set(modules), set(stages) - set(modules)
    for stage in stages:
        assert stages[stage]["cmd"].split()[:2] == ["dissect", stage]
        fn = getattr(importlib.import_module(f"dissect.stages.{modules[stage]}"),
                     "run_" + stage.replace("-", "_"))
        assert stage_name(fn) == stage


# --------------------------------------------------------------------------- (a) the project


def test_every_stage_depends_on_every_module_it_imports():
    """Fails listing each (stage, module file) whose change would not rerun the stage; fix by
    pasting the output of ``python tests/stage_deps.py`` into ``pipelines/dvc.yaml``."""
    missing = uncovered_modules()
    lines = [f"{stage}: {f}" for stage, files in missing.items() for f in files]
    assert not lines, (f"{len(lines)} imported modules are in no dep of the stage "
                       "(run `python tests/stage_deps.py`):\n" + "\n".join(lines))


def test_stage_closures_are_plausible():
    """Spot checks by hand: the trunk stages use the backbones, nothing includes the CLI."""
    for stage in ("extract", "train", "popout"):
        assert "dissect.backbones" in stage_closure(stage)
    assert "dissect.stages.prepare" in stage_closure("prepare")
    assert all("dissect.cli" not in stage_closure(s) for s in Pipeline().stages)
    assert {"dissect", "dissect.config", "dissect.errors"} <= stage_closure("report")


# --------------------------------------------------------------------------- (b) params reads


def _params(tmp_path: Path) -> Params:
    p = Params({"work": "w", "results": "r", "progress": False,
                "data": {"osie": "o", "drop_first": True, "max_images": None},
                "stats": {"top_k": 10, "threshold": 1.5, "nested": {"a": 1, "b": [1, 2]}},
                "train": {"ks": [0, 1], "lr": 0.1}, "empty": {},
                "dask": {"scheduler": None, "chunk_images": 4}})
    p.base = tmp_path
    return p


def test_tracker_records_single_key_reads(tmp_path):
    t = track_params(_params(tmp_path))
    assert isinstance(t, Params) and t.base == tmp_path
    assert t.work == tmp_path / "w"                      # Params properties go through []
    t["data"]["drop_first"]
    t["data"].get("max_images")
    t["train"].get("missing", 3)                         # its absence is what is used
    assert "top_k" in t["stats"]
    assert "nested" in t["stats"]                        # a section: not a leaf read
    t["stats"]["nested"]["b"]                            # a list is a leaf
    t.get("dask", {}).get("scheduler")
    assert set(t.reads.keys) == {"work", "data.drop_first", "data.max_images", "train.missing",
                                 "stats.top_k", "stats.nested.b", "dask.scheduler"}
    # where each read was made: the innermost frame in dissect/, else the caller's file
    where = {k: {w.split(":")[0] for w in ws} for k, ws in t.reads.keys.items()}
    assert where.pop("work") == {"dissect/config.py"}
    assert all(w == {"test_stage_deps.py"} for w in where.values()), where


@pytest.mark.parametrize("op, expected", [
    (lambda t: json.dumps({"stats": t["stats"]}), {"stats.top_k", "stats.threshold",
                                                   "stats.nested.a", "stats.nested.b"}),
    (lambda t: json.dumps(t["train"], indent=2), {"train.ks", "train.lr"}),
    (lambda t: yaml.safe_dump(dict(t)), None),
    (lambda t: yaml.safe_dump(t["train"]), {"train.ks", "train.lr"}),
    (lambda t: dict(**t["train"]), {"train.ks", "train.lr"}),
    (lambda t: {**t["data"]}, {"data.osie", "data.drop_first", "data.max_images"}),
    (lambda t: list(t["train"]), {"train.ks", "train.lr"}),
    (lambda t: [v for _, v in t["train"].items()], {"train.ks", "train.lr"}),
    (lambda t: str(t["stats"]["nested"]), {"stats.nested.a", "stats.nested.b"}),
    (lambda t: t["train"] == {"ks": [0, 1], "lr": 0.1}, {"train.ks", "train.lr"}),
    (lambda t: copy.deepcopy(t["train"]), {"train.ks", "train.lr"}),
    (lambda t: pickle.loads(pickle.dumps(t["train"])), {"train.ks", "train.lr"}),
    (lambda t: t["empty"].items(), {"empty"}),
    (lambda t: len(t["train"]), set()),
])
def test_tracker_whole_dict_operations_read_every_leaf(tmp_path, op, expected):
    p = _params(tmp_path)
    t = track_params(p)
    op(t)
    if expected is None:  # everything
        expected = {"work", "results", "progress", "data.osie", "data.drop_first",
                    "data.max_images", "stats.top_k", "stats.threshold", "stats.nested.a",
                    "stats.nested.b", "train.ks", "train.lr", "empty", "dask.scheduler",
                    "dask.chunk_images"}
    assert set(t.reads.keys) == expected


def test_tracked_values_behave_like_the_originals(tmp_path):
    import torch

    p = _params(tmp_path)
    t = track_params(p)
    assert json.loads(json.dumps(t)) == json.loads(json.dumps(p))
    assert yaml.safe_load(yaml.safe_dump(dict(t))) == dict(p)
    assert copy.deepcopy(t["stats"]) == p["stats"] and type(copy.deepcopy(t["stats"])) is dict
    # a params sub-dict saved in a checkpoint loads with torch's safe loader
    path = tmp_path / "x.pt"
    torch.save({"train": t["train"]}, path)
    assert torch.load(path, weights_only=True)["train"] == p["train"]


def test_stage_reads_are_kept_per_stage(tmp_path):
    def run_inner_output(params):
        return params["stats"]["top_k"]

    def run_popout_readouts(params):
        return params["train"]["ks"]

    reads = StageReads()
    assert reads.run(run_inner_output, _params(tmp_path)) == 10
    reads.run(run_popout_readouts, _params(tmp_path))
    assert {k: set(r.keys) for k, r in reads.by_stage.items()} == {
        "inner-output": {"stats.top_k"}, "popout-readouts": {"train.ks"}}


def test_uncovered_params_hand_case():
    reads = Reads()
    for key in ("stats.top_k", "stats.nested.a", "data.drop_first", "data.max_images",
                "work", "results", "progress", "dask.scheduler", "dask.chunk_images",
                "train.ks"):
        reads.add(key, "here")
    declared = ["stats", "data.drop_first", "train.k"]   # train.k does not cover train.ks
    assert set(EXEMPT_PARAMS) == {"work", "results", "progress", "dask.scheduler", "data.osie",
                                  "data.regions", "data.scenes", "data.split_file"}
    assert list(uncovered_params(reads, declared)) == [
        "dask.chunk_images", "data.max_images", "train.ks"]


def test_only_a_validation_read_of_a_listed_key_is_exempt():
    """``backbone.layers`` read inside ``common.backbone`` (which only refuses unknown names) is
    exempt; read anywhere else, or another key read there, is not."""
    from stage_deps import _function_lines

    lines = _function_lines("dissect/stages/common.py", "backbone")
    inside = f"dissect/stages/common.py:{lines[-1]}"
    outside = f"dissect/stages/common.py:{lines[0] - 1}"
    for key, places, exempt in (("backbone.layers", [inside], True),
                                ("backbone.layers", [inside, "dissect/stages/extract.py:9"],
                                 False),
                                ("backbone.layers", [outside], False),
                                ("backbone.name", [inside], False)):
        reads = Reads()
        for where in places:
            reads.add(key, where)
        assert (key not in uncovered_params(reads, [])) == exempt, (key, places)


def test_popout_arrays_reads_only_declared_params(tmp_path):
    """A real stage cheap enough to run here (no OSIE needed); the chain test covers the rest."""
    from dissect.stages.popout import run_popout_arrays

    params = load_params(ROOT / "pipelines" / "params.yaml", {
        "work": str(tmp_path / "work"), "results": str(tmp_path / "results"),
        "popout.n_per_dimension": 1, "progress": False})
    reads = StageReads()
    reads.run(run_popout_arrays, params)
    keys = reads.by_stage["popout-arrays"].keys
    assert {"popout.n_per_dimension", "popout.seed"} <= set(keys)
    missing = uncovered_params(reads.by_stage["popout-arrays"],
                               Pipeline().declared_params("popout-arrays"))
    assert not missing, f"popout-arrays reads undeclared params: {missing}"
