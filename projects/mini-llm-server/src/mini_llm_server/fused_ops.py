"""Fused elementwise kernels for the model runner's forward (Triton), with the same math in torch beside them.

A decode step moves little data per kernel, so its GPU time is mostly the number of kernels: the shared
model's RMSNorm alone is eight (cast, square, mean, add, rsqrt, multiply, cast, scale), run twice per
layer, plus the residual adds and SwiGLU's two. Here the residual add and the following RMSNorm are one
kernel that writes both the new residual stream and the normalised activations; silu(gate) * up is
one kernel over the fused gate/up projection's output; and rotary embedding of Q and K plus the write of
K and V into their cache slots is one kernel over the fused QKV projection's output (in torch: a dozen
kernels and two scatters). Rounding follows the reference model step by step (each product and sum is
rounded to the activation dtype where torch rounds it), so outputs match it, not merely approximately.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm_kernel(X, R, W, OUT, RES_OUT, stride_x, stride_r, stride_o, stride_ro, N, eps,
                        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)).to(
            RES_OUT.dtype.element_ty
        )
        tl.store(RES_OUT + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    y = (xf * tl.math.rsqrt(tl.sum(xf * xf, 0) / N + eps)).to(OUT.dtype.element_ty)
    w = tl.load(W + cols, mask=mask, other=0.0)
    tl.store(OUT + row * stride_o + cols, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(GU, OUT, stride_gu, stride_o, F, BLOCK: tl.constexpr):
    row, block = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    g = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + F + cols, mask=mask, other=0.0)
    # torch's silu rounds to the activation dtype, then the product rounds again
    silu = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty)
    tl.store(OUT + row * stride_o + cols, (silu.to(tl.float32) * u.to(tl.float32)).to(OUT.dtype.element_ty),
             mask=mask)  # fmt: skip


@triton.jit
def _rope_cache_kernel(QKV, COS, SIN, SLOTS, Q_OUT, K_CACHE, V_CACHE,
                       stride_qkv, stride_cs, stride_qn, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
                       H, KV, HALF: tl.constexpr):  # fmt: skip
    n, h = tl.program_id(0), tl.program_id(1)  # h: a query head (< H) or a KV head (H + j)
    offs = tl.arange(0, HALF)
    c1 = tl.load(COS + n * stride_cs + offs).to(tl.float32)
    c2 = tl.load(COS + n * stride_cs + HALF + offs).to(tl.float32)
    s1 = tl.load(SIN + n * stride_cs + offs).to(tl.float32)
    s2 = tl.load(SIN + n * stride_cs + HALF + offs).to(tl.float32)
    x1 = tl.load(QKV + n * stride_qkv + h * 2 * HALF + offs).to(tl.float32)
    x2 = tl.load(QKV + n * stride_qkv + h * 2 * HALF + HALF + offs).to(tl.float32)
    dt = Q_OUT.dtype.element_ty
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1), each product rounded as torch rounds it
    o1 = ((x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)).to(dt)
    o2 = ((x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)).to(dt)
    if h < H:
        tl.store(Q_OUT + n * stride_qn + h * stride_qh + offs, o1)
        tl.store(Q_OUT + n * stride_qn + h * stride_qh + HALF + offs, o2)
    else:
        j = h - H
        slot = tl.load(SLOTS + n).to(tl.int64)
        tl.store(K_CACHE + slot * stride_ks + j * stride_kh + offs, o1)
        tl.store(K_CACHE + slot * stride_ks + j * stride_kh + HALF + offs, o2)
        d = tl.arange(0, 2 * HALF)
        v = tl.load(QKV + n * stride_qkv + (H + KV + j) * 2 * HALF + d)
        tl.store(V_CACHE + slot * stride_vs + j * stride_vh + d, v)


def rope_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    use_triton: bool,
) -> torch.Tensor:
    """qkv (N, (H + 2K) D) from the fused projection, cos/sin (N, D): rotates Q and K, writes K and V to
    their cache slots (k_cache, v_cache: (slots, K, D) views of one layer's pool), returns Q (N, H, D)."""
    N, KV, D = qkv.shape[0], k_cache.shape[1], k_cache.shape[2]
    H = num_heads
    if not use_triton:
        from tinyllm.model import apply_rope

        q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        k_cache[slots] = apply_rope(k.view(-1, KV, D), cos[:, None], sin[:, None])
        v_cache[slots] = v.view(-1, KV, D)
        return apply_rope(q.view(-1, H, D), cos[:, None], sin[:, None])
    q = qkv.new_empty(N, H, D)
    _rope_cache_kernel[(N, H + KV)](qkv, cos, sin, slots, q, k_cache, v_cache, qkv.stride(0), cos.stride(0),
                                    q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
                                    v_cache.stride(0), v_cache.stride(1), H, KV, HALF=D // 2)  # fmt: skip
    return q


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, use_triton: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, rmsnorm(x + residual) * weight) for (N, C) rows; without a residual, (x, norm(x))."""
    if not use_triton:
        if residual is not None:
            x = x + residual
        xf = x.float()
        return x, weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    N, C = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    r = residual if residual is not None else x
    _add_rmsnorm_kernel[(N,)](x, r, weight, out, res_out, x.stride(0), r.stride(0), out.stride(0), res_out.stride(0),
                              C, eps, HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(C))  # fmt: skip
    return res_out, out


def silu_mul(gate_up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """silu(gate) * up, where gate_up (N, 2F) holds gate in its first F columns and up in its last F."""
    F = gate_up.shape[1] // 2
    if not use_triton:
        return torch.nn.functional.silu(gate_up[:, :F]) * gate_up[:, F:]
    out = gate_up.new_empty(gate_up.shape[0], F)
    block = 1024
    _silu_mul_kernel[(gate_up.shape[0], triton.cdiv(F, block))](gate_up, out, gate_up.stride(0), out.stride(0), F,
                                                               BLOCK=block)  # fmt: skip
    return out
