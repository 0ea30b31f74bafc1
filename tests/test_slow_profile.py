"""`make repro PROFILE=quick` end to end (slow: a few minutes): every stage of dvc.yaml runs as
its own `dissect` process with the quick profile, writes a complete report into its own folder,
and leaves the committed results/ and dvc.lock untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dissect.pipeline import stage_order

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.osie]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for top in paths:
        for f in sorted(p for p in ([top] if top.is_file() else top.rglob("*")) if p.is_file()):
            h.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
    return h.hexdigest()


def test_quick_profile_runs_every_stage_without_touching_committed_results(tmp_path, osie_root):
    profile = yaml.safe_load((ROOT / "pipelines" / "profiles" / "quick.yaml").read_text())
    profile.update({"work": str(tmp_path / "work"), "results": str(tmp_path / "results"),
                    "data.split_file": str(tmp_path / "split.csv"),
                    "data.osie": str(osie_root), "progress": False})
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(profile))
    before = _digest(ROOT / "results", ROOT / "pipelines" / "dvc.lock",
                     ROOT / "annotations" / "splits")
    proc = subprocess.run([sys.executable, "-m", "dissect.pipeline", str(tmp_path / "quick.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(stage_order(ROOT / 'pipelines' / 'dvc.yaml'))} stages" in proc.stderr
    assert _digest(ROOT / "results", ROOT / "pipelines" / "dvc.lock",
                   ROOT / "annotations" / "splits") == before
    prov = {p.stem for p in (tmp_path / "work" / "provenance").glob("*.json")}
    assert {"prepare", "train", "statistics", "scene", "popout"} <= prov
    report = (tmp_path / "results" / "report.md").read_text()
    for section in ("Table 2 analogue", "Table 3", "Tables 4–6", "Tables 7–8", "Inner vs output",
                    "**table7_task_statistics**", "**readout_performance**"):
        assert section in report, section
    assert "Not produced" not in report
    for link in [line.split("](")[1].rstrip(")") for line in report.splitlines()
                 if line.startswith("![")]:
        assert (tmp_path / "results" / link).is_file(), link
