"""The CUDA toolchain the projects' extensions build with: where the toolkit is and which GPU to target.

torch.utils.cpp_extension guesses CUDA_HOME from the path of `nvcc`, which a wrapper script (such as
/usr/local/bin/nvcc exec'ing the real one) fools; the headers then go missing. The order here: the
CUDA_HOME variable, torch's guess, /usr/local/cuda, the first holding include/cuda_runtime.h.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cuda_home() -> Path | None:
    """The CUDA toolkit root, or None when no toolkit is installed."""
    from torch.utils import cpp_extension

    for candidate in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if candidate and (Path(candidate) / "include" / "cuda_runtime.h").exists():
            return Path(candidate)
    return None


def target_arch() -> str:
    """The visible GPU's compute capability, or 9.0 (Hopper) on a machine without one."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def prepare_cuda_build() -> Path | None:
    """Point cpp_extension at the real toolkit and the target arch (TORCH_CUDA_ARCH_LIST wins if set).
    Returns the toolkit root, or None when there is none (build for the CPU only)."""
    from torch.utils import cpp_extension

    home = cuda_home()
    if home is not None:
        cpp_extension.CUDA_HOME = str(home)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", target_arch())
    return home
