"""Progress a person can follow (issue 15): training shows epochs done / total on stderr, the
closing line of ``dissect <stage>`` says what the stage wrote (files, sizes) and how long it
took, and no log line shows a raw Python dict. Bars change nothing computed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_readout import tiny_backbone, tiny_data  # noqa: F401 (tiny_data is a fixture)

from dissect.config import Params
from dissect.provenance import (
    closing_line,
    describe_output,
    disk_usage,
    human_size,
    stage_outputs,
)
from dissect.training import train_readout

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "pipelines" / "params.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ training bars


def test_training_shows_epochs_done_of_total_and_changes_nothing(tiny_data, capsys):  # noqa: F811
    ids = tiny_data.ids
    kw = dict(epochs=3, patience=None, batch_size=2, lr=1e-2, seed=5)
    quiet = train_readout(tiny_backbone(), tiny_data, ids[:4], ids[4:], 1, **kw)
    assert capsys.readouterr().err == ""  # no bar unless asked for
    shown = train_readout(tiny_backbone(), tiny_data, ids[:4], ids[4:], 1, progress_bar=True,
                          desc="train k1 seed 5", **kw)
    captured = capsys.readouterr()
    assert captured.out == ""  # bars go to stderr only
    last = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("train k1 seed 5:") and "3/3" in last
    val = shown.history["val_nss"].iloc[-1]
    assert f"train loss {shown.history['train_loss'].iloc[-1]:.4f}" in last
    assert f"val NSS {val:.4f}" in last
    cols = ["epoch", "train_loss", "val_nss", "lr"]
    pd.testing.assert_frame_equal(quiet.history[cols], shown.history[cols])
    for (name, a), (_, b) in zip(quiet.model.tuned_state_dict().items(),
                                 shown.model.tuned_state_dict().items(), strict=True):
        assert bool((a == b).all()), name


def test_an_early_stop_is_said_on_the_bar(tiny_data, capsys, monkeypatch):  # noqa: F811
    ids = tiny_data.ids
    r = train_readout(tiny_backbone(), tiny_data, ids[:4], ids[4:], 0, epochs=6, patience=1,
                      lr=0.0, batch_size=2, progress_bar=True)
    assert len(r.history) == 2  # lr 0: epoch 2 does not improve on epoch 1
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("train k0 seed 0:") and "2/6" in last
    assert "early stop (best epoch 1)" in last


def test_scene_training_logs_readable_epochs_and_a_bar(tmp_path, capsys, caplog):
    from test_scene_model import ToyScenes
    from test_scene_model import tiny_backbone as scene_backbone

    from dissect.data.scenes import load_scenes
    from dissect.scene import train_scene_model

    ds = ToyScenes(24)
    labels = load_scenes(ds.write_labels(tmp_path / "scenes.csv"), min_images=1)
    caplog.set_level(logging.INFO, logger="dissect")
    r = train_scene_model(scene_backbone(), ds, labels, labels.ids[:18], labels.ids[18:],
                          epochs=3, patience=10, batch_size=6, hidden=(8, 8), progress=True)
    err = capsys.readouterr().err
    assert "train scene model" in err and "3/3" in err
    epochs = [m for m in caplog.messages if m.startswith("scene epoch")]
    assert len(epochs) == 3
    first = r.history.iloc[0]
    assert epochs[0].startswith(f"scene epoch 0: train loss {first['train_loss']:.4f}")
    for text in [*caplog.messages, err]:
        assert "{'" not in text and "{\"" not in text


# ------------------------------------------------------------------ what a stage wrote


def _tree(root: Path) -> Path:
    """A hand-made output folder: 3 regular files of 1000 + 2500 + 0 bytes, one link."""
    folder = root / "out"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"x" * 1000)
    (folder / "sub" / "b.bin").write_bytes(b"y" * 2500)
    (folder / "sub" / "deeper" / "empty").write_bytes(b"")
    os.symlink(folder / "a.bin", folder / "sub" / "link")  # not counted twice
    return folder


def test_disk_usage_and_description_match_a_hand_count(tmp_path):
    folder = _tree(tmp_path)
    assert disk_usage(folder) == (3, 3500)
    assert disk_usage(folder / "sub" / "b.bin") == (1, 2500)
    assert disk_usage(tmp_path / "nothing") == (0, 0)
    assert describe_output(folder, [tmp_path]) == "out (3 files, 3.5 kB)"
    assert describe_output(folder / "a.bin", [tmp_path]) == "out/a.bin (1 kB)"
    assert describe_output(folder / "sub" / "deeper", [tmp_path]) == \
        "out/sub/deeper (1 file, 0 B)"
    assert describe_output(tmp_path / "gone", [tmp_path]) == "gone (missing)"
    # outside every root: the absolute path
    assert describe_output(folder, [tmp_path / "elsewhere"]) == f"{folder} (3 files, 3.5 kB)"
    assert [human_size(n) for n in (0, 999, 1000, 12_345, 156_400_000, 1_230_000_000)] == \
        ["0 B", "999 B", "1 kB", "12.3 kB", "156 MB", "1.23 GB"]


def _pipeline(tmp_path: Path, **values) -> Params:
    """A pipeline folder with a params.yaml and a dvc.yaml, and Params of it with ``values``
    in place of the file's (as ``--set`` gives them)."""
    pipe = tmp_path / "pipelines"
    pipe.mkdir(parents=True)
    raw = {"work": "../work", "results": "../results",
           "data": {"split_file": "../annotations/split.csv", "osie": "../osie"},
           "device": "auto"}
    (pipe / "params.yaml").write_text(yaml.safe_dump(raw))
    (pipe / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "one": {"cmd": "dissect one",
                "outs": ["../work/a", {"../results/tables/t.csv": {"cache": False}},
                         "../annotations/split.csv", "${data.osie}/made"]},
        "none": {"cmd": "dissect none"}}}))
    params = Params({**raw, "data": dict(raw["data"])})
    for key, value in values.items():
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    params.base = pipe
    params.file = "params.yaml"
    return params


