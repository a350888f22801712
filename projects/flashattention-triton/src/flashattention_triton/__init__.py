"""FlashAttention-2 in Triton: `attention(q, k, v, causal=, scale=)` with a hand-written backward."""

from flashattention_triton.ops import FlashAttention, attention, attention_with_lse, check_inputs
from flashattention_triton.reference import reference_attention

__all__ = ["FlashAttention", "attention", "attention_with_lse", "check_inputs", "reference_attention"]
