"""Workspace-level checks: workflows lint clean, the no-install path finds every project, docs are fresh."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from mlsys_bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_workflows_pass_actionlint():
    exe = Path(sys.executable).parent / "actionlint"
    assert exe.exists(), "actionlint is missing from the dev dependency group"
    out = subprocess.run([str(exe), "-no-color"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_script_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "uv run pytest" in readme and ci.rstrip().endswith("uv run pytest")


def _members():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    return [p.parent for g in globs for p in ROOT.glob(f"{g}/pyproject.toml")]


def test_noinstall_path_exposes_every_registered_project(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "noinstall.py")], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("export PYTHONPATH=")
    pythonpath = out.stdout.split("=", 1)[1].split("${")[0].strip("'\"")
    # -S: no site-packages, so only what the script put on the path can be found
    probe = (
        "import json; from importlib import metadata; "
        "print(json.dumps(sorted(e.name for e in metadata.entry_points(group='mlsys.projects'))))"
    )
    env = {**os.environ, "PYTHONPATH": pythonpath}
    found = json.loads(
        subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    )
    expected = sorted(
        name
        for m in _members()
        for name in tomllib.loads((m / "pyproject.toml").read_text())["project"]
        .get("entry-points", {})
        .get("mlsys.projects", {})
    )
    assert found == expected and "mlsys-bench" in found
    for path in pythonpath.split(":")[:-1]:
        assert Path(path).is_dir() and Path(path).name == "src"


def test_every_member_declares_its_dependencies_and_registers():
    for m in _members():
        project = tomllib.loads((m / "pyproject.toml").read_text())["project"]
        assert project.get("requires-python") == ">=3.11", m
        assert (m / "README.md").exists(), m


def test_generated_docs_are_fresh(capsys):
    assert main(["blog", "all", "--check"]) == 0, capsys.readouterr().out


def test_projects_json_lists_paths(capsys):
    assert main(["projects", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"name": "mlsys-bench", "path": "shared/mlsys-bench"} in listed
    for p in listed:
        assert (ROOT / p["path"] / "pyproject.toml").exists()
