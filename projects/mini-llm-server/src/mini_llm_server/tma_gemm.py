"""A Triton GEMM that loads its tiles through TMA descriptors (Hopper's tensor memory accelerator), for steps of
65 to MAX_ROWS rows, past where the split-K GEMV stops (gemv.py). It runs the two projections where it beat
cuBLAS: gate/up with the SwiGLU epilogue (the runner's interleaved weight, as gemv.py's), and down as split-K
partials that the next fused kernel sums (fused_ops.load_projection). projections.py picks which runs.

Probe on the H200 (stop 22; CUDA graphs over 22 weight copies, one per layer; us per projection at 128 rows):
- gate/up with the SwiGLU epilogue: 16.9 against 19.1 for cuBLAS then fused_ops.silu_mul. The same 64 x 64
  tiles loaded through pointers took 18.8 without the epilogue (stop 21). Likely why, not profiled: the TMA unit
  computes the addresses and zero-fills the edges itself, where pointer loads spend the warps' registers on them.
- down (K 5632): 10.6 in 4 splits, 11.9 with the consumer's read of the fp32 partials charged at 3 TB/s,
  against 13.4. Its output has 32 tiles of 64 x 128, a quarter of the SMs, and K is long enough that each of
  4 splits keeps 11 tiles of 128 in flight.
- Q/K/V and O stay with cuBLAS (7.1 against 8.2, 6.9 against 7.2 us, each at its best split): with K 2048
  there is too little per program to split over.
- At 256 rows the gain was too small for a tile of its own: gate/up 22.6 against 23.8 (1.5% of that step),
  down 14.7 against 13.2.
In step-bench the step of 31 decodes and a 64-token prompt (128 padded rows) went from 1.64 to 1.55 ms of graph
time (records at 100a8de and d97b9ec). At 128 rows the floor is still the weight's bytes at 4.8 TB/s: gate/up's
46 MB take 9.6 us, down's 23 MB 4.8, so these run at 1.8x and 2.5x it. The launches are small (gate/up 352
programs, down 128 over 132 SMs), so a persistent or stream-K schedule is the next thing to try; it has not been
measured.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from mini_llm_server.fused_ops import store_projection

BLOCK_M = 64  # the probe's best row tile at 128 rows, for both projections
MAX_ROWS = 128
MIN_SPLIT_K = 4096  # split-K partials only for projections this long in K (down), see above


class Launch(NamedTuple):
    block_n: int
    block_k: int
    splits: int
    stages: int


SWIGLU_LAUNCH = Launch(block_n=64, block_k=64, splits=1, stages=4)
PARTIALS_LAUNCH = Launch(block_n=128, block_k=128, splits=4, stages=4)


@triton.jit
def _tma_gemm_kernel(x_desc, w_desc, P, M, N, K, K_PER, stride_ps, stride_pm,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SWIGLU: tl.constexpr):  # fmt: skip
    # axis 0 (fastest) walks the row tiles: the programs that read one block of weight rows run together
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
    k_lo = split * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):  # past K (and past M, N) the descriptors read zeros
        acc = tl.dot(x_desc.load([off_m, k]), w_desc.load([off_n, k]).T, acc)
    rm = off_m + tl.arange(0, BLOCK_M)
    store_projection(P, acc, rm, pid_n, split, M, N, stride_ps, stride_pm, BLOCK_M, BLOCK_N, SWIGLU)


def aligned(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What a TMA descriptor needs of a tensor: the last dim contiguous, the base and the row stride 16-byte
    aligned."""
    return all(t.stride(1) == 1 and t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0
               for t in (x, weight))  # fmt: skip


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    M, K = x.shape
    if M > MAX_ROWS or weight.shape[1] != K or x.dtype != weight.dtype or not aligned(x, weight):
        raise ValueError(f"tma_gemm takes up to {MAX_ROWS} rows of x (M, K) and a weight (N, K) of its dtype, "
                         f"both contiguous in K with 16-byte aligned rows; got x {tuple(x.shape)} stride "
                         f"{x.stride()} {x.dtype}, weight {tuple(weight.shape)} stride {weight.stride()} "
                         f"{weight.dtype}")  # fmt: skip


def _k_per_split(K: int, launch: Launch) -> int:
    return triton.cdiv(triton.cdiv(K, launch.splits), launch.block_k) * launch.block_k  # whole tiles per split


def _launch(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, launch: Launch, swiglu: bool) -> None:
    (M, K), N = x.shape, weight.shape[0]
    k_per = _k_per_split(K, launch)
    x_desc = TensorDescriptor.from_tensor(x, [BLOCK_M, launch.block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [launch.block_n, launch.block_k])
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, launch.block_n), triton.cdiv(K, k_per))
    _tma_gemm_kernel[grid](x_desc, w_desc, out, M, N, K, k_per, out.stride(0) if out.dim() == 3 else 0,
                           out.stride(-2), BLOCK_M=BLOCK_M, BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
                           SWIGLU=swiglu, num_warps=4, num_stages=launch.stages)  # fmt: skip


def tma_partials(x: torch.Tensor, weight: torch.Tensor, splits: int = PARTIALS_LAUNCH.splits) -> torch.Tensor:
    """x (M, K) @ weight (N, K).T as fp32 partial sums (S, M, N), S = `splits` or fewer where K holds fewer
    whole tiles; M <= MAX_ROWS."""
    _check(x, weight)
    launch = PARTIALS_LAUNCH._replace(splits=splits)
    (M, K), N = x.shape, weight.shape[0]
    partials = torch.empty(triton.cdiv(K, _k_per_split(K, launch)), M, N, device=x.device, dtype=torch.float32)
    _launch(x, weight, partials, launch, swiglu=False)
    return partials


def tma_swiglu(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T) (M, F) in x's dtype, for gate_up (2F, K) holding gate and up interleaved
    by rows; M <= MAX_ROWS."""
    _check(x, gate_up)
    if gate_up.shape[0] % 2:
        raise ValueError(f"tma_swiglu: gate_up holds (gate, up) row pairs, got an odd {gate_up.shape[0]} rows")
    act = torch.empty(x.shape[0], gate_up.shape[0] // 2, device=x.device, dtype=x.dtype)
    _launch(x, gate_up, act, SWIGLU_LAUNCH, swiglu=True)
    return act
