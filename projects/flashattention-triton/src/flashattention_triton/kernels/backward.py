"""The backward kernels, in FlashAttention-2's scheme. With S = scale * Q K^T, P = softmax(S) recomputed
from the saved log-sum-exp (P = exp(S - LSE)), and dO given:

    dV = P^T dO        dP = dO V^T        dS = P * (dP - delta),  delta_i = sum_j P_ij dP_ij = dO_i . O_i
    dQ = scale * dS K  dK = scale * dS^T Q

Three launches: `_delta_kernel` computes delta = rowsum(dO * O); `_dkdv_kernel` owns a tile of keys and
streams every query row that sees them (summing over the query heads of a GQA group, so no atomics);
`_dq_kernel` owns a tile of query rows and streams the keys they see. S and P are recomputed in both,
the price of never storing them and of writing every gradient exactly once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flashattention_triton.kernels.configs import (
    backward_dkdv_configs,
    backward_dq_configs,
    prune_backward_dkdv,
    prune_backward_dq,
)
from flashattention_triton.kernels.forward import LOG2E, bucket

KEY = ["T_Q_BUCKET", "T_K_BUCKET", "HEAD_DIM", "CAUSAL"]


@triton.jit
def _delta_kernel(Out, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt, H, T_Q,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < T_Q
    o = tl.load(Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=rows, other=0.0)  # fmt: skip
    do = tl.load(DO + b.to(tl.int64) * stride_db + h * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :],
                 mask=rows, other=0.0)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * T_Q + offs_m, delta, mask=offs_m < T_Q)


# excerpt: dkdv
@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_m, offs_n, start, end, T_Q, diag,
    stride_qt, stride_dot, qk_scale,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key tile over query tiles [start, end), all in transposed (key-major) form."""
    for start_m in range(start, end, BLOCK_M):
        rows = start_m + offs_m
        if MASKED:
            qt = tl.load(q_ptrs + start_m * stride_qt, mask=rows[None, :] < T_Q, other=0.0)  # (D, BLOCK_M)
            do = tl.load(do_ptrs + start_m * stride_dot, mask=rows[:, None] < T_Q, other=0.0)
            lse = tl.load(lse_ptr + rows, mask=rows < T_Q, other=float("inf"))
            delta = tl.load(delta_ptr + rows, mask=rows < T_Q, other=0.0)
        else:
            qt = tl.load(q_ptrs + start_m * stride_qt)
            do = tl.load(do_ptrs + start_m * stride_dot)
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        pt = tl.math.exp2(tl.dot(k, qt) * qk_scale - lse[None, :] * 1.4426950408889634)  # P^T: (BLOCK_N, BLOCK_M)
        if MASKED and CAUSAL:
            pt = tl.where(offs_n[:, None] <= rows[None, :] + diag, pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv)
        dpt = tl.dot(v, tl.trans(do))  # dP^T = V dO^T
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
    return dk, dv


# end-excerpt


@triton.autotune(configs=backward_dkdv_configs(), key=KEY, prune_configs_by={"early_config_prune": prune_backward_dkdv})
@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, H_KV, GROUP, T_Q, T_K, T_Q_BUCKET, T_K_BUCKET, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, hk = pid_bh // H_KV, pid_bh % H_KV
    diag = T_K - T_Q
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    keys = offs_n[:, None] < T_K
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=keys, other=0.0)  # fmt: skip
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=keys, other=0.0)  # fmt: skip
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # query tiles that see part of this key tile (the causal band, masked), then all of it; a ragged last
    # query tile is bounds-checked. Keys past T_K only touch their own (discarded) rows of dK and dV.
    full_q_end = T_Q // BLOCK_M * BLOCK_M
    if CAUSAL:
        first = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
        band_end = tl.maximum(tl.cdiv(n0 + BLOCK_N - 1 - diag, BLOCK_M) * BLOCK_M, first)
    else:
        first = 0
        band_end = 0
    for g in range(0, GROUP):  # every query head of the group reads this K/V head
        h = hk * GROUP + g
        q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[None, :] * stride_qt + offs_d[:, None]
        do_ptrs = DO + b.to(tl.int64) * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :]
        lse_ptr = LSE + (b * H + h).to(tl.int64) * T_Q
        delta_ptr = DELTA + (b * H + h).to(tl.int64) * T_Q
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_m, offs_n, first,
                             tl.minimum(band_end, T_Q), T_Q, diag, stride_qt, stride_dot, qk_scale, BLOCK_M, True,
                             CAUSAL)  # fmt: skip
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_m, offs_n, band_end,
                             full_q_end, T_Q, diag, stride_qt, stride_dot, qk_scale, BLOCK_M, False,
                             CAUSAL)  # fmt: skip
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_m, offs_n,
                             tl.maximum(band_end, full_q_end), T_Q, T_Q, diag, stride_qt, stride_dot, qk_scale,
                             BLOCK_M, True, False)  # fmt: skip

    dk_ptrs = DK + b.to(tl.int64) * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + b.to(tl.int64) * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=keys)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=keys)


