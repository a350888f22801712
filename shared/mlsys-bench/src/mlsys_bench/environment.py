"""Environment capture: what machine, software and source produced a number.

Every record carries this dict, so a result file alone says how to reproduce it. On a machine whose
copy of the repo may not be a faithful git checkout (a no-install GPU box that received a file tree), the
commit comes from MLSYS_GIT_COMMIT / MLSYS_GIT_DIRTY when they are set, by whoever copied the tree there.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(repo: Path) -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None} of the source that produced a number.

    MLSYS_GIT_COMMIT, when set, wins over the checkout: whoever copied the tree to another machine knows
    its commit, while a .git folder copied along with it can be stale there."""
    env_commit = os.environ.get("MLSYS_GIT_COMMIT")
    if env_commit:
        dirty = os.environ.get("MLSYS_GIT_DIRTY")
        return {"commit": env_commit, "dirty": None if dirty is None else dirty == "1", "source": "env"}
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
        return {"commit": commit, "dirty": bool(status) if status is not None else None, "source": "git"}
    return {"commit": None, "dirty": None, "source": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def gpu_info(index: int = 0) -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    driver = _run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "memory_GiB": round(props.total_memory / 2**30, 2),
        "l2_MiB": round(props.L2_cache_size / 2**20, 2),
        "driver": driver,
        "cuda_runtime": torch.version.cuda,
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def hardware_label(device: torch.device) -> str:
    """The results folder name for a device: 'h100-80gb-hbm3' for a GPU, 'cpu-<model>' otherwise."""
    if device.type == "cuda":
        name = torch.cuda.get_device_properties(device).name
        return slug(name.removeprefix("NVIDIA "))
    return "cpu-" + slug(_cpu_model())[:48].strip("-")


def capture_environment(repo: Path) -> dict[str, Any]:
    """The full environment dict stored in every record."""
    import psutil

    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "utc_time": utc_now(),
        "git": git_state(repo),
        "gpu": gpu_info(),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_GiB": round(psutil.virtual_memory().total / 2**30, 2),
        },
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "numpy": _version("numpy"),
    }


def describe(env: dict[str, Any]) -> str:
    """One line for a table caption: device, software, commit."""
    gpu = env.get("gpu")
    device = gpu["name"] if gpu else f"CPU {env['cpu']['model']} ({env['cpu']['logical_cores']} cores)"
    parts = [device, f"torch {env['torch']}"]
    if gpu:
        parts.append(f"CUDA {gpu['cuda_runtime']}")
    if env.get("triton"):
        parts.append(f"triton {env['triton']}")
    commit = env["git"]["commit"]
    if commit:
        parts.append(f"commit {commit[:8]}" + ("-dirty" if env["git"]["dirty"] else ""))
    return ", ".join(parts)
