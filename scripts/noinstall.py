"""The no-install path: use the workspace from a Python that already has torch and triton.

For machines with no uv and no internet (an NGC container, a cluster module, a lent GPU box):

    eval "$(python3 scripts/noinstall.py)"
    python3 -m mlsys_bench bench cuda-matmul
    python3 -m pytest -m gpu projects/cuda-matmul

It prints a PYTHONPATH over every member's src/ folder, plus a folder of minimal .dist-info
directories generated from each member's pyproject.toml, so importlib.metadata sees the packages'
names, versions and entry points exactly as an install would (that is how `mlsys bench all` finds the
projects). Nothing is installed and nothing outside <repo>/.noinstall is written.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def members(root: Path) -> list[Path]:
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    return sorted(p.parent for g in globs for p in root.glob(f"{g}/pyproject.toml"))


def write_dist_info(member: Path, site: Path) -> str:
    project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = dict(project.get("entry-points", {}))
    if "scripts" in project:
        groups["console_scripts"] = project["scripts"]
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the workspace root (default: this checkout)")
    root = ap.parse_args().root.resolve()
    site = root / ".noinstall" / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    paths = []
    for member in members(root):
        write_dist_info(member, site)
        if (member / "src").is_dir():
            paths.append(str(member / "src"))
    paths.append(str(site))
    print(f"export PYTHONPATH={shlex.quote(':'.join(paths))}${{PYTHONPATH:+:$PYTHONPATH}}")


if __name__ == "__main__":
    main()
