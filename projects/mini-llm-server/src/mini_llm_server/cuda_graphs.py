"""Decode steps under CUDA graphs.

A decode step of a 1B-parameter model is a few hundred kernel launches of a few microseconds of work
each; launched one by one from Python, the GPU waits on the host. DecodeGraphs captures the whole decode
forward (every layer, the paged attention kernel, the LM head) once per padded batch size, and a step
becomes: copy this step's tokens, positions, cache slots, lengths and block tables into the graphs'
static input buffers (two host-to-device copies), replay, read the logits.

A batch of B sequences runs in the smallest captured size G >= B. The G - B padding rows write their K/V
into the pool's scratch block and attend over that block alone, so they never touch a sequence's cache.
Off a GPU the same padded forward runs eagerly, which is how the padding is tested on a CPU.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from mini_llm_server.paged_attention import paged_decode_attention

if TYPE_CHECKING:
    from mini_llm_server.model_runner import ModelRunner
    from mini_llm_server.scheduler import ScheduledSeq


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes captured: 1, 2, 4, 8, then every multiple of 16, and max_batch itself."""
    return sorted({s for s in (1, 2, 4, 8, *range(16, max_batch, 16)) if s < max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(self, runner: ModelRunner, max_batch: int) -> None:
        self.runner, self.sizes = runner, graph_batch_sizes(max_batch)
        G, device = self.sizes[-1], runner.device
        self.scratch_slot = runner.scratch_block * runner.block_size
        # rows: tokens, positions, cache slots, sequence lengths (one buffer, one copy per step)
        self.meta = torch.tensor([[0], [0], [self.scratch_slot], [1]], device=device).repeat(1, G)
        # Stale entries of earlier, larger batches stay behind in the tables: they are valid block ids, and a
        # row reads only the first ceil(length / block_size) of its entries, so they are never used.
        self.tables = torch.full((G, runner.max_blocks_per_seq), runner.scratch_block, dtype=torch.int32,
                                 device=device)  # fmt: skip
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # each graph's output buffer
        self.replays = 0
        if device.type == "cuda":
            self._capture()

    def fits(self, batch: list[ScheduledSeq]) -> bool:
        """A decode-only step (one new token per sequence) small enough for a captured size."""
        return len(batch) <= self.sizes[-1] and all(it.num_tokens == 1 and it.samples for it in batch)

    def _forward(self, G: int) -> torch.Tensor:
        r = self.runner
        tokens, positions, slots, lens = self.meta[:, :G]
        scale = r.model.cfg.hd**-0.5

        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
            return paged_decode_attention(q, r.k_cache[layer], r.v_cache[layer], self.tables[:G], lens, scale)

        return r.model.lm_head(r.forward(tokens, positions, slots, attend))

    # excerpt: capture
    @torch.no_grad()
    def _capture(self) -> None:
        side = torch.cuda.Stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile the Triton kernel, settle cuBLAS and the allocator
            for G in self.sizes:
                self._forward(G)
        torch.cuda.current_stream().wait_stream(side)
        pool = None
        for G in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[G] = self._forward(G)
            pool, self.graphs[G] = graph.pool(), graph
        torch.cuda.synchronize(self.runner.device)

    # end-excerpt

    @torch.no_grad()
    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Logits (B, vocab) of a decode-only batch. On a GPU this is a view of the graph's output buffer,
        valid until the next step."""
        t0 = time.perf_counter()
        B, bs, scratch = len(batch), self.runner.block_size, self.runner.scratch_block
        G = next(s for s in self.sizes if s >= B)
        cols = [(it.seq.token_slice(it.start, it.start + 1)[0], it.start,
                 it.seq.block_table[it.start // bs] * bs + it.start % bs, it.start + 1) for it in batch]  # fmt: skip
        cols += [(0, 0, self.scratch_slot, 1)] * (G - B)  # padding: write and read the scratch block only
        width = max(len(it.seq.block_table) for it in batch)
        tables = [it.seq.block_table + [scratch] * (width - len(it.seq.block_table)) for it in batch]
        self.meta[:, :G].copy_(torch.tensor(cols).t())
        self.tables[:B, :width].copy_(torch.tensor(tables, dtype=torch.int32))
        self.replays += 1
        self.runner.prepare_seconds += time.perf_counter() - t0
        if G in self.graphs:
            self.graphs[G].replay()
            return self.logits[G][:B]
        return self._forward(G)[:B]
