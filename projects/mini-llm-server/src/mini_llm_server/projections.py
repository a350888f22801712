"""Which kernel runs each of a layer's projections (x @ W.T for an nn.Linear weight W (N, K)), by the step's rows:
- up to 64 rows: the split-K GEMV (gemv.py), all four projections;
- 65 to 128 rows, on a GPU with TMA (compute capability 9.0, Hopper): gate/up with its SwiGLU epilogue, and
  down (K at least tma_gemm.MIN_SPLIT_K) as split-K partials, through tma_gemm.py; Q/K/V and O through cuBLAS;
- more rows, fp32 activations, or no Triton: F.linear (cuBLAS), then fused_ops.silu_mul after gate/up.
The probes and records behind each line are in gemv.py's and tma_gemm.py's docstrings. A projection's output is
either finished (M, N) or fp32 split-K partials (S, M, N), which the fused_ops kernel reading it sums.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mini_llm_server import gemv, tma_gemm
from mini_llm_server.fused_ops import silu_mul


def kernel_for(rows: int, K: int, swiglu: bool, tma: bool) -> str:
    """Which kernel, "gemv", "tma" or "cublas", runs a projection of `rows` half-precision rows with Triton on;
    `tma`: whether the GPU and the tensors' alignment allow TMA descriptors; `swiglu`: the gate/up projection."""
    if rows <= gemv.MAX_ROWS:
        return "gemv"
    if tma and rows <= tma_gemm.MAX_ROWS and (swiglu or K >= tma_gemm.MIN_SPLIT_K):
        return "tma"
    return "cublas"


@functools.cache
def _has_tma(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _kernel(x: torch.Tensor, weight: torch.Tensor, use_triton: bool, swiglu: bool) -> str:
    if not (use_triton and x.dtype in (torch.float16, torch.bfloat16) and x.stride(1) == 1):
        return "cublas"
    tma = x.shape[0] > gemv.MAX_ROWS and _has_tma(x.device) and tma_gemm.aligned(x, weight)
    return kernel_for(x.shape[0], x.shape[1], swiglu, tma)


def project(x: torch.Tensor, weight: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """x @ weight.T: split-K partials (S, M, N) where the GEMV or the TMA GEMM runs it, for a fused_ops consumer
    to sum; F.linear's finished (M, N) otherwise."""
    kernel = _kernel(x, weight, use_triton, swiglu=False)
    if kernel == "gemv":
        return gemv.gemv_partials(x, weight)
    return tma_gemm.tma_partials(x, weight) if kernel == "tma" else F.linear(x, weight)


def project_swiglu(x: torch.Tensor, gate_up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """The MLP's activation silu(x @ gate.T) * (x @ up.T) from the interleaved gate/up weight: one kernel with
    the SwiGLU epilogue where the TMA GEMM runs, or the GEMV runs and needs no split; else the projection, then
    fused_ops.silu_mul."""
    (N, K), M = gate_up.shape, x.shape[0]
    kernel = _kernel(x, gate_up, use_triton, swiglu=True)
    if kernel == "tma":
        return tma_gemm.tma_swiglu(x, gate_up)
    if kernel == "gemv" and gemv.num_splits(N, K, x.device, M) == 1 and N % gemv.tile_for(M).swiglu_block_n == 0:
        return gemv.gemv_swiglu(x, gate_up)
    return silu_mul(project(x, gate_up, use_triton), use_triton, x.dtype)
