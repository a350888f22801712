"""Building the extension: a cached JIT build with torch.utils.cpp_extension.

The first call compiles every rung plus the binding (about two minutes on 2 cores) into
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); later calls load the cached library.
Target: the visible GPU's architecture, or sm_90 (Hopper) when there is none, so the build also
runs on a CPU-only machine that has nvcc. TORCH_CUDA_ARCH_LIST, if set, wins. The toolkit is CUDA_HOME,
else torch's guess, else /usr/local/cuda: the first that has include/cuda_runtime.h.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from cuda_matmul.ladder import RUNGS

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC_FLAGS = ["-O3", "-lineinfo"]  # the C++ standard is torch's choice (C++17 or C++20 by version)


def sources() -> list[Path]:
    return [CSRC / "binding.cpp", *(CSRC / r.source for r in RUNGS)]


def default_arch() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def cuda_home(detected: str | None) -> Path:
    """The CUDA toolkit root holding include/cuda_runtime.h: CUDA_HOME, torch's guess, or /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), detected, "/usr/local/cuda"]
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c)
    raise RuntimeError(f"building cuda-matmul needs the CUDA toolkit; none of {candidates} has include/cuda_runtime.h")


@functools.cache
def load(verbose: bool = False) -> None:
    """Compile (or load the cached build of) the extension; its op is torch.ops.cuda_matmul.gemm."""
    from torch.utils import cpp_extension

    home = cuda_home(cpp_extension.CUDA_HOME)
    cpp_extension.CUDA_HOME = str(home)  # torch guesses it from nvcc's path, which a wrapper script fools
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_arch())
    cpp_extension.load(
        name="cuda_matmul_ext",
        sources=[str(p) for p in sources()],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=NVCC_FLAGS,
        is_python_module=False,
        verbose=verbose,
    )
