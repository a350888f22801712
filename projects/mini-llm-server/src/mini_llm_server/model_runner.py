"""Runs the shared reference model's weights over a paged KV cache.

One step is one forward over every scheduled token, packed into a single (N, C) batch whatever mix of
prompt chunks and decode tokens it holds: the projections and the MLP see one big matrix, and only
attention looks at sequences one by one, reading each one's K/V through its block table. The KV pool is
two tensors per model, (layers, blocks + 1, block_size, kv_heads, head_dim), allocated once; the extra
block is scratch that padding rows of a CUDA-graph batch write into. With the paged kernels (on a GPU),
every token of a step attends in one varlen launch per layer, and steps replay captured CUDA graphs:
decode-only steps one kind, steps with prompt chunks another (cuda_graphs.py). Without them (the CPU
default) each sequence's blocks are gathered and given to SDPA.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tinyllm.model import Transformer, sdpa_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from mini_llm_server.block_tables import BlockTables
from mini_llm_server.cuda_graphs import DecodeGraphs, MixedGraphs
from mini_llm_server.fused_ops import add_rmsnorm, embed, rope_and_cache
from mini_llm_server.gpu_timeline import GpuTimeline
from mini_llm_server.paged_attention import paged_varlen_attention, tokens_per_tile
from mini_llm_server.projections import project, project_swiglu
from mini_llm_server.scheduler import ScheduledSeq
from mini_llm_server.step_inputs import step_inputs

# cuDNN's SDPA builds an execution plan for every new shape, tens of milliseconds of host time, and every
# prompt chunk has a shape of its own (a profile of a mixed step on the H100 had plan building take most of
# it). Flash and memory-efficient kernels need no plan.
PREFILL_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def kv_bytes_per_block(model: Transformer, block_size: int) -> int:
    cfg, p = model.cfg, model.lm_head.weight
    return 2 * cfg.n_layers * block_size * cfg.n_kv_heads * cfg.hd * p.element_size()


def fused_weight_bytes(model: Transformer) -> int:
    """What the runner's fused Q/K/V and gate/up copies of the weights take (allocated after the KV pool)."""
    return sum(p.numel() * p.element_size() for lay in model.layers
               for p in (lay.self_attn.q_proj.weight, lay.self_attn.k_proj.weight, lay.self_attn.v_proj.weight,
                         lay.mlp.gate_proj.weight, lay.mlp.up_proj.weight))  # fmt: skip


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        num_blocks: int,
        block_size: int,
        max_seqs: int,
        paged_kernel: bool = False,
        decode_graph_batch: int = 0,
        mixed_graph_tokens: int = 0,
    ) -> None:
        """max_seqs: the most sequences a step holds. decode_graph_batch > 0 (with the paged kernel):
        decode-only steps of up to that many sequences run through DecodeGraphs, captured as CUDA graphs on
        a GPU, padded but eager elsewhere; with mixed_graph_tokens > 0 too, any other step of up to that
        many tokens runs through MixedGraphs."""
        self.model, self.block_size = model.eval(), block_size
        self.paged_kernel = paged_kernel
        cfg, p = model.cfg, model.lm_head.weight
        shape = (cfg.n_layers, num_blocks + 1, block_size, cfg.n_kv_heads, cfg.hd)  # + 1: the scratch block
        self.k_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.scratch_block = num_blocks
        self.device = p.device
        self.max_blocks_per_seq = -(-cfg.max_seq_len // block_size)
        self.block_tables = BlockTables(max_seqs, self.max_blocks_per_seq, self.scratch_block)  # the engine releases
        # one matmul for Q/K/V and one for gate/up per layer (copies of the model's weights, made once)
        self.qkv_weight = [torch.cat([lay.self_attn.q_proj.weight, lay.self_attn.k_proj.weight,
                                      lay.self_attn.v_proj.weight]) for lay in model.layers]  # fmt: skip
        # gate and up interleaved by rows (gate j in row 2j, up j in 2j + 1), so that one block of output columns
        # holds whole pairs (gemv.py, tma_gemm.py)
        self.gate_up_weight = [torch.stack([lay.mlp.gate_proj.weight, lay.mlp.up_proj.weight], 1).flatten(0, 1)
                               for lay in model.layers]  # fmt: skip
        self.tokens_per_tile = tokens_per_tile(cfg.n_heads, cfg.n_kv_heads)
        # rotary cos/sin of every position, computed once as the model computes them per call (a step reads
        # its tokens' rows instead of running the half-dozen kernels that make them)
        self.cos, self.sin = model.rotary(torch.arange(cfg.max_seq_len, device=p.device), p.dtype)
        # Greedy tokens sampled on the device (sample_greedy): the next step's forward reads its input tokens
        # from here, so the host can launch it before it has read them. Two host buffers, used in turn: a
        # step's tokens are read while the next step's copy may already be landing.
        self.sampled = torch.zeros(max_seqs, dtype=torch.long, device=p.device)
        pinned = p.device.type == "cuda"
        self._sampled_host = [torch.zeros(max_seqs, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self._sampled_turn = 0
        graphs = paged_kernel and decode_graph_batch > 0
        self.decode_graphs = DecodeGraphs(self, decode_graph_batch) if graphs else None
        mixed = graphs and mixed_graph_tokens > 0
        self.mixed_graphs = MixedGraphs(self, mixed_graph_tokens, decode_graph_batch) if mixed else None
        self.prepare_seconds = 0.0  # host time building each step's inputs, summed (the engine's "prepare")
        self.timeline: GpuTimeline | None = None  # steps on the GPU's clock (EngineConfig.gpu_timeline)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a sequence writes into its private copy."""
        if copies:
            src = torch.tensor([s for s, _ in copies], device=self.device)
            dst = torch.tensor([d for _, d in copies], device=self.device)
            self.k_cache[:, dst] = self.k_cache[:, src]
            self.v_cache[:, dst] = self.v_cache[:, src]

    def sample_greedy(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """The argmax of each logits row into `sampled`, and a copy of it on its way to the host, without
        waiting for the GPU: returns the host tensor, valid once the returned event (None off a GPU) is done."""
        n = logits.shape[0]
        torch.argmax(logits, dim=-1, out=self.sampled[:n])
        host = self._sampled_host[self._sampled_turn][:n]
        self._sampled_turn ^= 1
        host.copy_(self.sampled[:n], non_blocking=True)
        if self.timeline is not None:
            self.timeline.end()
        if self.device.type != "cuda":
            return host, None
        ready = torch.cuda.Event()
        ready.record()
        return host, ready

    # excerpt: execute
    @torch.no_grad()
    def execute(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Compute K/V for every scheduled token and return next-token logits (one row per item whose
        step reaches its newest token, in batch order)."""
        if self.decode_graphs is not None and self.decode_graphs.fits(batch):
            return self.decode_graphs.run(batch)
        if self.mixed_graphs is not None and self.mixed_graphs.fits(batch):
            return self.mixed_graphs.run(batch)
        t0 = time.perf_counter()
        inputs = step_inputs(batch, self.block_size, self.tokens_per_tile, self.block_tables)
        if self.timeline is not None:  # launched kernel by kernel: its busy time includes the launches' gaps
            self.timeline.start("eager")
        tokens, positions, slots, ends = (self._to_device(v) for v in (inputs.tokens, inputs.positions,
                                                                       inputs.slots, inputs.ends))  # fmt: skip
        feeds = self._to_device(inputs.feeds) if (inputs.feeds >= 0).any() else None
        if self.paged_kernel:
            i32 = torch.int32
            meta = [self._to_device(v, i32) for v in (inputs.q_starts, inputs.q_lens, inputs.ctx_lens)]
            tables = self._to_device(inputs.tables, i32)
            tiles = [self._to_device(v, i32) for v in (inputs.tile_seqs, inputs.tile_firsts)]
            scale = self.model.cfg.hd**-0.5

            def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
                q = self.rope_and_cache(i, qkv, positions, slots)
                return paged_varlen_attention(q, self.k_cache[i], self.v_cache[i], tables, *meta, *tiles, scale)
        else:
            # every sequence's cache slots 0 .. start + num_tokens - 1, made once per step, not once per layer
            history = [self._to_device(self._slots(it, 0)) for it in batch]

            def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
                return self._attention(i, self.rope_and_cache(i, qkv, positions, slots), batch, history)

        self.prepare_seconds += time.perf_counter() - t0
        with sdpa_kernel(PREFILL_BACKENDS):
            h = self.forward(tokens, attend, feeds)
        return self.model.lm_head(h[ends])

    def rope_and_cache(self, layer: int, qkv: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        """Q (N, H, D) of a QKV projection's output, rotated; K rotated and V written to their cache slots."""
        cfg = self.model.cfg
        k_cache = self.k_cache[layer].view(-1, cfg.n_kv_heads, cfg.hd)
        v_cache = self.v_cache[layer].view(-1, cfg.n_kv_heads, cfg.hd)
        return rope_and_cache(qkv, self.cos, self.sin, positions, slots, k_cache, v_cache, cfg.n_heads,
                              self.paged_kernel)  # fmt: skip

    def forward(self, tokens: torch.Tensor, attend, feeds=None) -> torch.Tensor:
        """The layers over N packed tokens; returns the final normalised hidden states (N, C). Attention is
        `attend(layer, qkv) -> (N, H, D)`: given the QKV projection's output, it applies the rotary embedding,
        writes each token's K/V to its cache slot and attends (rope_and_cache then an attention kernel, or
        one kernel that does all three). A token whose `feeds` entry is a row r >= 0 is not in `tokens` but
        in `sampled[r]`, where the last step put it. Each residual add is fused with the RMSNorm after it,
        Q/K/V and gate/up are one matmul each (fused_ops.py, projections.py; with the paged kernel, else the same
        math in torch)."""
        model, cfg, fused = self.model, self.model.cfg, self.paged_kernel
        layers, eps = model.layers, model.norm.eps
        H, D = cfg.n_heads, cfg.hd
        x = embed(tokens, feeds, self.sampled, model.embed_tokens.weight, fused)  # (N, C)
        x, h = add_rmsnorm(x, None, layers[0].input_layernorm.weight, eps, fused)
        for i, layer in enumerate(layers):
            # project(): split-K partials for a few half-precision rows, summed by the fused kernel that reads them
            qkv = project(h, self.qkv_weight[i], fused)
            attn_out = project(attend(i, qkv).reshape(-1, H * D), layer.self_attn.o_proj.weight, fused)
            x, h = add_rmsnorm(x, attn_out, layer.post_attention_layernorm.weight, eps, fused)
            act = project_swiglu(h, self.gate_up_weight[i], fused)
            mlp_out = project(act, layer.mlp.down_proj.weight, fused)
            following = layers[i + 1].input_layernorm.weight if i + 1 < len(layers) else model.norm.weight
            x, h = add_rmsnorm(x, mlp_out, following, eps, fused)
        return h

    # end-excerpt

    def _to_device(self, values: np.ndarray | list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
        # non_blocking: a blocking host-to-device copy synchronises the stream, so the host would wait for
        # the GPU to drain before it could queue anything more
        return torch.as_tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    def _slots(self, item: ScheduledSeq, first: int) -> list[int]:
        """Cache slots of positions first .. start + num_tokens - 1 of a scheduled sequence."""
        bs, table = self.block_size, item.seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(first, item.start + item.num_tokens)]

    def _attention(self, layer: int, q: torch.Tensor, batch: list[ScheduledSeq], history) -> torch.Tensor:
        """(N, H, D) attention output of every scheduled token, each sequence over its own cached positions,
        gathered and given to SDPA (the path without the paged kernel)."""
        D, (K, scale) = q.shape[-1], (self.model.cfg.n_kv_heads, q.shape[-1] ** -0.5)
        out = torch.empty_like(q)
        offset = 0
        for j, it in enumerate(batch):  # under sdpa_kernel(PREFILL_BACKENDS), set around the step
            q_seq = q[offset : offset + it.num_tokens].transpose(0, 1)[None]  # (1, H, T, D)
            k_seq = self.k_cache[layer].view(-1, K, D)[history[j]].transpose(0, 1)[None]  # (1, K, S, D)
            v_seq = self.v_cache[layer].view(-1, K, D)[history[j]].transpose(0, 1)[None]
            out[offset : offset + it.num_tokens] = sdpa_attention(q_seq, k_seq, v_seq, causal=True,
                                                                  scale=scale)[0].transpose(0, 1)  # fmt: skip
            offset += it.num_tokens
        return out
