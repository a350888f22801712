"""Runs the shared reference model's weights over a paged KV cache.

One step is one forward over every scheduled token, packed into a single (N, C) batch whatever mix of
prompt chunks and decode tokens it holds: the projections and the MLP see one big matrix, and only
attention looks at sequences one by one, reading each one's K/V through its block table. The KV pool is
two tensors per model, (layers, blocks + 1, block_size, kv_heads, head_dim), allocated once; the extra
block is scratch that padding rows of a CUDA-graph batch write into. Sequences decoding one token go
through the paged Triton kernel in one launch per layer (when enabled); prompt chunks gather their blocks
and use SDPA. A step of nothing but decode tokens replays a captured CUDA graph (cuda_graphs.py).
"""

from __future__ import annotations

import torch
from tinyllm.model import Transformer, apply_rope, sdpa_attention

from mini_llm_server.cuda_graphs import DecodeGraphs
from mini_llm_server.paged_attention import paged_decode_attention
from mini_llm_server.scheduler import ScheduledSeq


def kv_bytes_per_block(model: Transformer, block_size: int) -> int:
    cfg, p = model.cfg, model.lm_head.weight
    return 2 * cfg.n_layers * block_size * cfg.n_kv_heads * cfg.hd * p.element_size()


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        num_blocks: int,
        block_size: int,
        paged_kernel: bool = False,
        decode_graph_batch: int = 0,
    ) -> None:
        """decode_graph_batch > 0 (with the paged kernel): decode-only steps of up to that many sequences run
        through DecodeGraphs, captured as CUDA graphs on a GPU, padded but eager elsewhere."""
        self.model, self.block_size, self.num_blocks = model.eval(), block_size, num_blocks
        self.paged_kernel = paged_kernel
        cfg, p = model.cfg, model.lm_head.weight
        shape = (cfg.n_layers, num_blocks + 1, block_size, cfg.n_kv_heads, cfg.hd)  # + 1: the scratch block
        self.k_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.scratch_block = num_blocks
        self.device = p.device
        self.max_blocks_per_seq = -(-cfg.max_seq_len // block_size)
        self.decode_graphs = DecodeGraphs(self, decode_graph_batch) if paged_kernel and decode_graph_batch else None

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a sequence writes into its private copy."""
        if copies:
            src = torch.tensor([s for s, _ in copies], device=self.device)
            dst = torch.tensor([d for _, d in copies], device=self.device)
            self.k_cache[:, dst] = self.k_cache[:, src]
            self.v_cache[:, dst] = self.v_cache[:, src]

    def _slots(self, item: ScheduledSeq) -> list[int]:
        bs, table = self.block_size, item.seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(item.start, item.start + item.num_tokens)]

    # excerpt: execute
    @torch.no_grad()
    def execute(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Compute K/V for every scheduled token and return next-token logits (one row per item whose
        step reaches its newest token, in batch order)."""
        if self.decode_graphs is not None and self.decode_graphs.fits(batch):
            return self.decode_graphs.run(batch)
        tokens = torch.tensor([t for it in batch for t in it.seq.tokens[it.start : it.start + it.num_tokens]],
                              device=self.device)  # fmt: skip
        positions = torch.tensor([p for it in batch for p in range(it.start, it.start + it.num_tokens)],
                                 device=self.device)  # fmt: skip
        slots = torch.tensor([s for it in batch for s in self._slots(it)], device=self.device)
        decode = self._decode_inputs(batch)
        x = self.forward(tokens, positions, slots, lambda layer, q: self._attention(layer, q, batch, decode))
        ends = torch.tensor([sum(b.num_tokens for b in batch[: j + 1]) - 1 for j, it in enumerate(batch)
                             if it.samples], device=self.device, dtype=torch.long)  # fmt: skip
        return self.model.lm_head(self.model.norm(x[ends]))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, attend) -> torch.Tensor:
        """The layers over N packed tokens: writes each token's K/V to its cache slot, attends through
        `attend(layer, q) -> (N, H, D)`, returns the final hidden states (N, C)."""
        model, cfg = self.model, self.model.cfg
        x = model.embed_tokens(tokens)  # (N, C)
        cos, sin = model.rotary(positions, x.dtype)  # (N, D)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.hd
        for i, layer in enumerate(model.layers):
            attn, h = layer.self_attn, layer.input_layernorm(x)
            q = apply_rope(attn.q_proj(h).view(-1, H, D), cos, sin)
            k = apply_rope(attn.k_proj(h).view(-1, K, D), cos, sin)
            v = attn.v_proj(h).view(-1, K, D)
            self.k_cache[i].view(-1, K, D)[slots] = k
            self.v_cache[i].view(-1, K, D)[slots] = v
            x = x + attn.o_proj(attend(i, q).reshape(-1, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    # end-excerpt

    def _decode_inputs(self, batch: list[ScheduledSeq]):
        """Rows, padded block tables and lengths of the one-token items, for the paged kernel (or None)."""
        if not self.paged_kernel:
            return None
        rows, offset = [], 0
        for j, it in enumerate(batch):
            if it.num_tokens == 1:
                rows.append((j, offset))
            offset += it.num_tokens
        if not rows:
            return None
        tables = [batch[j].seq.block_table for j, _ in rows]
        width = max(len(t) for t in tables)
        padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=self.device)
        lens = torch.tensor([batch[j].start + 1 for j, _ in rows], dtype=torch.int32, device=self.device)
        return {j for j, _ in rows}, torch.tensor([o for _, o in rows], device=self.device), padded, lens

    def _attention(self, layer: int, q: torch.Tensor, batch: list[ScheduledSeq], decode) -> torch.Tensor:
        """(N, H, D) attention output of every scheduled token, each sequence over its own cached positions."""
        D = q.shape[-1]
        out = torch.empty_like(q)
        paged = set()
        if decode is not None:
            paged, rows, tables, lens = decode
            out[rows] = paged_decode_attention(q[rows], self.k_cache[layer], self.v_cache[layer], tables, lens, D**-0.5)
        offset = 0
        for j, it in enumerate(batch):
            if j not in paged:
                q_seq = q[offset : offset + it.num_tokens].transpose(0, 1)[None]  # (1, H, T, D)
                k_seq, v_seq = self._gather(layer, it)
                out[offset : offset + it.num_tokens] = sdpa_attention(q_seq, k_seq, v_seq, causal=True,
                                                                      scale=D**-0.5)[0].transpose(0, 1)  # fmt: skip
            offset += it.num_tokens
        return out

    def _gather(self, layer: int, item: ScheduledSeq) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, K, S, D) keys and values of positions 0 .. S-1 of one sequence, S = start + num_tokens."""
        S = item.start + item.num_tokens
        blocks = torch.tensor(item.seq.block_table[: -(-S // self.block_size)], device=self.device)
        K, D = self.model.cfg.n_kv_heads, self.model.cfg.hd
        k = self.k_cache[layer, blocks].reshape(-1, K, D)[:S]
        v = self.v_cache[layer, blocks].reshape(-1, K, D)[:S]
        return k.transpose(0, 1)[None], v.transpose(0, 1)[None]
