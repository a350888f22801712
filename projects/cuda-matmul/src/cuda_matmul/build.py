"""Building the extension: a cached JIT build with torch.utils.cpp_extension.

The first call compiles every rung plus the binding into
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); later calls load the cached library.
Target: the visible GPU's architecture, or sm_90 (Hopper) when there is none, so the build also
runs on a CPU-only machine that has nvcc (mlsys_bench.toolchain finds the toolkit and the target).
Compute capability 9.0 is always built as sm_90a, the arch-specific target that has wgmma and
setmaxnreg (rung 10); an sm_90a binary runs only on 9.0 GPUs, which is what it is built for.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from mlsys_bench.toolchain import prepare_cuda_build, target_arch

from cuda_matmul.ladder import RUNGS

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC_FLAGS = ["-O3", "-lineinfo"]  # the C++ standard is torch's choice (C++17 or C++20 by version)


def sources() -> list[Path]:
    return [CSRC / "binding.cpp", *(CSRC / r.source for r in RUNGS)]


def default_arch() -> str:
    return arch_specific(target_arch())


def arch_specific(arch_list: str) -> str:
    """'9.0' -> '9.0a' in a TORCH_CUDA_ARCH_LIST string ('8.0;9.0' -> '8.0;9.0a'); other entries as given."""
    return ";".join("9.0a" if a.strip() == "9.0" else a.strip() for a in arch_list.replace(" ", ";").split(";") if a)


@functools.cache
def load(verbose: bool = False) -> None:
    """Compile (or load the cached build of) the extension; its op is torch.ops.cuda_matmul.gemm."""
    from torch.utils import cpp_extension

    if prepare_cuda_build() is None:
        raise RuntimeError("building cuda-matmul needs the CUDA toolkit (nvcc and headers); set CUDA_HOME")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_specific(os.environ["TORCH_CUDA_ARCH_LIST"])
    cpp_extension.load(
        name="cuda_matmul_ext",
        sources=[str(p) for p in sources()],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=NVCC_FLAGS,
        is_python_module=False,
        verbose=verbose,
    )
