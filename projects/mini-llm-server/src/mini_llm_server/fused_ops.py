"""Fused elementwise kernels for the model runner's forward (Triton), with the same math in torch beside them.

A decode step moves little data per kernel, so its GPU time is mostly the number of kernels: the shared
model's RMSNorm alone is eight (cast, square, mean, add, rsqrt, multiply, cast, scale), run twice per
layer, plus the residual adds and SwiGLU's two. Here the residual add and the following RMSNorm are one
kernel that writes both the new residual stream and the normalised activations; silu(gate) * up is
one kernel over the fused gate/up projection's output; and rotary embedding of Q and K plus the write of
K and V into their cache slots is one kernel over the fused QKV projection's output (in torch: a dozen
kernels and two scatters). Each of them reads a projection's output either finished or as split-K
partials, which it sums (load_projection); the GEMV and GEMM write them through one epilogue
(store_projection). The rotary and SwiGLU math is shared with the kernels that fold it into attention and the
gate/up GEMV and GEMM (rotated, swiglu). The embedding kernel takes a token still on the device where the step
says so. Rounding follows the reference model step by step (each product and sum is
rounded to the activation dtype where torch rounds it). Not bit for bit everywhere: on the H200 in bf16 the
rotary kernel's K matches torch's exactly but its Q differs in the last bit in about one element in eight
(cause not found), so the tests compare within a tolerance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def finished(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A projection's output as one (M, N) tensor of `dtype`: split-K partials (S, M, N) (gemv.py,
    tma_gemm.py) summed, as F.linear would round it; a finished output as it is."""
    return t.sum(0).to(dtype) if t.dim() == 3 else t


@triton.jit
def load_projection(ptrs, mask, stride_split, SPLITS: tl.constexpr, DT: tl.constexpr):
    """A projection's output at `ptrs`: a finished activation (SPLITS = 1), or the sum of SPLITS fp32 partial
    sums stride_split apart (gemv.py, tma_gemm.py), rounded to the activation dtype DT as F.linear rounds its
    output."""
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    for s in tl.static_range(1, SPLITS):
        x += tl.load(ptrs + s * stride_split, mask=mask, other=0.0).to(tl.float32)
    return x.to(DT)


@triton.jit
def rotated(ptrs, partner_ptrs, mask, sign, cos, sin, stride_split, SPLITS: tl.constexpr, DT: tl.constexpr):
    """Rotary embedding of a projection's rows: x * cos + rotate_half(x) * sin, where rotate_half(x)[d] is the
    partner element (d + D/2 mod D) times `sign` (-1 in the first half); each product rounded to DT as
    torch rounds it."""
    x = load_projection(ptrs, mask, stride_split, SPLITS, DT).to(tl.float32)
    partner = load_projection(partner_ptrs, mask, stride_split, SPLITS, DT).to(tl.float32)
    return ((x * cos).to(DT).to(tl.float32) + (sign * partner * sin).to(DT).to(tl.float32)).to(DT)


@triton.jit
def swiglu(gate, up, DT: tl.constexpr):
    """silu(gate) * up from fp32 projections, rounded as torch rounds F.linear's outputs, silu, the product."""
    gate = gate.to(DT).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(DT)
    return (silu.to(tl.float32) * up.to(DT).to(tl.float32)).to(DT)


