"""Issue 11, "Parameters that lie": params.yaml and its overrides are validated against the schema
of :mod:`dissect.params_schema`. Unknown (misspelt or unused) keys, missing keys, wrong types,
NaN and values out of range are refused with one line naming the dotted key; the real
params.yaml and the quick profile pass unchanged; every schema key is read by the code."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path

import pytest
import yaml

from dissect.cli import main
from dissect.config import ParamsError, load_params
from dissect.errors import DataError
from dissect.params_schema import (
    BACKBONE_NAMES,
    CACHE_DTYPES,
    CATEGORY_NAMES,
    CLASSICAL_NAMES,
    ParamsSchema,
    leaf_keys,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "pipelines" / "params.yaml"


def _refused(overrides: dict) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        load_params(PARAMS, overrides)
    return info.value


# ------------------------------------------------------------------------ valid parameters
def test_pipeline_params_pass_unchanged():
    """The committed params.yaml validates, and load_params returns exactly the file's mapping
    (same keys, order and values: nothing added, nothing converted)."""
    raw = yaml.safe_load(PARAMS.read_text())
    params = load_params(PARAMS)
    assert params == raw
    assert list(params) == list(raw)
    assert all(list(params[s]) == list(raw[s]) for s in raw if isinstance(raw[s], dict))
    assert set(leaf_keys()) - {"progress"} == {
        f"{s}.{k}" if isinstance(v, dict) else s
        for s, v in raw.items() for k in (v if isinstance(v, dict) else [None])}


def test_quick_profile_overrides_pass():
    from dissect.pipeline import load_profile

    overrides = load_profile("quick", ROOT / "pipelines" / "profiles")
    params = load_params(PARAMS, {**overrides, "progress": False})
    assert params["train"]["seeds"] == overrides["train.seeds"]
    assert params["backbone"]["layers"] == overrides["backbone.layers"]
    assert params["data"]["max_images"] == overrides["data.max_images"]


def test_yaml_float_strings_are_read_as_numbers():
    """PyYAML reads ``1e-3`` (no dot) as a string; the code always took float() of it, so it
    stays accepted, and load_params hands the number on."""
    params = load_params(PARAMS, {"train.lr": "1e-3", "stats.threshold": 2})
    assert params["train"]["lr"] == 0.001 and isinstance(params["train"]["lr"], float)
    assert params["stats"]["threshold"] == 2


# ------------------------------------------------------------------------ refused parameters
CASES = [
    # (overrides, refused key, words of the message)
    ({"stats.treshold": 2}, "stats.treshold", "unknown key.*did you mean stats.threshold"),
    ({"backbone.input_size": 320}, "backbone.input_size", "unknown key"),
    ({"unused_section": {"knob": 1}}, "unused_section", "unknown key"),
    ({"stats.threshold": math.nan}, "stats.threshold", "finite number, got nan"),
    ({"stats.threshold": math.inf}, "stats.threshold", "finite number, got inf"),
    ({"stats.threshold": "abc"}, "stats.threshold", "valid number, got 'abc'"),
    ({"stats.threshold": True}, "stats.threshold", "valid number, got True"),
    ({"data.max_images": "abc"}, "data.max_images", "valid integer, got 'abc'"),
    ({"data.max_images": 2.5}, "data.max_images", "valid integer, got 2.5"),
    ({"data.max_images": 0}, "data.max_images", "greater than or equal to 1, got 0"),
    ({"extract.dtype": "float64"}, "extract.dtype", "'float16' or 'float32', got 'float64'"),
    ({"backbone.layers": "head"}, "backbone.layers", r"must be a list, e\.g\. \[head\]"),
    ({"backbone.layers": []}, "backbone.layers", "at least 1 item"),
    ({"backbone.layers": ["head", "head"]}, "backbone.layers", "head more than once"),
    ({"backbone.name": "vgg19"}, "backbone.name", "'efficientnet_lite0', got 'vgg19'"),
    ({"backbone.weights": None}, "backbone.checkpoint", "must name a file"),
    ({"backbone.weights": "random", "backbone.checkpoint": "w.pth"}, "backbone.checkpoint",
     "must be null"),
    ({"train.ks": [0, "al"]}, "train.ks[1]", "integer ≥ 0 or 'all', got 'al'"),
    ({"train.ks": "all"}, "train.ks", "must be a list"),
    ({"train.seeds": [0, 0]}, "train.seeds", "0 more than once"),
    ({"train.seeds": [-1]}, "train.seeds[0]", "greater than or equal to 0"),
    ({"scene.seeds": []}, "scene.seeds", "at least 1 item"),
    ({"train.threads": 0}, "train.threads", "greater than or equal to 1"),
    ({"train.val_fraction": 1.0}, "train.val_fraction", "less than 1"),
    ({"train.lr": 0}, "train.lr", "greater than 0"),
    ({"train.optimizer": "rmsprop"}, "train.optimizer", "got 'rmsprop'"),
    ({"train.lr_schedule": "linear"}, "train.lr_schedule", "'cosine' or 'step'"),
    ({"stats.ci_level": 1.0}, "stats.ci_level", "less than 1"),
    ({"stats.ci_method": "bca"}, "stats.ci_method", "'BCa'"),
    ({"stats.null_type": "pixels"}, "stats.null_type", "'labels' or 'images'"),
    ({"stats.n_boot": -1}, "stats.n_boot", "greater than or equal to 0"),
    ({"scene.monitor": "f1"}, "scene.monitor", "'balanced_accuracy'"),
    ({"scene.hidden": [512]}, "scene.hidden", "at least 2 items"),
    ({"scene.dropout": 1.0}, "scene.dropout", "less than 1"),
    ({"scene.tuned_stages": True}, "scene.tuned_stages", "integer ≥ 0 or 'all'"),
    ({"popout.models": ["itti", "itty"]}, "popout.models[1]", "got 'itty'"),
    ({"figures.task_map_category": "persons"}, "figures.task_map_category", "'person head'"),
    ({"data.drop_first": "yes"}, "data.drop_first", "valid boolean"),
    ({"dask.chunk_images": 0}, "dask.chunk_images", "greater than or equal to 1"),
    ({"stats": 3}, "stats", "must be a mapping"),
    ({"work.sub": 1}, "work.sub", "work is not a section"),
    ({"mlnet.input_size": [480, 644]}, "mlnet.input_size", "multiples of 8"),
    ({"mlnet.input_size": [72, 640]}, "mlnet.input_size", "at least 80"),
    ({"mlnet.input_size": 480}, "mlnet.input_size", r"\[rows, cols\]"),
    ({"mlnet.trunk": "partial"}, "mlnet.trunk", "'frozen' or 'finetuned'"),
    ({"mlnet.optimizer": "adamw"}, "mlnet.optimizer", "'sgd' or 'adam'"),
    ({"evaluate.models": ["mlnett"]}, "evaluate.models[0]", "got 'mlnett'"),
]


@pytest.mark.parametrize("overrides, key, words", CASES, ids=[c[1] for c in CASES])
def test_bad_parameter_is_refused_naming_the_key(overrides, key, words):
    err = _refused(overrides)
    assert isinstance(err, DataError)
    assert err.keys == [key], str(err)
    text = str(err)
    assert "\n" not in text, "one problem, one line"
    assert text.startswith(f"{PARAMS}: {key}: ")
    assert re.search(words, text), text


def test_every_problem_gets_its_own_line():
    err = _refused({"stats.treshold": 2, "stats.threshold": "abc", "extract.dtype": "float64"})
    assert sorted(err.keys) == ["extract.dtype", "stats.threshold", "stats.treshold"]
    lines = str(err).splitlines()
    assert len(lines) == 4 and "3 invalid parameters" in lines[0]
    assert all(" (set by an override)" in line for line in lines[1:])


def test_missing_key_and_bad_files(tmp_path):
    raw = yaml.safe_load(PARAMS.read_text())
    del raw["train"]["threads"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params\.yaml: train\.threads: missing$"):
        load_params(path)
    path.write_text("work: [1,\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_params(path)
    path.write_text("- 1\n")
    with pytest.raises(DataError, match="must hold a mapping"):
        load_params(path)


@pytest.mark.parametrize("setting, key", [
    ("stats.treshold=2", "stats.treshold"), ("stats.threshold=.nan", "stats.threshold"),
    ("stats.threshold=abc", "stats.threshold"), ("data.max_images=abc", "data.max_images"),
    ("extract.dtype=float64", "extract.dtype"), ("backbone.layers=head", "backbone.layers"),
    ("backbone.name=vgg19", "backbone.name"), ("backbone.input_size=320", "backbone.input_size"),
])
def test_cli_prints_the_problem_without_a_traceback(setting, key, capsys):
    """``dissect <stage> --set …`` as the issue ran it: exit status 2, one error line naming the
    key, before any stage work."""
    assert main(["statistics", "--params", str(PARAMS), "--set", setting, "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "error" in ln]
    assert line.startswith(f"dissect statistics: error: {PARAMS}: {key}: ")


def test_cli_refuses_a_value_that_is_not_yaml(capsys):
    with pytest.raises(SystemExit, match=r"--set train\.ks: .* not valid YAML"):
        main(["statistics", "--params", str(PARAMS), "--set", "train.ks=[0, 1"])


# ------------------------------------------------------------------------ schema vs the code
def test_choices_match_the_registries():
    """The schema's plain tuples (kept free of torch imports) are the registries' names."""
    from dissect.backbones import BACKBONES
    from dissect.cache import DTYPES
    from dissect.categories import NAMES
    from dissect.models.classical import CLASSICAL_MODELS
    from dissect.statistics import CI_METHODS, NULLS
    from dissect.training import train_readout

    assert BACKBONE_NAMES == tuple(BACKBONES)
    assert CACHE_DTYPES == tuple(DTYPES)
    assert set(CLASSICAL_NAMES) == set(CLASSICAL_MODELS)
    assert CATEGORY_NAMES == tuple(NAMES)

    def choices(section: str, key: str) -> set:
        section_model = ParamsSchema.model_fields[section].annotation
        ann = section_model.model_fields[key].annotation
        return {a for a in _literal_args(ann) if a is not None}

    assert choices("stats", "null_type") == set(NULLS)
    assert choices("stats", "ci_method") == set(CI_METHODS)
    hints = typing.get_type_hints(train_readout)
    assert choices("train", "optimizer") == set(_literal_args(hints["optimizer"]))
    assert choices("train", "lr_schedule") == set(_literal_args(hints["lr_schedule"])) - {None}


def _literal_args(ann) -> list:
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [a for arg in typing.get_args(ann) for a in _literal_args(arg)]


def test_every_schema_key_is_read_by_the_code():
    """A key in the schema that no code reads would be a parameter that lies: each leaf name
    must be read somewhere in dissect/ (``["name"]`` or ``.get("name"``), outside the schema."""
    source = "\n".join(p.read_text() for p in (ROOT / "dissect").rglob("*.py")
                       if p.name != "params_schema.py")
    unread = []
    for key in leaf_keys():
        name = re.escape(key.rsplit(".", 1)[-1])
        if not re.search(rf"""\[\s*["']{name}["']\s*\]|\.get\(\s*["']{name}["']""", source):
            unread.append(key)
    assert not unread, f"schema keys that no code reads: {unread}"
