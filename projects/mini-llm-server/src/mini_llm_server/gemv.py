"""Split-K matrix-vector products for small decode batches (Triton): x @ W.T for at most MAX_ROWS rows of x
against an nn.Linear weight W (N, K), returned as SPLITS partial sums (SPLITS, M, N) in fp32 that the next
fused kernel adds up (fused_ops.py: the consumers take either a finished activation or partials). The rows
are one tensor-core tile of 16 or 32 (the smaller that holds them), so the weight is read once.

At batch 1 a decode step's time is reading the weights once. A TinyLlama layer's O and down projections have
only N / BLOCK_N = 64 column blocks, fewer programs than the H100 has SMs, and each program streams its rows of
W serially: cuBLAS and a plain Triton GEMV both run them at about half of the copy bandwidth. Splitting K
gives every SM programs to stream, and summing the partials in the consumer, which reads its input anyway,
costs no extra kernel (a separate reduction kernel would cost more than the split saves: each kernel
boundary in the step's CUDA graph costs about as much as the time gained).

The gate/up projection needs no split (its 2 x 5632 columns are 352 programs), so its kernel finishes the
MLP's activation itself: the runner's fused gate/up weight interleaves the two (gate j in row 2j, up j in
row 2j + 1), each program's block of columns holds whole (gate, up) pairs, and the epilogue writes
silu(gate) * up, rounded as fused_ops.silu_mul rounds it. That is one kernel fewer per layer.

At 32 rows the weight's bytes still set the floor, not the FLOPs (each bf16 weight is used in 32
multiply-adds: 32 FLOPs per byte, where the H200 needs about 200 to be compute-bound), and cuBLAS's
launches are as under-filled as at one row: on the H200 the decode step of 32 streams spent 750 us in these
kernels against 854 in cuBLAS's and its SwiGLU (a profiler probe, stop 21), and its graph's replay went from
1.18 to 1.05 ms (step-bench). At 64 rows this kernel only matched cuBLAS (909 against 918 us), so batches of
more than 32 rows stay with F.linear.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mini_llm_server.fused_ops import silu_mul, swiglu

MAX_ROWS = 32  # rows of x the kernel takes: one tensor-core tile of 16 or 32 rows
BLOCK_N, BLOCK_K = 32, 128
PROGRAMS_PER_SM = 2  # split K until the launch has about this many programs per SM
MAX_SPLITS = 8


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
    if SWIGLU:  # one split; P is the (M, N / 2) activation in X's dtype
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        act = swiglu(gate, up, P.dtype.element_ty)
        rf = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(P + rm[:, None] * stride_pm + rf[None, :], act, mask=(rm[:, None] < M) & (rf[None, :] < N // 2))
    else:
        tl.store(P + split * stride_ps + rm[:, None] * stride_pm + rn[None, :], acc,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))  # fmt: skip


def _block_m(M: int) -> int:
    """The tile's rows: 16, or 32 for more."""
    return max(16, triton.next_power_of_2(M))


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def num_splits(N: int, K: int, device: torch.device) -> int:
    """The power of two (at most MAX_SPLITS) that brings the launch near PROGRAMS_PER_SM programs per SM,
    keeping at least one BLOCK_K tile per split."""
    want = -(-PROGRAMS_PER_SM * _num_sms(device) // triton.cdiv(N, BLOCK_N))
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
    (M, K), N = x.shape, weight.shape[0]
    splits = splits or num_splits(N, K, x.device)
    k_per = triton.cdiv(triton.cdiv(K, splits), BLOCK_K) * BLOCK_K  # whole tiles per split
    splits = triton.cdiv(K, k_per)
    partials = torch.empty(splits, M, N, device=x.device, dtype=torch.float32)
    _gemv_partials_kernel[(triton.cdiv(N, BLOCK_N), splits)](
        x, weight, partials, M, N, K, k_per, x.stride(0), weight.stride(0), partials.stride(0), partials.stride(1),
        BLOCK_M=_block_m(M), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, SWIGLU=False, num_warps=4, num_stages=4)  # fmt: skip
    return partials


def gemv_swiglu(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T) (M, F) in x's dtype, for gate_up (2F, K) holding gate and up interleaved
    by rows; M <= MAX_ROWS."""
    _check(x, gate_up)
    (M, K), N = x.shape, gate_up.shape[0]
    act = torch.empty(M, N // 2, device=x.device, dtype=x.dtype)
    _gemv_partials_kernel[(triton.cdiv(N, BLOCK_N), 1)](
        x, gate_up, act, M, N, K, K, x.stride(0), gate_up.stride(0), 0, act.stride(0),
        BLOCK_M=_block_m(M), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, SWIGLU=True, num_warps=4, num_stages=4)  # fmt: skip
    return act


def _takes(x: torch.Tensor, use_triton: bool) -> bool:
    """Whether the GEMV kernels run this projection: a few rows of half-precision activations."""
    return use_triton and x.shape[0] <= MAX_ROWS and x.dtype in (torch.float16, torch.bfloat16) and x.stride(1) == 1


def project(x: torch.Tensor, weight: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """x @ weight.T: split-K partials (S, M, N) for a few rows of half-precision activations, for a fused_ops
    consumer to sum; F.linear's finished (M, N) otherwise."""
    return gemv_partials(x, weight) if _takes(x, use_triton) else F.linear(x, weight)


def project_swiglu(x: torch.Tensor, gate_up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """The MLP's activation silu(x @ gate.T) * (x @ up.T) from the interleaved gate/up weight: one GEMV with the
    SwiGLU epilogue where the GEMV runs and needs no split, else the projection then fused_ops.silu_mul."""
    N, K = gate_up.shape
    if _takes(x, use_triton) and num_splits(N, K, x.device) == 1 and N % BLOCK_N == 0:
        return gemv_swiglu(x, gate_up)
    return silu_mul(project(x, gate_up, use_triton), use_triton, x.dtype)
