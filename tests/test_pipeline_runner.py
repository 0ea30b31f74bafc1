"""Atomic stage outputs (`common.replacing`), where the CLI finds its parameters, and the
profile runner behind `make repro PROFILE=quick` (`dissect.pipeline`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from dissect.config import find_params, load_params
from dissect.errors import DataError
from dissect.pipeline import commands, load_profile, stage_order
from dissect.stages import common

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ common.replacing
def test_replacing_swaps_a_folder_and_drops_files_of_the_earlier_run(tmp_path):
    out = tmp_path / "tables" / "statistics"
    out.mkdir(parents=True)
    (out / "table2_top10_mean.csv").write_text("old")
    with common.replacing(out) as tmp:
        assert tmp != out and tmp.parent == out.parent
        tmp.mkdir()
        (tmp / "table2_top5_mean.csv").write_text("new")
        assert (out / "table2_top10_mean.csv").read_text() == "old"  # untouched until the end
    assert sorted(p.name for p in out.iterdir()) == ["table2_top5_mean.csv"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["statistics"]  # no leftovers


def test_replacing_keeps_the_old_output_when_the_stage_fails(tmp_path):
    out = tmp_path / "report.md"
    out.write_text("committed")
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    with pytest.raises(RuntimeError), common.replacing(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(KeyboardInterrupt), common.replacing(folder) as tmp:
        tmp.mkdir()
        (tmp / "b.png").write_bytes(b"png")
        raise KeyboardInterrupt
    assert out.read_text() == "committed"
    assert [p.name for p in folder.iterdir()] == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "report.md"]


def test_replacing_a_file_and_a_new_output(tmp_path):
    out = tmp_path / "new" / "curves.csv"
    with common.replacing(out) as tmp:
        assert tmp.suffix == ".csv"  # writers that check the suffix accept the temporary
        tmp.write_text("a,b\n")
    assert out.read_text() == "a,b\n"
    with common.replacing(out) as tmp:
        tmp.write_text("c,d\n")
    assert out.read_text() == "c,d\n"
    with pytest.raises(DataError, match="wrote nothing"), common.replacing(out):
        pass
    assert out.read_text() == "c,d\n"


# ------------------------------------------------------------------ where params come from
def test_params_are_found_in_the_working_directory_not_beside_the_package(tmp_path, monkeypatch):
    raw = yaml.safe_load((ROOT / "pipelines" / "params.yaml").read_text())

    def write(path, **top):
        path.write_text(yaml.safe_dump({**raw, **top}, sort_keys=False))

    write(tmp_path / "params.yaml", work="w", results="r")
    monkeypatch.chdir(tmp_path)
    assert find_params() == (tmp_path / "params.yaml").resolve()
    p = load_params()
    assert p.work == (tmp_path / "w").resolve() and p.file == "params.yaml"
    (tmp_path / "params.yaml").unlink()
    (tmp_path / "pipelines").mkdir()
    write(tmp_path / "pipelines" / "params.yaml", work="../w2")
    assert load_params().work == (tmp_path / "w2").resolve()
    (tmp_path / "pipelines" / "params.yaml").unlink()
    with pytest.raises(DataError, match="--params"):
        load_params()
    other = tmp_path / "elsewhere.yaml"
    write(other, work="x")
    assert load_params(other).file == "elsewhere.yaml"


# ------------------------------------------------------------------ the profile runner
def _inside(dep: str, out: str) -> bool:
    dep, out = os.path.normpath(dep), os.path.normpath(out)
    return dep == out or dep.startswith(out + os.sep)


def test_stage_order_puts_every_producer_before_its_consumers():
    dvc = yaml.safe_load((ROOT / "pipelines" / "dvc.yaml").read_text())["stages"]
    order = stage_order(ROOT / "pipelines" / "dvc.yaml")
    assert sorted(order) == sorted(dvc)
    pos = {s: i for i, s in enumerate(order)}
    n_edges = 0
    for consumer, spec in dvc.items():  # a straightforward double loop over all pairs
        for dep in spec.get("deps", []):
            for producer, pspec in dvc.items():
                for out in pspec.get("outs", []):
                    out = next(iter(out)) if isinstance(out, dict) else out
                    if producer != consumer and _inside(dep, out):
                        assert pos[producer] < pos[consumer], (producer, consumer, dep)
                        n_edges += 1
    assert n_edges >= 20  # the real graph has many edges (not a vacuous check)


def test_stage_order_on_a_hand_made_graph(tmp_path):
    f = tmp_path / "dvc.yaml"
    f.write_text(yaml.safe_dump({"stages": {
        "c": {"cmd": "x", "deps": ["../w/b/x.csv"], "outs": ["../w/c"]},
        "a": {"cmd": "x", "outs": ["../w/a"]},
        "b": {"cmd": "x", "deps": ["../w/a"], "outs": ["../w/b"]},
        "d": {"cmd": "x", "deps": ["../w/ab"]},  # ../w/ab is not inside ../w/a
    }}))
    assert stage_order(f) == ["a", "d", "b", "c"]


def test_quick_profile_overrides_parse_back_to_their_values(tmp_path):
    over = load_profile("quick", ROOT / "pipelines" / "profiles")
    assert over["results"] != "../results" and str(over["work"]).startswith("../work/")
    assert over["data.split_file"] != "../annotations/splits/osie.csv"  # never the committed one
    base = yaml.safe_load((ROOT / "pipelines" / "params.yaml").read_text())
    for key in over:  # every override names an existing parameter
        node = base
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key}: not a parameter"
            node = node[part]
    (cmd,) = commands(over, ["statistics"], Path("params.yaml"))
    assert cmd[3:6] == ["statistics", "--params", "params.yaml"]
    sets = dict(a.split("=", 1) for a in cmd[7::2])
    assert {k: yaml.safe_load(v) for k, v in sets.items()} == over
    with pytest.raises(DataError, match="quick"):
        load_profile("nope", ROOT / "pipelines" / "profiles")
