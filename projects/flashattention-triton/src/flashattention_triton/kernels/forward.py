"""The forward kernel: one program owns BLOCK_M query rows of one head and streams the K/V tiles of its
KV head through SRAM, keeping a running max and sum (online softmax) so the T_q x T_k score matrix is
never written anywhere. Writes Out and the per-row log-sum-exp the backward needs.

Causal masking is bottom-right aligned (query i sees keys j <= i + T_k - T_q, as FlashAttention 2.1+ and
a KV cache need); it equals SDPA's is_causal when T_q == T_k. A row that sees no key (only possible when
T_q > T_k) gets Out = 0 and LSE = +inf, so the backward's exp(s - LSE) is 0 there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flashattention_triton.kernels.configs import forward_configs, prune_forward

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2 e): the kernels work in base 2, which the hardware has


# excerpt: online-softmax
@triton.jit
def _attend_tiles(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, offs_n, start, end, T_K, diag, stride_kt, stride_vt, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """Fold key tiles [start, end) into the running (acc, l_i, m_i). m_i is in log2 units of scaled scores."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:  # the diagonal band and the ragged last tile: bounds-checked loads and a score mask
            kt = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < T_K, other=0.0)
            s = tl.dot(q, kt)
            keep = cols[None, :] < T_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet stays at 0
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        else:  # every tile left of the diagonal band: no masks at all
            kt = tl.load(k_ptrs + start_n * stride_kt)
            s = tl.dot(q, kt)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < T_K, other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vt)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


# end-excerpt


@triton.autotune(configs=forward_configs(), key=["T_Q_BUCKET", "T_K_BUCKET", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": prune_forward})  # fmt: skip
@triton.jit
def _forward_kernel(
    Q, K, V, Out, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot, stride_lb, stride_lh,
    H, GROUP, T_Q, T_K, T_Q_BUCKET, T_K_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(T_Q, BLOCK_M)
    pid_m = tl.program_id(0)
    if CAUSAL:  # the bottom query tiles see the most keys: start them first so the tail of the grid is short
        pid_m = n_m - 1 - pid_m
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP  # grouped-query attention: GROUP consecutive query heads share one K/V head
    diag = T_K - T_Q

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = K + b.to(tl.int64) * stride_kb + hk * stride_kh + offs_n[None, :] * stride_kt + offs_d[:, None]
    v_ptrs = V + b.to(tl.int64) * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]

    q = tl.load(q_ptrs, mask=offs_m[:, None] < T_Q, other=0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    # key tiles every row of this query tile sees in full, then the band that needs masks
    m0 = pid_m * BLOCK_M
    if CAUSAL:
        full_end = tl.maximum(tl.minimum(T_K, m0 + diag + 1), 0) // BLOCK_N * BLOCK_N
        end = tl.maximum(tl.minimum(T_K, m0 + BLOCK_M + diag), 0)
    else:
        full_end = T_K // BLOCK_N * BLOCK_N
        end = T_K
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, offs_n, 0, full_end, T_K, diag,
                                  stride_kt, stride_vt, qk_scale, BLOCK_N, False, CAUSAL)  # fmt: skip
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, offs_n, full_end, end, T_K, diag,
                                  stride_kt, stride_vt, qk_scale, BLOCK_N, True, CAUSAL)  # fmt: skip

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("inf"))  # natural log, as SDPA
    o_ptrs = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < T_Q)
    tl.store(LSE + b.to(tl.int64) * stride_lb + h * stride_lh + offs_m, lse, mask=offs_m < T_Q)


def bucket(n: int) -> int:
    """The autotuner's key for a length: its power-of-two ceiling, so decode steps do not retune per token."""
    return triton.next_power_of_2(max(n, 1))


def launch_forward(q, k, v, o: torch.Tensor, lse: torch.Tensor, causal: bool, scale: float):
    """Run the autotuned forward into o and lse; returns Triton's compiled kernel (None in the interpreter)."""
    B, H, T_q, D = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]

    def grid(meta):
        return (triton.cdiv(T_q, meta["BLOCK_M"]), B * H)

    return _forward_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        H, H // H_kv, T_q, T_k, bucket(T_q), bucket(T_k), scale * LOG2E,
        HEAD_DIM=D, CAUSAL=causal,
    )  # fmt: skip


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Out (B, H, T_q, D) in q's dtype and LSE (B, H, T_q) fp32, natural log. Inputs already validated."""
    B, H, T_q, D = q.shape
    o = torch.empty((B, H, T_q, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, T_q), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse.fill_(float("inf"))
    launch_forward(q, k, v, o, lse, causal, scale)
    return o, lse
