import subprocess

import pytest
import torch
from mlsys_bench.environment import capture_environment, describe, git_state, hardware_label, slug


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_state_clean_then_dirty(tmp_path, monkeypatch):
    monkeypatch.delenv("MLSYS_GIT_COMMIT", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("a")
    _git(tmp_path, "add", "f.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False and state["source"] == "git"
    (tmp_path / "f.txt").write_text("b")
    assert git_state(tmp_path)["dirty"] is True
    # a tree copied with a stale .git folder: the commit named by whoever copied it wins
    monkeypatch.setenv("MLSYS_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("MLSYS_GIT_DIRTY", "0")
    assert git_state(tmp_path) == {"commit": "f" * 40, "dirty": False, "source": "env"}


def test_git_state_from_env_without_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("MLSYS_GIT_COMMIT", raising=False)
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "source": None}
    monkeypatch.setenv("MLSYS_GIT_COMMIT", "abc123")
    monkeypatch.setenv("MLSYS_GIT_DIRTY", "0")
    assert git_state(tmp_path) == {"commit": "abc123", "dirty": False, "source": "env"}


def test_capture_has_every_field(tmp_path):
    env = capture_environment(tmp_path)
    for key in ("command", "utc_time", "git", "gpu", "cpu", "python", "torch", "triton", "numpy", "platform"):
        assert key in env
    assert env["cpu"]["logical_cores"] >= 1 and env["cpu"]["memory_GiB"] > 0
    assert env["utc_time"].endswith("Z")
    if not torch.cuda.is_available():
        assert env["gpu"] is None
        assert describe(env).startswith("CPU ")


def test_labels():
    assert slug("NVIDIA H100 80GB HBM3".removeprefix("NVIDIA ")) == "h100-80gb-hbm3"
    assert hardware_label(torch.device("cpu")).startswith("cpu-")


@pytest.mark.gpu
def test_gpu_fields():
    env = capture_environment(".")
    gpu = env["gpu"]
    assert gpu["sm_count"] > 0 and gpu["memory_GiB"] > 1 and gpu["l2_MiB"] > 0
    assert gpu["driver"], "nvidia-smi did not report a driver version"
    assert hardware_label(torch.device("cuda")) == slug(gpu["name"].removeprefix("NVIDIA "))