def test_stage_outputs_follow_the_overridden_paths(tmp_path):
    params = _pipeline(tmp_path)
    assert stage_outputs(params, "one") == [
        tmp_path / "work" / "a", tmp_path / "results" / "tables" / "t.csv",
        tmp_path / "annotations" / "split.csv", tmp_path / "osie" / "made"]
    assert stage_outputs(params, "none") is None  # no outs
    assert stage_outputs(params, "absent") is None  # not a stage there
    # a profile: work, results and the split file elsewhere; results inside work
    quick = _pipeline(tmp_path / "q", work="../work/quick", results="../work/quick/results",
                      **{"data.split_file": "../work/quick/split.csv", "device": "cpu"})
    q = tmp_path / "q"
    assert stage_outputs(quick, "one") == [
        q / "work" / "quick" / "a", q / "work" / "quick" / "results" / "tables" / "t.csv",
        q / "work" / "quick" / "split.csv", q / "osie" / "made"]
    # no dvc.yaml beside the parameters: none
    (q / "pipelines" / "dvc.yaml").unlink()
    assert stage_outputs(quick, "one") is None


def test_closing_line_says_what_was_written_or_falls_back(tmp_path, monkeypatch):
    params = _pipeline(tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = _tree(tmp_path / "work" / "a")
    (tmp_path / "results" / "tables").mkdir(parents=True)
    (tmp_path / "results" / "tables" / "t.csv").write_text("x,y\n1,2\n")
    assert folder.parent == tmp_path / "work" / "a"
    line = closing_line("one", params, None, 12.345)
    assert line == ("dissect one: wrote work/a (3 files, 3.5 kB), results/tables/t.csv (8 B), "
                    "annotations/split.csv (missing), osie/made (missing) in 12.3 s")
    # no outs in dvc.yaml: the path(s) the stage returned, else just the time
    assert closing_line("none", params, [folder / "a.bin"], 1.0) == \
        "dissect none: wrote work/a/out/a.bin (1 kB) in 1.0 s"
    assert closing_line("none", params, pd.DataFrame(), 2.0) == "dissect none: done in 2.0 s"
    assert closing_line("none", params, None, 2.0) == "dissect none: done in 2.0 s"


# ------------------------------------------------------------------ the CLI


def test_cli_closing_line_of_a_cheap_stage(tmp_path, capsys, caplog):
    """``dissect popout-arrays`` (needs no OSIE) with work/results moved by ``--set``: the last
    line names both outs where they were written, with their real file counts, and no log line
    holds a dict."""
    from dissect.cli import main

    caplog.set_level(logging.INFO, logger="dissect")
    work, results = tmp_path / "work", tmp_path / "results"
    assert main(["popout-arrays", "--params", str(PARAMS), "--set", f"work={work}",
                 "--set", f"results={results}", "--set", "popout.n_per_dimension=1"]) == 0
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    arrays = work / "popout" / "arrays"
    n = sum(1 for p in arrays.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in arrays.rglob("*") if p.is_file())
    manifest = results / "tables" / "popout_manifest.csv"
    assert last.startswith(f"dissect popout-arrays: wrote {arrays} ({n} files, "
                           f"{human_size(size)}), {manifest} (")
    assert n == 23  # 11 arrays, a mask each, the manifest
    assert " in " in last and last.endswith(" s")
    for text in [*caplog.messages, err]:
        assert "{'" not in text and "{\"" not in text
    assert np.isfinite(float(last.rsplit(" in ", 1)[1].removesuffix(" s")))
