"""A contiguous KV cache: one preallocated (layers, B, K, max_len, D) buffer for keys and one for values.

The simplest cache that makes decode O(T) instead of O(T^2): every sequence in the batch has the same
length, and positions [0, length) are valid. mini-llm-server replaces it with a paged cache; this one
is the reference it is checked against.
"""

from __future__ import annotations

import torch

from tinyllm.config import ModelConfig


class KVCache:
    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, *, device: torch.device | str, dtype: torch.dtype
    ):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache of {max_len} positions exceeds the model's maximum context of {cfg.max_seq_len}")
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self._new = 0

    def begin(self, batch_size: int, num_new: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(f"batch of {batch_size} sequences does not match the cache's {self.batch_size}")
        if self.length + num_new > self.max_len:
            raise ValueError(f"cache holds {self.length} of {self.max_len} positions; {num_new} more do not fit")
        self._new = num_new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, K, T, D) for `layer`; return all positions so far (B, K, S, D)."""
        end = self.length + self._new
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_new: int) -> None:
        self.length += num_new
        self._new = 0

    def reset(self) -> None:
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds, allocated for max_len positions."""
        return self.k.nbytes + self.v.nbytes

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position of one sequence takes, across all layers (K and V)."""
        return self.nbytes // (self.batch_size * self.max_len)