@triton.jit
def store_projection(P, acc, rm, pid_n, split, M, N, stride_ps, stride_pm, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, SWIGLU: tl.constexpr):  # fmt: skip
    """A projection kernel's epilogue (gemv.py, tma_gemm.py) for its fp32 tile `acc` (rows rm, output columns
    pid_n * BLOCK_N onwards): this split's partial sums into P (S, M, N); or, with SWIGLU (one split, gate and
    up interleaved by columns), silu(gate) * up into the (M, N / 2) activation P in P's dtype."""
    if SWIGLU:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        act = swiglu(gate, up, P.dtype.element_ty)
        rf = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(P + rm[:, None] * stride_pm + rf[None, :], act, mask=(rm[:, None] < M) & (rf[None, :] < N // 2))
    else:
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(P + split * stride_ps + rm[:, None] * stride_pm + rn[None, :], acc,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))  # fmt: skip


@triton.jit
def _embed_kernel(TOKENS, FEEDS, SAMPLED, W, OUT, stride_w, stride_o, C, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    feed = tl.load(FEEDS + row)
    token = tl.load(TOKENS + row)
    if feed >= 0:  # the token is where the last step's sampling left it on the device
        token = tl.load(SAMPLED + feed)
    cols = tl.arange(0, BLOCK)
    tl.store(OUT + row * stride_o + cols, tl.load(W + token.to(tl.int64) * stride_w + cols, mask=cols < C),
             mask=cols < C)  # fmt: skip


def embed(
    tokens: torch.Tensor, feeds: torch.Tensor | None, sampled: torch.Tensor, weight: torch.Tensor, use_triton: bool
) -> torch.Tensor:
    """Embedding rows (N, C) of the step's tokens; a token whose feeds entry is r >= 0 is sampled[r] instead
    (step_inputs.py: a token still on the device). One kernel, instead of the selection's four."""
    if not use_triton or feeds is None:
        if feeds is not None:
            tokens = torch.where(feeds >= 0, sampled[feeds.clamp(min=0)], tokens)
        return torch.nn.functional.embedding(tokens, weight)
    N, C = tokens.shape[0], weight.shape[1]
    out = weight.new_empty(N, C)
    _embed_kernel[(N,)](tokens, feeds, sampled, weight, out, weight.stride(0), out.stride(0), C,
                        BLOCK=triton.next_power_of_2(C))  # fmt: skip
    return out


def split_layout(t: torch.Tensor) -> tuple[int, int, int]:
    """(splits, stride between splits, stride between rows) of a projection's output or its partials."""
    return (t.shape[0], t.stride(0), t.stride(1)) if t.dim() == 3 else (1, 0, t.stride(0))


@triton.jit
def _add_rmsnorm_kernel(X, R, W, OUT, RES_OUT, stride_x, stride_r, stride_rs, stride_o, stride_ro, N, eps,
                        HAS_RESIDUAL: tl.constexpr, R_SPLITS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = load_projection(R + row * stride_r + cols, mask, stride_rs, R_SPLITS, RES_OUT.dtype.element_ty)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(RES_OUT.dtype.element_ty)
        tl.store(RES_OUT + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    y = (xf * tl.math.rsqrt(tl.sum(xf * xf, 0) / N + eps)).to(OUT.dtype.element_ty)
    w = tl.load(W + cols, mask=mask, other=0.0)
    tl.store(OUT + row * stride_o + cols, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(GU, OUT, stride_gu, stride_gus, stride_o, F, GU_SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    row, block = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    dt = OUT.dtype.element_ty
    g = load_projection(GU + row * stride_gu + 2 * cols, mask, stride_gus, GU_SPLITS, dt)
    u = load_projection(GU + row * stride_gu + 2 * cols + 1, mask, stride_gus, GU_SPLITS, dt)
    tl.store(OUT + row * stride_o + cols, swiglu(g, u, dt), mask=mask)


@triton.jit
def _rope_cache_kernel(QKV, COS, SIN, POS, SLOTS, Q_OUT, K_CACHE, V_CACHE,
                       stride_qkv, stride_qkvs, stride_cs, stride_qn, stride_qh, stride_ks, stride_kh, stride_vs,
                       stride_vh, H, KV, HALF: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                       QKV_SPLITS: tl.constexpr):  # fmt: skip
    # One program per token, all its heads at once: the rows h < H are query heads, H <= h < H + KV key
    # heads. A program per (token, head) made 36 programs of 64 elements per token, and at a few hundred
    # tokens the launch's scheduling, not its bytes, set its time.
    n = tl.program_id(0)
    h = tl.arange(0, HEADS)
    d = tl.arange(0, 2 * HALF)
    pos = tl.load(POS + n).to(tl.int64)
    cos = tl.load(COS + pos * stride_cs + d).to(tl.float32)
    sin = tl.load(SIN + pos * stride_cs + d).to(tl.float32)
    dt = Q_OUT.dtype.element_ty
    head = QKV + n * stride_qkv + h[:, None] * 2 * HALF
    x = rotated(head + d[None, :], head + ((d + HALF) % (2 * HALF))[None, :], (h < H + KV)[:, None],
                tl.where(d < HALF, -1.0, 1.0)[None, :], cos[None, :], sin[None, :], stride_qkvs, QKV_SPLITS,
                dt)  # fmt: skip
    tl.store(Q_OUT + n * stride_qn + h[:, None] * stride_qh + d[None, :], x, mask=(h < H)[:, None])
    slot = tl.load(SLOTS + n).to(tl.int64)
    is_k = (h >= H) & (h < H + KV)
    tl.store(K_CACHE + slot * stride_ks + (h - H)[:, None] * stride_kh + d[None, :], x, mask=is_k[:, None])
    j = tl.arange(0, KV_HEADS)
    v = load_projection(QKV + n * stride_qkv + (H + KV + j)[:, None] * 2 * HALF + d[None, :], (j < KV)[:, None],
                        stride_qkvs, QKV_SPLITS, dt)  # fmt: skip
    tl.store(V_CACHE + slot * stride_vs + j[:, None] * stride_vh + d[None, :], v, mask=(j < KV)[:, None])


def rope_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    use_triton: bool,
) -> torch.Tensor:
    """qkv (N, (H + 2K) D) from the fused projection (or its split-K partials, (S, N, (H + 2K) D)); cos/sin
    (P, D) tables over positions, read at each token's position: rotates Q and K, writes K and V to their
    cache slots (k_cache, v_cache: (slots, K, D) views of one layer's pool), returns Q (N, H, D)."""
    N, KV, D = qkv.shape[-2], k_cache.shape[1], k_cache.shape[2]
    H = num_heads
    if not use_triton:
        qkv = finished(qkv, k_cache.dtype)
        from tinyllm.model import apply_rope

        q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        cos, sin = cos[positions], sin[positions]
        k_cache[slots] = apply_rope(k.view(-1, KV, D), cos[:, None], sin[:, None])
        v_cache[slots] = v.view(-1, KV, D)
        return apply_rope(q.view(-1, H, D), cos[:, None], sin[:, None])
    q = k_cache.new_empty(N, H, D)
    splits, stride_split, stride_row = split_layout(qkv)
    _rope_cache_kernel[(N,)](qkv, cos, sin, positions, slots, q, k_cache, v_cache, stride_row, stride_split,
                             cos.stride(0), q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
                             v_cache.stride(0), v_cache.stride(1), H, KV, HALF=D // 2,
                             HEADS=triton.next_power_of_2(H + KV), KV_HEADS=triton.next_power_of_2(KV),
                             QKV_SPLITS=splits)  # fmt: skip
    return q


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, use_triton: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, rmsnorm(x + residual) * weight) for (N, C) rows; without a residual, (x, norm(x)). The
    residual may be a projection's split-K partials (S, N, C)."""
    if not use_triton:
        if residual is not None:
            residual = finished(residual, x.dtype)
            x = x + residual
        xf = x.float()
        return x, weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    N, C = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    r = residual if residual is not None else x
    splits, stride_split, stride_row = split_layout(r)
    # one program per row: at batch 1 one program streams the whole row and its partials, so it gets many
    # warps to keep loads in flight (16 for a 2048-wide row: 1.8 us a call against 2.8 with 4, on the H100)
    block = triton.next_power_of_2(C)
    _add_rmsnorm_kernel[(N,)](x, r, weight, out, res_out, x.stride(0), stride_row, stride_split, out.stride(0),
                              res_out.stride(0), C, eps, HAS_RESIDUAL=residual is not None, R_SPLITS=splits,
                              BLOCK=block, num_warps=max(4, min(16, block // 128)))  # fmt: skip
    return res_out, out


def silu_mul(gate_up: torch.Tensor, use_triton: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """silu(gate) * up, where gate_up (N, 2F) holds gate and up interleaved (gate j in column 2j, up j in
    2j + 1: the runner's fused weight, laid out so that the GEMV's epilogue can pair them, gemv.py); or the
    split-K partials of that projection (S, N, 2F), with `dtype` the activations' (the output's) dtype."""
    dtype = dtype or gate_up.dtype
    N, F = gate_up.shape[-2], gate_up.shape[-1] // 2
    if not use_triton:
        gate_up = finished(gate_up, dtype)
        return torch.nn.functional.silu(gate_up[:, 0::2]) * gate_up[:, 1::2]
    out = torch.empty(N, F, device=gate_up.device, dtype=dtype)
    block = 1024
    splits, stride_split, stride_row = split_layout(gate_up)
    _silu_mul_kernel[(N, triton.cdiv(F, block))](gate_up, out, stride_row, stride_split, out.stride(0), F,
                                                 GU_SPLITS=splits, BLOCK=block)  # fmt: skip
    return out
