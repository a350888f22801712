"""Split-K matrix-vector products for small decode batches (Triton): x @ W.T for at most MAX_ROWS rows of x
against an nn.Linear weight W (N, K), returned as SPLITS partial sums (SPLITS, M, N) in fp32 that the next
fused kernel adds up (fused_ops.py: the consumers take either a finished activation or partials). The rows
are one tensor-core tile of 16, 32 or 64 (the smallest that holds them), so the weight is read once.

At batch 1 a decode step's time is reading the weights once. A TinyLlama layer's O and down projections have
only 64 blocks of 32 columns, fewer programs than the H100 has SMs, and each program streams its rows of
W serially: cuBLAS and a plain Triton GEMV both run them at about half of the copy bandwidth. Splitting K
gives every SM programs to stream, and summing the partials in the consumer, which reads its input anyway,
costs no extra kernel (a separate reduction kernel would cost more than the split saves: each kernel
boundary in the step's CUDA graph costs about as much as the time gained).

The gate/up projection needs no split (its 2 x 5632 columns are 352 programs of 32, 88 of 128), so it finishes the
MLP's activation itself: the runner's fused gate/up weight interleaves the two (gate j in row 2j, up j in
row 2j + 1), each program's block of columns holds whole (gate, up) pairs, and the epilogue writes
silu(gate) * up, rounded as fused_ops.silu_mul rounds it. That is one kernel fewer per layer.

Up to 64 rows the weight's bytes still set the floor, not the FLOPs (each bf16 weight is used in at most 64
multiply-adds: 64 FLOPs per byte, where the H200 needs about 200 to be compute-bound), and cuBLAS's launches
are about as under-filled as at one row. On the H200 (profiler probes, stop 21) the decode forward spent 753
us in these kernels at 32 rows against 854 in cuBLAS's and its SwiGLU, and 758 against 922 at 64 rows; in
step-bench the 32-sequence decode step's graph went from 1.18 to 1.05 ms and a 64-token mixed step's from
1.52 to 1.35 ms. At 128 rows cuBLAS was faster (43.2 against 47.4 us a layer for the best tile found), so
larger batches go to tma_gemm.py or F.linear (projections.py picks).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mini_llm_server.fused_ops import store_projection

BLOCK_K = 128
PROGRAMS_PER_SM = 2  # 16- and 32-row tiles: split K until the launch has about this many programs per SM
MAX_SPLITS = 8


class Tile(NamedTuple):
    rows: int  # BLOCK_M: the rows of x one program holds
    block_n: int  # weight rows (output columns) per program of a plain projection
    swiglu_block_n: int  # ... of the gate/up projection with the SwiGLU epilogue


# the smallest that holds x's rows. On the H200 at 64 rows (a probe, stop 21), 64 columns per program (128 for
# gate/up) beat 32 (gate/up: 14.9 against 19.4 us), and at most one program per SM beat two (Q/K/V with 64
# columns: 7.0 us at 2 splits, over 8.5 at 4, the consumer's read of the partials included)
TILES = (Tile(16, 32, 32), Tile(32, 32, 32), Tile(64, 64, 128))
MAX_ROWS = TILES[-1].rows


@triton.jit
def _gemv_partials_kernel(X, W, P, M, N, K, K_PER, stride_xm, stride_wn, stride_ps, stride_pm,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SWIGLU: tl.constexpr):  # fmt: skip
    pid_n, split = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    k_lo = split * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        w = tl.load(W + rn[:, None] * stride_wn + k[None, :], mask=(rn[:, None] < N) & (k[None, :] < k_hi), other=0.0)
        x = tl.load(X + rm[:, None] * stride_xm + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < k_hi), other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    store_projection(P, acc, rm, pid_n, split, M, N, stride_ps, stride_pm, BLOCK_M, BLOCK_N, SWIGLU)


def tile_for(M: int) -> Tile:
    return next(t for t in TILES if t.rows >= M)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def num_splits(N: int, K: int, device: torch.device, M: int = 1) -> int:
    """The power of two (at most MAX_SPLITS) that brings a launch over M rows near PROGRAMS_PER_SM programs per
    SM (16- and 32-row tiles) or within one per SM (64-row tiles, each holding four times the accumulator),
    keeping at least one BLOCK_K tile per split."""
    tile, sms = tile_for(M), _num_sms(device)
    blocks = triton.cdiv(N, tile.block_n)
    want = -(-PROGRAMS_PER_SM * sms // blocks) if tile.rows < 64 else sms // blocks
    splits = 1
    while splits * 2 <= min(want, MAX_SPLITS) and splits * 2 * BLOCK_K <= K:
        splits *= 2
    return splits


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    M, K = x.shape
    if M > MAX_ROWS or weight.shape[1] != K or x.stride(1) != 1 or weight.stride(1) != 1 or x.dtype != weight.dtype:
        raise ValueError(f"gemv takes up to {MAX_ROWS} rows of x (M, K) and a weight (N, K) of its dtype, both "
                         f"contiguous in K; got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
                         f"{weight.dtype}")  # fmt: skip


def gemv_partials(x: torch.Tensor, weight: torch.Tensor, splits: int | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K).T as `splits` fp32 partial sums (splits, M, N); M <= MAX_ROWS."""
    _check(x, weight)
    (M, K), N, tile = x.shape, weight.shape[0], tile_for(x.shape[0])
    splits = splits or num_splits(N, K, x.device, M)
    k_per = triton.cdiv(triton.cdiv(K, splits), BLOCK_K) * BLOCK_K  # whole tiles per split
    splits = triton.cdiv(K, k_per)
    partials = torch.empty(splits, M, N, device=x.device, dtype=torch.float32)
    _gemv_partials_kernel[(triton.cdiv(N, tile.block_n), splits)](
        x, weight, partials, M, N, K, k_per, x.stride(0), weight.stride(0), partials.stride(0), partials.stride(1),
        BLOCK_M=tile.rows, BLOCK_N=tile.block_n, BLOCK_K=BLOCK_K, SWIGLU=False, num_warps=4, num_stages=4)  # fmt: skip
    return partials


def gemv_swiglu(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T) (M, F) in x's dtype, for gate_up (2F, K) holding gate and up interleaved
    by rows; M <= MAX_ROWS."""
    _check(x, gate_up)
    (M, K), N, tile = x.shape, gate_up.shape[0], tile_for(x.shape[0])
    if N % 2:
        raise ValueError(f"gemv_swiglu: gate_up holds (gate, up) row pairs, got an odd {N} rows")
    act = torch.empty(M, N // 2, device=x.device, dtype=x.dtype)
    _gemv_partials_kernel[(triton.cdiv(N, tile.swiglu_block_n), 1)](
        x, gate_up, act, M, N, K, K, x.stride(0), gate_up.stride(0), 0, act.stride(0),
        BLOCK_M=tile.rows, BLOCK_N=tile.swiglu_block_n, BLOCK_K=BLOCK_K, SWIGLU=True, num_warps=4,
        num_stages=4)  # fmt: skip
    return act
