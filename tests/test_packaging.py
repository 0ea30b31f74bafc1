"""The conda environment and pyproject.toml install the same pinned set; the CLI lists every
stage that dvc.yaml runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_pins_what_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) - {"-e ."} == pinned
    assert all("==" in p for p in pinned), "every dependency is pinned"
    assert not any(p.startswith("torchvision") for p in pinned)


def test_every_dvc_stage_is_a_dissect_command():
    from dissect.cli import STAGES

    stages = yaml.safe_load((ROOT / "pipelines" / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"dissect {name}", name
        assert name in STAGES, name
