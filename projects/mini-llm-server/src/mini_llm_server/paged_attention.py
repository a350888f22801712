"""Attention straight from the paged KV cache: Triton kernels that follow each sequence's block table, so
K/V are never gathered into a contiguous copy. Two of them: one for a batch of decoding sequences (one
new token each), one for a mixed step's packed tokens (prompt chunks and decode tokens together).

Decode kernel.

One program per (sequence, KV head) computes the new token's attention for every query head of that KV
head's group (GQA reads each K/V block once per group, not once per query head), streaming the cache
with the online softmax, TILE positions per iteration gathered through the block table. A tile of 64
positions rather than one 16-token block per iteration keeps many loads in flight: at batch 1 there are
only as many programs as KV heads, and a loop of one dependent block load after another left the
kernel latency-bound. The query group is padded to 16 rows so both products run as tensor-core dots
(fp32 inputs in IEEE precision, not TF32).

Varlen kernel. A step's new tokens are packed (N, H, D), sequence after sequence; each sequence's tokens
are its last q_len of ctx_len positions, and the earlier ones are already in the cache (a prompt chunk
after earlier chunks, or a decode token). The work is cut into tiles of a few consecutive new tokens of
one sequence; one program per (tile, KV head) holds every query head of the group for those tokens as
the rows of one matrix (tokens x group, 64 rows), so both products are tensor-core dots even for a single
decode token, and walks the cache up to its last token's position under the causal mask. Where the tiles
start is data (a table on the device) and the grid is a fixed upper bound on their number, programs past
the end exiting at once: the same launch serves any mix of lengths, which is what lets a mixed step be
captured in a CUDA graph (cuda_graphs.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mini_llm_server.fused_ops import load_projection, rotated, split_layout

LOG2E = 1.4426950408889634
# the varlen kernel's cached positions per loop iteration (gathered from as many blocks as they span) and
# pipeline stages: on the H200, a 256-token step (31 decodes at 100-400 positions, one 225-token prompt) took
# 14.6 us per layer at 128 and 2 against 18.1 at 64 and the compiler's default; 32-position tiles, and 2 or 8
# warps, were slower
VARLEN_TILE, VARLEN_STAGES = 128, 2
# the decode kernel's: at batch 1 it has only as many programs as KV heads, so fewer, longer iterations
# (on the H100, 4 KV heads at 272 positions: 5.8 us against 6.5 with 64-position tiles)
DECODE_TILE, DECODE_STAGES = 128, 2
VARLEN_ROWS = 64  # rows (new tokens x query heads of a group) per program of the varlen kernel


@triton.jit
def _attend_paged(
    q, q_pos, end, TABLE, K, V, stride_kb, stride_ks, stride_vb, stride_vs, scale_log2,
    ROWS: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Attention of q's rows (ROWS, HEAD_DIM) over one sequence's cached positions 0 .. end - 1 of one KV
    head, row i seeing positions up to q_pos[i], streamed TILE positions at a time with the online softmax
    (base 2). TABLE points at the sequence's block table, K and V at the KV head in the caches. Returns the
    unnormalised state: (acc (ROWS, HEAD_DIM), running max (ROWS,), denominator (ROWS,))."""
    offs_t = tl.arange(0, TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
    for start in range(0, end, TILE):
        pos = start + offs_t
        valid = pos < end
        # TILE positions may span several cache blocks: gather each row through its block's table entry
        block = tl.load(TABLE + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        row = pos % BLOCK_SIZE
        k = tl.load(K + block[:, None] * stride_kb + row[:, None] * stride_ks + offs_d[None, :], mask=valid[:, None],
                    other=0.0)  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (ROWS, TILE), log2 units
        # every row's q_pos >= 0 = the first tile's first position, so each row's max is finite from tile one
        s = tl.where(valid[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        denom = denom * alpha + tl.sum(p, 1)
        v = tl.load(V + block[:, None] * stride_vb + row[:, None] * stride_vs + offs_d[None, :], mask=valid[:, None],
                    other=0.0)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    return acc, m, denom


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
    offs_d = tl.arange(0, HEAD_DIM)
    heads = hk * GROUP + offs_g
    in_group = offs_g < GROUP
    q = tl.load(Q + n * stride_qn + heads[:, None] * stride_qh + offs_d[None, :], mask=in_group[:, None], other=0.0)
    q_pos = tl.full([GROUP_PAD], 0, dtype=tl.int32) + seq_len - 1  # the new token sees every cached position
    acc, _, denom = _attend_paged(q, q_pos, seq_len, BLOCK_TABLES + n * stride_bt, K_CACHE + hk * stride_kh,
                                  V_CACHE + hk * stride_vh, stride_kb, stride_ks, stride_vb, stride_vs, scale_log2,
                                  GROUP_PAD, BLOCK_SIZE, HEAD_DIM, TILE, PRECISION)  # fmt: skip
    tl.store(OUT + n * stride_on + heads[:, None] * stride_oh + offs_d[None, :],
             (acc / denom[:, None]).to(OUT.dtype.element_ty), mask=in_group[:, None])  # fmt: skip


def _check_shapes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(N, H, D, K, block_size) of a query batch and its cache, or a ValueError naming the mismatch."""
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
    return N, H, D, K, block_size


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
    N, H, D, K, block_size = _check_shapes(q, k_cache, v_cache)
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
        TILE=DECODE_TILE, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_stages=DECODE_STAGES,
    )  # fmt: skip
    return out


@triton.jit
def _paged_decode_rope_kernel(
    QKV, COS, SIN, POSITIONS, SLOTS, K_CACHE, V_CACHE, BLOCK_TABLES, SEQ_LENS, OUT,
    stride_qkvs, stride_qkvn, stride_cs, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_on, stride_oh, scale_log2, H, KV,
    QKV_SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    n, hk = tl.program_id(0), tl.program_id(1)
    dt = OUT.dtype.element_ty
    seq_len = tl.load(SEQ_LENS + n)
    pos = tl.load(POSITIONS + n).to(tl.int64)
    slot = tl.load(SLOTS + n).to(tl.int64)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM
    sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
    cos = tl.load(COS + pos * stride_cs + offs_d).to(tl.float32)
    sin = tl.load(SIN + pos * stride_cs + offs_d).to(tl.float32)
    row = QKV + n * stride_qkvn
    heads = hk * GROUP + offs_g
    in_group = offs_g < GROUP
    q_rows = row + heads[:, None] * HEAD_DIM
    q = rotated(q_rows + offs_d[None, :], q_rows + partner[None, :], in_group[:, None], sign[None, :],
                 cos[None, :], sin[None, :], stride_qkvs, QKV_SPLITS, dt)  # fmt: skip
    k_row, v_row = row + (H + hk) * HEAD_DIM, row + (H + KV + hk) * HEAD_DIM
    always = offs_d < HEAD_DIM
    k = rotated(k_row + offs_d, k_row + partner, always, sign, cos, sin, stride_qkvs, QKV_SPLITS, dt)
    v = load_projection(v_row + offs_d, always, stride_qkvs, QKV_SPLITS, dt)
    block, within = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    tl.store(K_CACHE + block * stride_kb + within * stride_ks + hk * stride_kh + offs_d, k)
    tl.store(V_CACHE + block * stride_vb + within * stride_vs + hk * stride_vh + offs_d, v)
    # the cached positions before this one, then the new token from registers (not read back from the cache)
    q_pos = tl.full([GROUP_PAD], 0, dtype=tl.int32) + seq_len - 1
    acc, m, denom = _attend_paged(q, q_pos, seq_len - 1, BLOCK_TABLES + n * stride_bt, K_CACHE + hk * stride_kh,
                                  V_CACHE + hk * stride_vh, stride_kb, stride_ks, stride_vb, stride_vs, scale_log2,
                                  GROUP_PAD, BLOCK_SIZE, HEAD_DIM, TILE, PRECISION)  # fmt: skip
    s = tl.sum(q.to(tl.float32) * k.to(tl.float32)[None, :], 1) * scale_log2
    m_new = tl.maximum(m, s)
    alpha = tl.math.exp2(m - m_new)
    p = tl.math.exp2(s - m_new)
    denom = denom * alpha + p
    acc = acc * alpha[:, None] + p.to(dt).to(tl.float32)[:, None] * v.to(tl.float32)[None, :]
    tl.store(OUT + n * stride_on + heads[:, None] * stride_oh + offs_d[None, :], (acc / denom[:, None]).to(dt),
             mask=in_group[:, None])  # fmt: skip


def paged_decode_attention_rope(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """Decode attention that finishes the QKV projection first, in the same kernel (one launch per layer
    fewer than fused_ops.rope_and_cache then paged_decode_attention): rotates q and the new k (cos/sin tables
    read at positions[n]), writes k and v to cache slot slots[n], and attends over the sequence's
    seq_lens[n] - 1 cached positions plus the new token. qkv (N, (H + 2K) D) in the cache's dtype, or the
    projection's split-K fp32 partials (S, N, (H + 2K) D). Returns (N, H, D)."""
    N, D, (_, block_size, K, _) = qkv.shape[-2], k_cache.shape[-1], k_cache.shape
    H = num_heads
    _check_shapes(k_cache.new_empty(0, H, D), k_cache, v_cache)
    if qkv.shape[-1] != (H + 2 * K) * D or qkv.stride(-1) != 1:
        raise ValueError(f"paged attention: qkv {tuple(qkv.shape)} is not ({H} + 2 x {K}) heads of {D}, contiguous")
    if block_tables.shape[0] != N or seq_lens.shape != (N,) or positions.shape != (N,) or slots.shape != (N,):
        raise ValueError(f"paged attention: {N} queries, {block_tables.shape[0]} block tables, {seq_lens.shape[0]} "
                         f"lengths, {positions.shape[0]} positions, {slots.shape[0]} slots")  # fmt: skip
    out = k_cache.new_empty(N, H, D)
    if N == 0:
        return out
    splits, stride_split, stride_row = split_layout(qkv)
    _paged_decode_rope_kernel[(N, K)](
        qkv, cos, sin, positions, slots, k_cache, v_cache, block_tables, seq_lens, out,
        stride_split, stride_row, cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), scale * LOG2E, H, K,
        QKV_SPLITS=splits, GROUP=H // K, GROUP_PAD=max(16, triton.next_power_of_2(H // K)), BLOCK_SIZE=block_size,
        HEAD_DIM=D, TILE=DECODE_TILE, PRECISION="ieee" if out.dtype == torch.float32 else "tf32",
        num_stages=DECODE_STAGES,
    )  # fmt: skip
    return out


@triton.jit
def _paged_varlen_kernel(
    Q, K_CACHE, V_CACHE, BLOCK_TABLES, TILE_SEQ, TILE_FIRST, Q_STARTS, Q_LENS, CTX_LENS, OUT,
    stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_on, stride_oh, scale_log2,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    t, hk = tl.program_id(0), tl.program_id(1)
    n = tl.load(TILE_SEQ + t)
    if n < 0:  # past the last tile of this step
        return
    first = tl.load(TILE_FIRST + t)  # the tile's first token, counted within its sequence's new tokens
    q_start, q_len, ctx_len = tl.load(Q_STARTS + n), tl.load(Q_LENS + n), tl.load(CTX_LENS + n)
    offs_r = tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM)
    token = first + offs_r // GROUP_PAD
    g = offs_r % GROUP_PAD
    live = (token < q_len) & (g < GROUP)
    heads = hk * GROUP + g
    q_pos = ctx_len - q_len + token  # each row's position in its sequence; it sees positions 0 .. q_pos
    q = tl.load(Q + (q_start + token)[:, None] * stride_qn + heads[:, None] * stride_qh + offs_d[None, :],
                mask=live[:, None], other=0.0)  # fmt: skip
    end = tl.minimum(ctx_len, ctx_len - q_len + first + ROWS // GROUP_PAD)  # past the tile's last position
    acc, _, denom = _attend_paged(q, q_pos, end, BLOCK_TABLES + n * stride_bt, K_CACHE + hk * stride_kh,
                                  V_CACHE + hk * stride_vh, stride_kb, stride_ks, stride_vb, stride_vs, scale_log2,
                                  ROWS, BLOCK_SIZE, HEAD_DIM, TILE, PRECISION)  # fmt: skip
    tl.store(OUT + (q_start + token)[:, None] * stride_on + heads[:, None] * stride_oh + offs_d[None, :],
             (acc / denom[:, None]).to(OUT.dtype.element_ty), mask=live[:, None])  # fmt: skip


def group_pad(num_heads: int, num_kv_heads: int) -> int:
    return triton.next_power_of_2(num_heads // num_kv_heads)


def tokens_per_tile(num_heads: int, num_kv_heads: int) -> int:
    """New tokens of one sequence per varlen program: as many as fill its rows with whole query groups."""
    return max(1, VARLEN_ROWS // group_pad(num_heads, num_kv_heads))


def max_varlen_tiles(num_tokens: int, num_seqs: int, per_tile: int) -> int:
    """An upper bound on the tiles of any step of at most num_tokens tokens over at most num_seqs sequences."""
    return num_tokens // per_tile + min(num_seqs, num_tokens)


def paged_varlen_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    q_starts: torch.Tensor,
    q_lens: torch.Tensor,
    ctx_lens: torch.Tensor,
    tile_seqs: torch.Tensor,
    tile_firsts: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q (N, H, D): a step's new tokens, packed; sequence n's are rows q_starts[n] .. + q_lens[n], its
    last q_lens[n] of ctx_lens[n] positions, with K/V of all ctx_lens[n] already in the cache. k_cache,
    v_cache (num_blocks, block_size, K, D); block_tables (S, max_blocks) int32; q_starts, q_lens, ctx_lens
    (S,) int32; tile_seqs, tile_firsts (T,) int32 from step_inputs.varlen_tiles, tile_seqs -1 past the last tile (the
    grid is T programs per KV head). Rows no tile covers (a CUDA graph's padding) are zero, so no garbage
    flows through the rest of their layer. Returns (N, H, D) in q's dtype."""
    N, H, D, K, block_size = _check_shapes(q, k_cache, v_cache)
    S = block_tables.shape[0]
    if not q_starts.shape == q_lens.shape == ctx_lens.shape == (S,) or tile_seqs.shape != tile_firsts.shape:
        raise ValueError(
            f"paged attention: {S} block tables, {tuple(q_starts.shape)} q_starts, {tuple(q_lens.shape)} q_lens, "
            f"{tuple(ctx_lens.shape)} ctx_lens, {tuple(tile_seqs.shape)} tile_seqs, {tuple(tile_firsts.shape)} "
            "tile_firsts"
        )
    out = torch.zeros_like(q)
    if N == 0 or tile_seqs.numel() == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    pad = group_pad(H, K)
    _paged_varlen_kernel[(tile_seqs.numel(), K)](
        q, k_cache, v_cache, block_tables, tile_seqs, tile_firsts, q_starts, q_lens, ctx_lens, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), scale * LOG2E,
        GROUP=H // K, GROUP_PAD=pad, ROWS=max(VARLEN_ROWS, pad), BLOCK_SIZE=block_size, HEAD_DIM=D,
        TILE=VARLEN_TILE, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_stages=VARLEN_STAGES,
    )  # fmt: skip
    return out