@triton.jit
def _dq_tiles(
    dq, q, do, lse2, delta, k_ptrs, v_ptrs, offs_m, offs_n, start, end, T_K, diag, stride_kt, stride_vt, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query tile over key tiles [start, end)."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            kt = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < T_K, other=0.0)  # (D, BLOCK_N)
            vt = tl.load(v_ptrs + start_n * stride_vt, mask=cols[None, :] < T_K, other=0.0)
        else:
            kt = tl.load(k_ptrs + start_n * stride_kt)
            vt = tl.load(v_ptrs + start_n * stride_vt)
        p = tl.math.exp2(tl.dot(q, kt) * qk_scale - lse2[:, None])
        if MASKED:
            keep = cols[None, :] < T_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        ds = p * (tl.dot(do, vt) - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    return dq


@triton.autotune(configs=backward_dq_configs(), key=KEY, prune_configs_by={"early_config_prune": prune_backward_dq})
@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt,
    H, GROUP, T_Q, T_K, T_Q_BUCKET, T_K_BUCKET, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(T_Q, BLOCK_M)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = n_m - 1 - pid_m
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP
    diag = T_K - T_Q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m < T_Q
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=rows[:, None], other=0.0)  # fmt: skip
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=rows[:, None], other=0.0)  # fmt: skip
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * T_Q + offs_m, mask=rows, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * T_Q + offs_m, mask=rows, other=0.0)
    k_ptrs = K + b.to(tl.int64) * stride_kb + hk * stride_kh + offs_n[None, :] * stride_kt + offs_d[:, None]
    v_ptrs = V + b.to(tl.int64) * stride_vb + hk * stride_vh + offs_n[None, :] * stride_vt + offs_d[:, None]
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    m0 = pid_m * BLOCK_M
    if CAUSAL:
        full_end = tl.maximum(tl.minimum(T_K, m0 + diag + 1), 0) // BLOCK_N * BLOCK_N
        end = tl.maximum(tl.minimum(T_K, m0 + BLOCK_M + diag), 0)
    else:
        full_end = T_K // BLOCK_N * BLOCK_N
        end = T_K
    dq = _dq_tiles(dq, q, do, lse2, delta, k_ptrs, v_ptrs, offs_m, offs_n, 0, full_end, T_K, diag, stride_kt,
                   stride_vt, qk_scale, BLOCK_N, False, CAUSAL)  # fmt: skip
    dq = _dq_tiles(dq, q, do, lse2, delta, k_ptrs, v_ptrs, offs_m, offs_n, full_end, end, T_K, diag, stride_kt,
                   stride_vt, qk_scale, BLOCK_N, True, CAUSAL)  # fmt: skip
    dq_ptrs = DQ + b.to(tl.int64) * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None])


def launch_backward(do, q, k, v, o, lse, delta, dq, dk, dv, causal: bool, scale: float) -> dict:
    """Run the three backward kernels into delta, dq, dk, dv; returns Triton's compiled kernels by name."""
    B, H, T_q, D = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]
    block = 16 if D >= 256 else 64
    kernels = {}
    kernels["delta"] = _delta_kernel[(triton.cdiv(T_q, block), B * H)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), H, T_q,
        HEAD_DIM=D, BLOCK_M=block,
    )  # fmt: skip
    common = dict(HEAD_DIM=D, CAUSAL=causal)
    kernels["dkdv"] = _dkdv_kernel[lambda meta: (triton.cdiv(T_k, meta["BLOCK_N"]), B * H_kv)](
        q, k, v, do, lse, delta, dk, dv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), do.stride(0), do.stride(1), do.stride(2), dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, H_kv, H // H_kv, T_q, T_k, bucket(T_q), bucket(T_k), scale * LOG2E, scale, **common,
    )  # fmt: skip
    kernels["dq"] = _dq_kernel[lambda meta: (triton.cdiv(T_q, meta["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), do.stride(0), do.stride(1), do.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
        H, H // H_kv, T_q, T_k, bucket(T_q), bucket(T_k), scale * LOG2E, scale, **common,
    )  # fmt: skip
    return kernels


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV in the inputs' shapes and dtype. lse must be contiguous (B, H, T_q) as the forward wrote it."""
    B, H, T_q, D = q.shape
    dq = torch.empty((B, H, T_q, D), dtype=q.dtype, device=q.device)
    dk, dv = torch.empty(k.shape, dtype=k.dtype, device=k.device), torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty((B, H, T_q), dtype=torch.float32, device=q.device)
    launch_backward(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale)
    return dq, dk, dv
