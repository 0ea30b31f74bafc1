"""What each DVC stage really depends on: the ``dissect`` modules its command imports, and the
``params.yaml`` keys it reads (issue "Stage dependencies that cannot go stale").

Code. A stage's command is ``dissect <stage>``: :mod:`dissect.cli` imports
``dissect.stages.<module>`` (:data:`dissect.cli.STAGES`) and calls ``run_<stage>(params)``. The
modules that command can execute are the transitive closure of every ``import dissect…`` /
``from dissect… import …`` found ANYWHERE in a module's source (function-level imports and
``if TYPE_CHECKING:`` blocks included: conservative, and a name imported for typing tends to
become a runtime import later), where

* ``from pkg import name`` with ``pkg.name`` a submodule imports that submodule;
* importing ``a.b.c`` also executes ``a/__init__.py`` and ``a/b/__init__.py`` (parent packages);
* ``importlib.import_module("dissect.x")`` with a literal name counts as an import.

:mod:`dissect.cli` itself is exempt: it only parses arguments and dispatches, and it lists every
stage, so depending on it would make adding a stage rerun every stage. Its own imports (the
parameter loader, the errors) are executed by every command and do count.

Params. :func:`track_params` wraps a loaded :class:`dissect.config.Params` so that every leaf key
a stage reads is recorded as a dotted path (see :class:`TrackedDict` for what counts as a read);
:func:`uncovered_params` compares the recorded keys with a stage's ``params`` in ``dvc.yaml``.

``python tests/stage_deps.py`` prints, per stage, the modules its deps miss and the minimal
``../dissect/...`` deps list (single files, or a package folder when all of its modules are
needed); ``--full`` prints whole ``deps:`` blocks (the stage's other deps kept) to paste into
``pipelines/dvc.yaml``; ``--check`` exits 1 when a module is uncovered.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import importlib
import importlib.util
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dissect"
#: argument parsing and dispatch only; it names every stage, so a dep on it would rerun every
#: stage whenever a stage is added (its own imports still count, see :func:`stage_closure`)
EXEMPT_MODULES = frozenset({"dissect.cli"})
#: params a stage may read without declaring them: where outputs go (``work``, ``results``),
#: progress bars (``progress``) and where tasks run (``dask.scheduler``) — none changes what a
#: stage computes; and where the inputs are (``data.osie``, ``data.regions``, ``data.scenes``,
#: ``data.split_file``): their *contents* are deps already (the prepare manifest hashes OSIE's
#: stimuli and fixations, the regions and the scene labels; the split file is a dep of every
#: stage that reads it), so moving the same data elsewhere must not rerun anything
EXEMPT_PARAMS = ("work", "results", "progress", "dask.scheduler",
                 "data.osie", "data.regions", "data.scenes", "data.split_file")
#: reads that only refuse an invalid value before any work (key → (module file, function)):
#: they cannot change what a stage computes, so a stage need not rerun when the key changes.
#: ``dissect.stages.common.backbone`` refuses layer names the backbone lacks for every stage
#: that loads it; training does not depend on which layers are analysed.
VALIDATION_READS = {"backbone.layers": ("dissect/stages/common.py", "backbone")}


# --------------------------------------------------------------------------- module closure


@dataclass(frozen=True)
class SourceTree:
    """A package's sources on disk: ``root/<package>/...``."""

    root: Path = ROOT
    package: str = PACKAGE

    def file_of(self, module: str) -> Path | None:
        """``a/b.py`` or ``a/b/__init__.py`` of module ``a.b`` (relative to :attr:`root`)."""
        rel = Path(*module.split("."))
        for candidate in (rel.with_suffix(".py"), rel / "__init__.py"):
            if (self.root / candidate).is_file():
                return candidate
        return None

    def is_package(self, module: str) -> bool:
        return (self.root / Path(*module.split(".")) / "__init__.py").is_file()

    def in_package(self, module: str) -> bool:
        return module == self.package or module.startswith(self.package + ".")

    def modules(self) -> list[str]:
        """Every module of the package (``x/__init__.py`` is module ``x``)."""
        out = []
        for f in sorted((self.root / self.package).rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            parts = f.relative_to(self.root).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        return out


def with_parents(module: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b, a.b.c]``: importing a module executes its parent packages."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import …`` inside ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        raise ImportError(f"relative import beyond the top package in {module}")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{target}" if target else base


def _top_level_nodes(node: ast.AST):
    """The nodes executed when a module is imported: everything outside function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield child
        yield from _top_level_nodes(child)


def direct_imports(module: str, tree: SourceTree, top_level_only: bool = False) -> set[str]:
    """The package's modules that ``module``'s source imports anywhere (parents included), or
    with ``top_level_only`` only outside function bodies (what importing it executes)."""
    path = tree.file_of(module)
    if path is None:
        raise FileNotFoundError(f"no source for {module} under {tree.root}")
    source = (tree.root / path).read_text(encoding="utf-8")
    node_tree = ast.parse(source, filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        if tree.in_package(name):
            found.update(with_parents(name))

    nodes = _top_level_nodes(node_tree) if top_level_only else ast.walk(node_tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_pkg, node.level, node.module) if node.level
                    else node.module or "")
            if not tree.in_package(base):
                continue
            add(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and tree.file_of(sub) is not None:
                    add(sub)  # `from pkg import name` where pkg.name is a submodule
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = (func.attr if isinstance(func, ast.Attribute)
                    else func.id if isinstance(func, ast.Name) else "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                add(arg.value)
    # a registry's list of modules it imports by name (dissect.models.base.BUILTIN_MODULES,
    # imported with importlib on the first load_model): each listed module is an import
    for node in node_tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id.endswith("_MODULES") and \
                isinstance(value, ast.List | ast.Tuple):
            for elt in value.elts:
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    add(elt.value)
    found.discard(module)
    return found


def closure(roots: Iterable[str], tree: SourceTree,
            exempt: frozenset[str] = EXEMPT_MODULES) -> set[str]:
    """Modules executed when ``roots`` are imported and their functions run: the transitive
    closure of :func:`direct_imports`. Exempt modules are followed but not included, and only
    their module-level imports count: :mod:`dissect.cli` dispatches a stage to its module (a
    root here) and imports what its other commands (``dissect verify``) need inside the
    functions of those commands, which a stage's command never runs."""
    seen: set[str] = set()
    todo = [m for r in roots for m in with_parents(r)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(direct_imports(module, tree, top_level_only=module in exempt) - seen)
    return seen - exempt


def stage_modules() -> dict[str, str]:
    """Stage name → module in ``dissect.stages`` (from :data:`dissect.cli.STAGES`)."""
    cli = importlib.import_module("dissect.cli")
    return {name: module for name, (module, _help) in cli.STAGES.items()}


def stage_closure(stage: str, tree: SourceTree | None = None) -> set[str]:
    """Modules ``dissect <stage>`` can execute: from :mod:`dissect.cli` (exempt itself) and
    ``dissect.stages.<module>``."""
    tree = tree or SourceTree()
    return closure(["dissect.cli", f"dissect.stages.{stage_modules()[stage]}"], tree)


def package_data(path: Path) -> list[str]:
    """Folders (beside the module) a module declares it reads: the string constants of a
    top-level ``PACKAGE_DATA = (...)`` (templates and other non-Python files a stage's output
    depends on, e.g. ``dissect.site``'s ``site_templates``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "PACKAGE_DATA" and node.value:
            return [c.value for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return []


def module_files(modules: Iterable[str], tree: SourceTree | None = None) -> set[PurePosixPath]:
    """Repository-relative source files of ``modules``, and the package-data folders they
    declare (:func:`package_data`)."""
    tree = tree or SourceTree()
    out = set()
    for m in modules:
        f = tree.file_of(m)
        if f is None:
            raise FileNotFoundError(f"no source for {m}")
        out.add(PurePosixPath(f.as_posix()))
        full = f if f.is_absolute() else tree.root / f
        out.update(PurePosixPath(f.parent.as_posix()) / d for d in package_data(full))
    return out


# --------------------------------------------------------------------------- dvc.yaml deps


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def lookup(params: dict, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node[part]
    return node


def interpolate(text: str, params: dict) -> str:
    """DVC's ``${a.b}`` interpolation from params.yaml."""
    return re.sub(r"\$\{\s*([^}]+?)\s*\}", lambda m: str(lookup(params, m.group(1))), text)


def dep_entries(spec: dict) -> list[str]:
    """The raw (uninterpolated) dep strings of one stage."""
    out = []
    for item in spec.get("deps") or []:
        out.append(next(iter(item)) if isinstance(item, dict) else str(item))
    return out


def resolve_dep(dep: str, params: dict, pipelines: Path, root: Path) -> PurePosixPath | Path:
    """A dep as a repository-relative path, or as an absolute path when it is outside."""
    path = Path(os.path.normpath(pipelines / interpolate(dep, params)))
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return path


def covers(dep: PurePosixPath | Path, file: PurePosixPath) -> bool:
    """A dep covers a file when it is that file or one of its folders."""
    return isinstance(dep, PurePosixPath) and not isinstance(dep, Path) and (
        dep == file or dep in file.parents)


@dataclass
class Pipeline:
    """``pipelines/dvc.yaml`` with its ``params.yaml``, relative to a repository root."""

    root: Path = ROOT

    @property
    def pipelines(self) -> Path:
        return self.root / "pipelines"

    @property
    def stages(self) -> dict[str, dict]:
        return load_yaml(self.pipelines / "dvc.yaml")["stages"]

    @property
    def params(self) -> dict:
        return load_yaml(self.pipelines / "params.yaml")

    def deps(self, stage: str) -> list[PurePosixPath | Path]:
        params = self.params
        return [resolve_dep(d, params, self.pipelines, self.root)
                for d in dep_entries(self.stages[stage])]

    def declared_params(self, stage: str) -> list[str]:
        """The stage's ``params`` keys (in params.yaml; entries naming other files skipped)."""
        out = []
        for item in self.stages[stage].get("params") or []:
            if isinstance(item, dict):
                for file, keys in item.items():
                    if file in ("params.yaml", None):
                        out.extend(keys or [])
            else:
                out.append(str(item))
        return out


def uncovered_modules(pipeline: Pipeline | None = None,
                      tree: SourceTree | None = None) -> dict[str, list[PurePosixPath]]:
    """Stage → module files of its command's closure that none of its deps covers."""
    pipeline = pipeline or Pipeline()
    tree = tree or SourceTree(pipeline.root)
    out = {}
    for stage in pipeline.stages:
        deps = pipeline.deps(stage)
        files = module_files(stage_closure(stage, tree), tree)
        missing = sorted(f for f in files if not any(covers(d, f) for d in deps))
        if missing:
            out[stage] = missing
    return out


def unneeded_deps(pipeline: Pipeline | None = None,
                  tree: SourceTree | None = None) -> dict[str, list[PurePosixPath]]:
    """Stage → its ``dissect/`` deps that cover no module of its closure (reruns for nothing)."""
    pipeline = pipeline or Pipeline()
    tree = tree or SourceTree(pipeline.root)
    out = {}
    for stage in pipeline.stages:
        files = module_files(stage_closure(stage, tree), tree)
        extra = [d for d in pipeline.deps(stage)
                 if isinstance(d, PurePosixPath) and not isinstance(d, Path)
                 and d.parts[:1] == (tree.package,) and not any(covers(d, f) for f in files)]
        if extra:
            out[stage] = extra
    return out


def minimal_deps(files: Iterable[PurePosixPath], tree: SourceTree | None = None
                 ) -> list[PurePosixPath]:
    """The fewest paths covering ``files``: a package folder where every module under it (its
    subpackages included) is in ``files``, single files elsewhere."""
    tree = tree or SourceTree()
    needed = set(files)
    all_files = module_files(tree.modules(), tree)
    full: set[PurePosixPath] = set()
    for module in tree.modules():
        if not tree.is_package(module):
            continue
        folder = PurePosixPath(*module.split("."))
        inside = {f for f in all_files if folder in f.parents}
        if inside <= needed:
            full.add(folder)
    tops = {d for d in full if not any(p in full for p in d.parents)}
    singles = {f for f in needed if not any(d in f.parents for d in tops)}
    return sorted(tops | singles)


def suggested_deps(pipeline: Pipeline | None = None,
                   tree: SourceTree | None = None) -> dict[str, list[str]]:
    """Stage → its minimal ``../dissect/...`` deps (as written in ``pipelines/dvc.yaml``)."""
    pipeline = pipeline or Pipeline()
    tree = tree or SourceTree(pipeline.root)
    rel = os.path.relpath(pipeline.root, pipeline.pipelines)
    return {stage: [f"{rel}/{p}" for p in minimal_deps(
        module_files(stage_closure(stage, tree), tree), tree)] for stage in pipeline.stages}


# --------------------------------------------------------------------------- params reads


def _leaves(node: Any, prefix: str) -> Iterator[str]:
    if isinstance(node, dict) and node:
        for k, v in dict.items(node):
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix


def _plain(node: Any) -> Any:
    """A deep copy of a (tracked) dict tree made of plain dicts."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in dict.items(node)}
    return node


_HERE = os.path.normcase(os.path.abspath(__file__))


def _where() -> str:
    """``dissect/x.py:LINE`` of the innermost project frame making a read (for the report)."""
    frame = sys._getframe(2)
    outside = None
    while frame is not None:
        fname = frame.f_code.co_filename
        if os.path.normcase(os.path.abspath(fname)) != _HERE:
            if f"{os.sep}{PACKAGE}{os.sep}" in fname:
                tail = fname[fname.rindex(f"{os.sep}{PACKAGE}{os.sep}") + 1:]
                return f"{PurePosixPath(Path(tail).as_posix())}:{frame.f_lineno}"
            outside = outside or f"{Path(fname).name}:{frame.f_lineno}"
        frame = frame.f_back
    return outside or "?"


class Reads:
    """Dotted keys read → where they were read (``dissect/x.py:LINE``); thread-safe."""

    def __init__(self) -> None:
        self.keys: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, where: str) -> None:
        with self._lock:
            self.keys.setdefault(key, set()).add(where)


class TrackedDict(dict):
    """A params (sub-)dict that records every leaf key read, as a dotted path.

    Reads: ``d[k]``, ``d.get(k)`` (a missing key too: its absence is what the stage used),
    ``k in d`` for a leaf or missing key; a sub-dict value is not a read by itself — reading its
    leaves is. Whole-dict operations read every leaf below: iteration, ``keys``/``values``/
    ``items``, ``dict(d)``, ``**d``, ``copy``, ``repr``/``str``, ``==``, copies (plain dicts),
    pickling (an OrderedDict), JSON and YAML dumps (through ``items``). Lists are leaves.
    """

    def __init__(self, data: dict, prefix: str = "", reads: Reads | None = None) -> None:
        reads = reads if reads is not None else Reads()
        super().__init__({k: (TrackedDict(v, self._join(prefix, k), reads)
                              if isinstance(v, dict) else v) for k, v in data.items()})
        self._prefix = prefix
        self._reads = reads

    @staticmethod
    def _join(prefix: str, key: Any) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    @property
    def reads(self) -> Reads:
        return self._reads

    def _touch(self, key: Any) -> None:
        value = dict.get(self, key)
        path = self._join(self._prefix, key)
        if isinstance(value, TrackedDict):
            return
        self._reads.add(path, _where())

    def _touch_all(self) -> None:
        where = _where()
        for leaf in _leaves(self, self._prefix):
            self._reads.add(leaf, where)

    # single keys
    def __getitem__(self, key: Any) -> Any:
        self._touch(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._touch(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._touch(key)
        return super().__contains__(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._touch(key)
        return super().setdefault(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        self._touch(key)
        return super().pop(key, *default)

    # the whole dict
    def __iter__(self) -> Iterator:
        self._touch_all()
        return super().__iter__()

    def keys(self):  # type: ignore[override]
        self._touch_all()
        return super().keys()

    def values(self):  # type: ignore[override]
        self._touch_all()
        return super().values()

    def items(self):  # type: ignore[override]
        self._touch_all()
        return super().items()

    def copy(self) -> dict:  # type: ignore[override]
        self._touch_all()
        return _plain(self)

    def __repr__(self) -> str:
        self._touch_all()
        return repr(_plain(self))

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        self._touch_all()
        return _plain(self) == (_plain(other) if isinstance(other, dict) else other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> dict:
        self._touch_all()
        return _plain(self) | other

    def __ror__(self, other: Any) -> dict:
        self._touch_all()
        return other | _plain(self)

    def __copy__(self) -> dict:
        self._touch_all()
        return dict(dict.items(self))

    def __deepcopy__(self, memo: dict) -> dict:
        self._touch_all()
        return copy.deepcopy(_plain(self), memo)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # pickled as an OrderedDict of plain values: a global that torch.load(weights_only=True)
        # accepts (``dict`` itself is not one), so a stage may save a params sub-dict in a model
        self._touch_all()
        return (OrderedDict, (), None, None, iter(_plain(self).items()))


def _represent(dumper: yaml.SafeDumper, data: TrackedDict) -> yaml.Node:
    return dumper.represent_dict(data.items())


for _dumper in (yaml.SafeDumper, yaml.Dumper):
    yaml.add_multi_representer(TrackedDict, _represent, Dumper=_dumper)


def track_params(params: Any, reads: Reads | None = None) -> Any:
    """A copy of ``params`` (a :class:`dissect.config.Params`, or a plain dict) that records
    the leaf keys read in ``.reads``; it keeps the Params methods and attributes (``base``,
    ``path``, ``work``, ``results``)."""
    from dissect.config import Params

    reads = reads if reads is not None else Reads()
    if not isinstance(params, Params):
        return TrackedDict(params, "", reads)

    cls = _tracked_params_class(type(params))
    tracked = cls(_plain(params), "", reads)
    for name in ("base", "file"):
        if name in getattr(params, "__dict__", {}):
            setattr(tracked, name, params.__dict__[name])
    return tracked


_CLASSES: dict[type, type] = {}


def _tracked_params_class(params_cls: type) -> type:
    if params_cls not in _CLASSES:
        _CLASSES[params_cls] = type(f"Tracked{params_cls.__name__}", (TrackedDict, params_cls), {})
    return _CLASSES[params_cls]


def stage_name(run: Callable) -> str:
    """``run_extract_finetuned`` → ``extract-finetuned`` (the CLI's naming, see dissect.cli)."""
    return run.__name__.removeprefix("run_").replace("_", "-")


@contextmanager
def record_imports(package: str = PACKAGE) -> Iterator[set[tuple[str, str]]]:
    """Record the imports Python performs from a module of ``package`` to one of ``package``
    (``(importer, imported)``, a submodule named in ``from pkg import sub`` included) while the
    block runs: every import statement executed, function-level ones included (a module-level
    one only when the module is first imported in this process)."""
    edges: set[tuple[str, str]] = set()
    real = builtins.__import__

    def probe(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        module = real(name, globals, locals, fromlist, level)
        importer = str((globals or {}).get("__name__") or "")
        if importer.split(".")[0] == package:
            target = (importlib.util.resolve_name("." * level + name, globals.get("__package__"))
                      if level else name)
            if target.split(".")[0] == package:
                edges.add((importer, target))
                edges.update((importer, f"{target}.{sub}") for sub in fromlist or ()
                             if f"{target}.{sub}" in sys.modules)
        return module

    builtins.__import__ = probe
    try:
        yield edges
    finally:
        builtins.__import__ = real


class StageReads:
    """Runs stage functions on tracked params and keeps, per stage, the keys each one read
    (:attr:`by_stage`) and the ``dissect`` imports it performed (:attr:`imports`)."""

    def __init__(self) -> None:
        self.by_stage: dict[str, Reads] = {}
        self.imports: dict[str, set[tuple[str, str]]] = {}

    def run(self, run: Callable, params: Any, *args: Any, **kwargs: Any) -> Any:
        stage = stage_name(run)
        reads = self.by_stage.setdefault(stage, Reads())
        with record_imports() as edges:
            try:
                return run(track_params(params, reads), *args, **kwargs)
            finally:
                self.imports.setdefault(stage, set()).update(edges)


def is_exempt(key: str, exempt: Iterable[str] = EXEMPT_PARAMS) -> bool:
    return any(key == e or key.startswith(e + ".") for e in exempt)


def declared_covers(declared: Iterable[str], key: str) -> bool:
    """A declared params entry covers itself and everything below it (``stats`` → ``stats.*``)."""
    return any(key == d or key.startswith(d + ".") for d in declared)


def _function_lines(file: str, function: str, root: Path = ROOT) -> range:
    """Line range of a module-level function of ``root/file``."""
    tree = ast.parse((root / file).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return range(node.lineno, (node.end_lineno or node.lineno) + 1)
    raise LookupError(f"no function {function} in {file}")


def validation_only(key: str, where: Iterable[str],
                    validation: dict[str, tuple[str, str]] = VALIDATION_READS) -> bool:
    """Every read of ``key`` happened inside the function that only validates it."""
    if key not in validation:
        return False
    file, function = validation[key]
    lines = _function_lines(file, function)
    places = [w.rpartition(":") for w in where]
    return bool(places) and all(f == file and int(n) in lines for f, _, n in places)


def uncovered_params(reads: Reads, declared: Iterable[str],
                     exempt: Iterable[str] = EXEMPT_PARAMS) -> dict[str, list[str]]:
    """Keys read but neither declared nor exempt (nor only validated,
    :data:`VALIDATION_READS`) → where they were read."""
    declared = list(declared)
    return {key: sorted(where) for key, where in sorted(reads.keys.items())
            if not is_exempt(key, exempt) and not declared_covers(declared, key)
            and not validation_only(key, where)}


# --------------------------------------------------------------------------- command line


def rewrite_deps(text: str, suggested: dict[str, list[str]]) -> str:
    """``dvc.yaml`` text with each stage's ``deps:`` entries under the package replaced by
    ``suggested[stage]`` (after the stage's other deps); every other line is kept as it is."""
    lines, out, stage, in_deps = text.splitlines(), [], None, False
    for line in lines:
        m = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if m:
            stage, in_deps = m.group(1), False
        if in_deps:
            if re.match(rf"^    - (\.\./)+{PACKAGE}(/|$)", line):
                continue  # an old package entry: replaced below
            if not line.startswith("    - "):
                out += [f"    - {dep}" for dep in suggested.get(stage, [])]
                in_deps = False
        if not in_deps:
            out.append(line)
        elif line.startswith("    - "):
            out.append(line)
        if re.match(r"^    deps:\s*$", line) and stage is not None:
            in_deps = True
    if in_deps:
        out += [f"    - {dep}" for dep in suggested.get(stage, [])]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="print whole deps: blocks (the stage's non-dissect deps kept)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a module is uncovered")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the dissect entries of every deps: block of dvc.yaml in "
                             "place (other deps and the rest of the file kept)")
    args = parser.parse_args(argv)
    pipeline = Pipeline()
    if args.write:
        path = pipeline.pipelines / "dvc.yaml"
        path.write_text(rewrite_deps(path.read_text(), suggested_deps(pipeline)))
        print(f"rewrote the deps of {path}", file=sys.stderr)
        return 0
    missing = uncovered_modules(pipeline)
    extra = unneeded_deps(pipeline)
    suggested = suggested_deps(pipeline)
    for stage, spec in pipeline.stages.items():
        print(f"{stage}:")
        if stage in missing:
            print("  # not covered by its deps: " + ", ".join(map(str, missing[stage])))
        if stage in extra:
            print("  # deps covering no imported module: " + ", ".join(map(str, extra[stage])))
        if args.full:
            print("  deps:")
            own = [d for d in dep_entries(spec)
                   if not re.match(rf"^(\.\./)+{PACKAGE}(/|$)", d)]
            for dep in own + suggested[stage]:
                print(f"    - {dep}")
        else:
            for dep in suggested[stage]:
                print(f"  - {dep}")
    n = sum(map(len, missing.values()))
    print(f"# {n} uncovered (stage, module) pairs in {len(missing)} stages", file=sys.stderr)
    return 1 if args.check and missing else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
