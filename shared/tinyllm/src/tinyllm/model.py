"""The Llama-architecture decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Follows the reference implementation (transformers' LlamaForCausalLM) operation for operation, so the
same weights give the same logits; module names equal the Hugging Face parameter names (less the
"model." prefix), so checkpoints map one to one. The model is plain single-device code: compile,
kernel swaps and instrumentation are applied from outside (`attention_fn`, tinyllm.instrument).

Shapes: B batch, T new tokens this call, S positions attended (cache + new), C model dim,
H query heads, K key/value heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tinyllm.config import ModelConfig
from tinyllm.kv_cache import KVCache


class AttentionFn(Protocol):
    """q (B, H, T, D), k and v (B, K, S, D) -> (B, H, T, D). `causal` aligns the mask bottom-right:
    query t sits at absolute position S - T + t and sees keys 0..S-T+t (prefill, chunked prefill and
    decode alike). H may be a multiple of K (grouped-query attention)."""

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float
    ) -> torch.Tensor: ...


# excerpt: sdpa-attention
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
    """The default attention: PyTorch's fused scaled_dot_product_attention (flash / cuDNN / math)."""
    T, S = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if not causal or T == 1:  # one new token sees every cached position: no mask at all
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    # chunked prefill on top of a cache: SDPA's is_causal is top-left aligned, so build the mask
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


# end-excerpt


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 whatever the activation dtype: bf16 has too few mantissa bits for the mean square
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings, in the rotate-half layout Llama checkpoints use."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hd
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        if cfg.rope_scaling is not None:
            inv_freq = _llama3_scale(inv_freq, cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions (T,) -> cos, sin (T, D); angles in fp32 (large positions lose phase in bf16)
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _llama3_scale(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1+ context extension: slow down low frequencies by `factor`, keep high ones, blend between."""
    s = cfg.rope_scaling
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, heads, T, D), cos/sin (T, D)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, cfg.n_heads, cfg.n_kv_heads, cfg.hd
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.hd, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_fn: AttentionFn,
        cache: KVCache | None,
    ) -> torch.Tensor:
        # excerpt: attention-forward
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D): every position so far
        y = attention_fn(q, k, v, causal=True, scale=self.head_dim**-0.5)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        # end-excerpt


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attention_fn, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention_fn, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(cfg)
        self.attention_fn: Callable[..., torch.Tensor] = sdpa_attention
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """N(0, 0.02) weights; the two projections into the residual stream scaled by 1/sqrt(2L) so the
        stream's variance does not grow with depth (GPT-2). Norm weights at one."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                scale = (
                    1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
                )
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or (B, 1, V) with last_only. With a cache, the tokens continue
        the cached sequence at position cache.length, and the cache advances by T."""
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens ({start} cached + {T} new) exceeds the model's maximum "
                f"context of {self.cfg.max_seq_len}"
            )
        x = self.embed_tokens(tokens)  # (B, T, C)
        positions = torch.arange(start, start + T, device=tokens.device)
        cos, sin = self.rotary(positions, x.dtype)  # (T, D) each
        if cache is not None:
            cache.begin(B, T)
        for layer in self.layers:
            x = layer(x, cos, sin, self.attention_fn, cache)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x[:, -1:] if last_only else x)
        return self.lm_head(x)  # (B, T, V)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Process a prompt (B, T) into an empty cache; returns the next-token logits (B, V)."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache; this one holds {cache.length} positions")
        return self(tokens, cache, last_only=True)[:, -1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step: tokens (B,) appended to the cache; returns the next-token logits (B, V)."""
        if not cache.length:
            raise ValueError("decode needs a prefilled cache")
        return self(tokens[:, None], cache)[:, -1]

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, device=p.device, dtype=p.dtype)
