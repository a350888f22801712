"""The public op: input checks, the two `torch.library` custom ops (forward and backward, each with a fake
implementation so torch.compile can trace shapes without running Triton), the `torch.autograd.Function`
that ties them together, and `attention(q, k, v, causal=, scale=)`, an SDPA-like drop-in.

Layout is SDPA's: q (B, H, T_q, D), k and v (B, H_kv, T_k, D) with H a multiple of H_kv (grouped-query
and multi-query attention read each K/V head once per group, never a repeated copy).
"""

from __future__ import annotations

import math

import torch

from flashattention_triton.kernels import backward as _backward
from flashattention_triton.kernels import forward as _forward
from flashattention_triton.kernels.configs import HEAD_DIMS, interpreting

DTYPES = (torch.float16, torch.bfloat16)
NAMESPACE = "flashattention_triton"


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError naming the problem if the kernels cannot take these tensors."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"attention: {name} is {t.dtype}; the kernels take float16 or bfloat16")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"attention: tensors are on {q.device}; the Triton kernels need CUDA tensors "
            "(set TRITON_INTERPRET=1 before importing to run them in Triton's CPU interpreter)"
        )
    B, H, _, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"attention: head_dim {D} is not supported; supported: {', '.join(map(str, HEAD_DIMS))}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"attention: k/v shape {tuple(k.shape)} does not match q {tuple(q.shape)} in batch or head_dim"
        )
    H_kv = k.shape[1]
    if H_kv == 0 or H % H_kv:
        raise ValueError(f"attention: q has {H} heads, not a multiple of k/v's {H_kv}")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # the kernels take any batch/head/sequence strides but need unit stride along head_dim
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op(f"{NAMESPACE}::attention_forward", mutates_args=())
def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B, H, T_q, D) in q's dtype, lse (B, H, T_q) float32 (natural log; +inf for a
    row that sees no key)."""
    check_inputs(q, k, v)
    return _forward.attention_forward(*map(_last_dim_contiguous, (q, k, v)), causal, scale)


@attention_forward.register_fake
def _(q, k, v, causal, scale):
    B, H, T_q, D = q.shape
    return q.new_empty((B, H, T_q, D)), q.new_empty((B, H, T_q), dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::attention_backward", mutates_args=())
def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) given the upstream gradient and the forward's out and lse."""
    check_inputs(q, k, v)
    tensors = map(_last_dim_contiguous, (grad_out, q, k, v, out))
    return _backward.attention_backward(*tensors, lse.contiguous(), causal, scale)


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, causal, scale):
    B, H, T_q, D = q.shape
    return q.new_empty((B, H, T_q, D)), k.new_empty(k.shape), v.new_empty(v.shape)


class FlashAttention(torch.autograd.Function):
    """Differentiable attention: the forward saves q, k, v, out and lse (not the T_q x T_k probabilities),
    the backward recomputes what it needs from them."""

    @staticmethod
    def forward(q, k, v, causal: bool, scale: float):
        return attention_forward(q, k, v, causal, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, causal, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `attention`, also returning the per-row log-sum-exp of the scaled scores. The inputs are checked
    once, inside the custom op (which also guards direct `torch.ops` calls)."""
    return FlashAttention.apply(q, k, v, bool(causal), _scale(q, scale))


# excerpt: attention
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """softmax(scale * q k^T [+ causal mask]) v without materialising the scores.

    q: (B, H, T_q, D); k, v: (B, H_kv, T_k, D), H % H_kv == 0; fp16 or bf16; D in 32, 64, 128, 256.
    causal masks bottom-right (query i sees keys j <= i + T_k - T_q; SDPA's is_causal when T_q == T_k).
    scale defaults to 1/sqrt(D). Same call shape as the shared model's `attention_fn`.
    """
    return attention_with_lse(q, k, v, causal=causal, scale=scale)[0]


# end-excerpt


def _scale(q: torch.Tensor, scale: float | None) -> float:
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"attention: scale must be a positive finite number, got {scale}")
    return scale
