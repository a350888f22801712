"""The naive attention the kernels are checked against: materialise the (T_q, T_k) scores, mask, softmax,
multiply. Same semantics as `attention` (GQA, bottom-right causal mask, a row that sees no key gives 0)
in whatever dtype it is given; tests run it in float32 (or float64) as the ground truth, and the
benchmark runs it in the kernels' dtype as the "naive" line with its O(T^2) memory."""

from __future__ import annotations

import math

import torch


# excerpt: reference
def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) computed the obvious way. q (B, H, T_q, D); k, v (B, H_kv, T_k, D)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, T_q, T_k): the matrix the kernels never store
    if causal:
        T_q, T_k = s.shape[-2:]
        visible = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(diagonal=T_k - T_q)
        s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no visible key is all -inf: 0, as the kernel
    return p @ v, lse.masked_fill(lse == float("-inf"), float("inf"))


# end-excerpt
