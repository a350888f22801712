"""Building the extension: a cached JIT build (torch.utils.cpp_extension.load) of the C++ CPU kernels,
plus the CUDA kernels when a CUDA toolkit is installed (found by mlsys_bench.toolchain). Without one,
the CPU-only build still gives the full op, autograd and compile support on the CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mlsys_bench.toolchain import prepare_cuda_build

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@functools.cache
def load(verbose: bool = False) -> bool:
    """Build or load the extension; returns whether the CUDA kernels are in it."""
    from torch.utils import cpp_extension

    with_cuda = prepare_cuda_build() is not None
    sources = [CSRC / "binding.cpp", CSRC / "gelu_cpu.cpp"] + ([CSRC / "gelu_cuda.cu"] if with_cuda else [])
    flags = ["-O3"] + (["-DWITH_CUDA"] if with_cuda else [])
    cpp_extension.load(
        name="custom_gelu_ext" + ("" if with_cuda else "_cpu"),
        sources=[str(p) for p in sources],
        extra_include_paths=[str(CSRC)],
        extra_cflags=flags,
        extra_cuda_cflags=flags,
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return with_cuda
