"""Decode attention straight from the paged KV cache: a Triton kernel that follows each sequence's block
table, so the K/V of a batch of decoding sequences are never gathered into a contiguous copy.

One program per (sequence, KV head) computes the new token's attention for every query head of that KV
head's group (GQA reads each K/V block once per group, not once per query head), streaming the cache
with the online softmax, TILE positions per iteration gathered through the block table. A tile of 64
positions rather than one 16-token block per iteration keeps many loads in flight: at batch 1 there are
only as many programs as KV heads, and a loop of one dependent block load after another left the
kernel latency-bound. The query group is padded to 16 rows so both products run as tensor-core dots
(fp32 inputs in IEEE precision, not TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
TILE = 64  # cached positions per loop iteration, gathered from as many blocks as they span


@triton.jit
def _paged_decode_kernel(
    Q, K_CACHE, V_CACHE, BLOCK_TABLES, SEQ_LENS, OUT,
    stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_on, stride_oh, scale_log2,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    TILE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    n, hk = tl.program_id(0), tl.program_id(1)
    seq_len = tl.load(SEQ_LENS + n)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_t = tl.arange(0, TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = hk * GROUP + offs_g
    in_group = offs_g < GROUP
    q = tl.load(Q + n * stride_qn + heads[:, None] * stride_qh + offs_d[None, :], mask=in_group[:, None], other=0.0)
    m = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    for start in range(0, seq_len, TILE):
        pos = start + offs_t
        valid = pos < seq_len
        # TILE positions may span several cache blocks: gather each row through its block's table entry
        block = tl.load(BLOCK_TABLES + n * stride_bt + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        row = pos % BLOCK_SIZE
        k = tl.load(K_CACHE + block[:, None] * stride_kb + row[:, None] * stride_ks + hk * stride_kh + offs_d[None, :],
                    mask=valid[:, None], other=0.0)  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (GROUP_PAD, TILE), log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: the first tile always holds position 0
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        denom = denom * alpha + tl.sum(p, 1)
        v = tl.load(V_CACHE + block[:, None] * stride_vb + row[:, None] * stride_vs + hk * stride_vh + offs_d[None, :],
                    mask=valid[:, None], other=0.0)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / denom[:, None]
    tl.store(OUT + n * stride_on + heads[:, None] * stride_oh + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=in_group[:, None])  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q (N, H, D): one new token per sequence, whose K/V are already in the cache at position
    seq_lens[n] - 1. k_cache, v_cache (num_blocks, block_size, K, D); block_tables (N, max_blocks) int32;
    seq_lens (N,) int32 or int64, >= 1. Returns (N, H, D) in q's dtype."""
    N, H, D = q.shape
    _, block_size, K, Dk = k_cache.shape
    if Dk != D or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"paged attention: cache shapes {tuple(k_cache.shape)}, {tuple(v_cache.shape)} vs q {tuple(q.shape)}"
        )
    if H % K:
        raise ValueError(f"paged attention: {H} query heads are not a multiple of {K} KV heads")
    for name, size in (("head_dim", D), ("block_size", block_size)):
        if size & (size - 1):
            raise ValueError(f"paged attention: {name} {size} must be a power of two")
    if block_tables.shape[0] != N or seq_lens.shape != (N,):
        raise ValueError(
            f"paged attention: {N} queries, {block_tables.shape[0]} block tables, {seq_lens.shape[0]} lengths"
        )
    out = torch.empty_like(q)
    if N == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    group = H // K
    _paged_decode_kernel[(N, K)](
        q, k_cache, v_cache, block_tables, seq_lens, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), scale * LOG2E,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_SIZE=block_size, HEAD_DIM=D,
        TILE=TILE, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out
