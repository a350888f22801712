"""Steps under CUDA graphs: decode-only steps (DecodeGraphs) and steps that carry prompt chunks
(MixedGraphs).

A decode step of a 1B-parameter model is a few hundred kernel launches of a few microseconds of work
each; launched one by one from Python, the GPU waits on the host. DecodeGraphs captures the whole decode
forward (every layer, the paged attention kernel, the LM head) once per padded batch size, and a step
becomes: copy this step's tokens, positions, cache slots, lengths and block tables into the graphs'
static input buffers (one host-to-device copy from a pinned mirror, StagedInputs), replay, read the
logits.

A batch of B sequences runs in the smallest captured size G >= B. The G - B padding rows write their K/V
into the pool's scratch block and attend over that block alone, so they never touch a sequence's cache.
Off a GPU the same padded forward runs eagerly, which is how the padding is tested on a CPU.

A step that carries prompt chunks, launched eagerly, costs the host ~15 ms for the layers plus ~4 ms per
prompt in it on the H100, for 3-4 ms of GPU work (profiled with 32 decodes and 4 prompts of 128 tokens):
every admission stalled every stream. MixedGraphs captures the whole forward once per padded token
count, with attention through the varlen kernel, whose inputs (where each sequence's tokens start, how
many, its context length, its block table, the tile table) are data in static buffers; the grid is the
most tiles a step of that many tokens can have, the unused programs exiting at once. Padding tokens
write the scratch block and belong to no tile.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from mini_llm_server.paged_attention import max_varlen_tiles, paged_decode_attention_rope, paged_varlen_attention
from mini_llm_server.step_inputs import step_inputs

if TYPE_CHECKING:
    from mini_llm_server.model_runner import ModelRunner
    from mini_llm_server.scheduler import ScheduledSeq


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes captured: 1, 2, 4, 8, then every multiple of 16, and max_batch itself."""
    return sorted({s for s in (1, 2, 4, 8, *range(16, max_batch, 16)) if s < max_batch} | {max_batch})


def token_buckets(max_tokens: int) -> list[int]:
    """The padded token counts of mixed steps captured: powers of two from 16 to 256, then every multiple of
    128, and max_tokens itself (padding adds at most half of a small step, a third of a large one; the
    graphs share one memory pool, so more sizes cost capture time, not memory)."""
    small = {16 * 2**i for i in range(5)}
    return sorted({s for s in (*small, *range(384, max_tokens, 128)) if s < max_tokens} | {max_tokens})


# excerpt: capture
@torch.no_grad()
def capture(device: torch.device, sizes: list[int], forward) -> tuple[dict, dict]:
    """One CUDA graph of forward(size) per size, and each graph's output buffer. Warmed up on a side
    stream first (compiles the Triton kernels, settles cuBLAS and the allocator); captured largest first,
    so the smaller graphs reuse its memory pool."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for size in sizes:
            forward(size)
    torch.cuda.current_stream().wait_stream(side)
    graphs, outputs, pool = {}, {}, None
    for size in reversed(sizes):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[size] = forward(size)
        pool, graphs[size] = graph.pool(), graph
    torch.cuda.synchronize(device)
    return graphs, outputs


# end-excerpt


class StagedInputs:
    """The static input buffers of a set of graphs, packed in one int64 device tensor with a host mirror
    (pinned on a GPU): a step writes its inputs into the mirror through numpy views, with no torch call per
    buffer, and moves them all with one asynchronous copy. The mirror keeps every value between steps, so
    a step writes only what changed. Before the mirror is written again the last copy must be done (a
    step that samples nothing does not wait for the GPU), hence the event."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], fill: dict[str, int], device: torch.device) -> None:
        sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        pinned = device.type == "cuda"
        self.device_buffer = torch.empty(sum(sizes.values()), dtype=torch.long, device=device)
        self.host_buffer = torch.empty(sum(sizes.values()), dtype=torch.long, pin_memory=pinned)
        self.on_device: dict[str, torch.Tensor] = {}
        self.host: dict[str, np.ndarray] = {}
        offset, flat = 0, self.host_buffer.numpy()
        for name, shape in shapes.items():
            self.on_device[name] = self.device_buffer[offset : offset + sizes[name]].view(shape)
            self.host[name] = flat[offset : offset + sizes[name]].reshape(shape)
            self.host[name][...] = fill.get(name, 0)
            offset += sizes[name]
        self.copied = torch.cuda.Event() if pinned else None
        self.upload()

    def writable(self) -> dict[str, np.ndarray]:
        """The host views, once the last upload has left them."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.host

    def upload(self) -> None:
        self.device_buffer.copy_(self.host_buffer, non_blocking=True)
        if self.copied is not None:
            self.copied.record()


class DecodeGraphs:
    def __init__(self, runner: ModelRunner, max_batch: int) -> None:
        self.runner, self.sizes = runner, graph_batch_sizes(max_batch)
        G, device = self.sizes[-1], runner.device
        self.scratch_slot = runner.scratch_block * runner.block_size
        # meta rows: tokens, feeds (step_inputs.py), positions, cache slots, sequence lengths. Stale entries of
        # earlier, larger batches stay behind in the tables: they are valid block ids, and a row reads only the
        # first ceil(length / block_size) of its entries, so they are never used.
        self.inputs = StagedInputs({"meta": (5, G), "tables": (G, runner.max_blocks_per_seq)},
                                   {"tables": runner.scratch_block}, device)  # fmt: skip
        self.inputs.host["meta"][1:] = [[-1], [0], [self.scratch_slot], [1]]  # padding rows: the scratch block
        self.inputs.upload()
        self.meta, self.tables = self.inputs.on_device["meta"], self.inputs.on_device["tables"]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # each graph's output buffer
        self.replays = 0
        if device.type == "cuda":
            self.graphs, self.logits = capture(device, self.sizes, self._forward)

    def fits(self, batch: list[ScheduledSeq]) -> bool:
        """A decode-only step (one new token per sequence) small enough for a captured size."""
        return len(batch) <= self.sizes[-1] and all(it.num_tokens == 1 and it.samples for it in batch)

    def _forward(self, G: int) -> torch.Tensor:
        r = self.runner
        tokens, feeds, positions, slots, lens = self.meta[:, :G]
        scale = r.model.cfg.hd**-0.5

        def attend(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            return paged_decode_attention_rope(qkv, r.cos, r.sin, positions, slots, r.k_cache[layer], r.v_cache[layer],
                                               self.tables[:G], lens, r.model.cfg.n_heads, scale)  # fmt: skip

        return r.model.lm_head(r.forward(tokens, attend, feeds))

    @torch.no_grad()
    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Logits (B, vocab) of a decode-only batch. On a GPU this is a view of the graph's output buffer,
        valid until the next step."""
        t0 = time.perf_counter()
        r, B = self.runner, len(batch)
        G = next(s for s in self.sizes if s >= B)
        inputs = step_inputs(batch, r.block_size, r.tokens_per_tile, r.block_tables)
        host = self.inputs.writable()
        host["meta"][:, :B] = inputs.tokens, inputs.feeds, inputs.positions, inputs.slots, inputs.ctx_lens
        host["meta"][:, B:G] = [[0], [-1], [0], [self.scratch_slot], [1]]  # padding: the scratch block only
        host["tables"][:B, : inputs.tables.shape[1]] = inputs.tables
        if self.runner.timeline is not None:
            self.runner.timeline.start("decode")
        self.inputs.upload()
        self.replays += 1
        self.runner.prepare_seconds += time.perf_counter() - t0
        if G in self.graphs:
            self.graphs[G].replay()
            return self.logits[G][:B]
        return self._forward(G)[:B]


class MixedGraphs:
    def __init__(self, runner: ModelRunner, max_tokens: int, max_seqs: int) -> None:
        self.runner, self.sizes, self.max_seqs = runner, token_buckets(max_tokens), max_seqs
        N, device, S = self.sizes[-1], runner.device, min(max_seqs, self.sizes[-1])
        self.scratch_slot = runner.scratch_block * runner.block_size
        self.per_tile = runner.tokens_per_tile
        # meta rows: tokens, feeds (step_inputs.py), positions, cache slots; seq_meta rows: each sequence's
        # first packed token, new tokens, context length; tiles rows: sequence, first token
        shapes = {"meta": (4, N), "seq_meta": (3, S), "tables": (S, runner.max_blocks_per_seq),
                  "tiles": (2, max_varlen_tiles(N, max_seqs, self.per_tile)), "ends": (S,)}  # fmt: skip
        self.inputs = StagedInputs(shapes, {"tables": runner.scratch_block}, device)
        self.meta, self.seq_meta, self.tables, self.tiles, self.ends = (self.inputs.on_device[k] for k in shapes)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.replays = self.last_tokens = self.last_size = 0
        if device.type == "cuda":
            self.graphs, self.logits = capture(device, self.sizes, self._forward)

    def fits(self, batch: list[ScheduledSeq]) -> bool:
        return len(batch) <= self.max_seqs and sum(it.num_tokens for it in batch) <= self.sizes[-1]

    def _limits(self, N: int) -> tuple[int, int]:
        """Sequences and tiles a step of N (padded) tokens can have."""
        S = min(self.max_seqs, N)
        return S, max_varlen_tiles(N, S, self.per_tile)

    def _forward(self, N: int) -> torch.Tensor:
        r = self.runner
        S, T = self._limits(N)
        tokens, feeds, positions, slots = self.meta[:, :N]
        q_starts, q_lens, ctx_lens = self.seq_meta[:, :S]
        scale = r.model.cfg.hd**-0.5

        def attend(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            q = r.rope_and_cache(layer, qkv, positions, slots)
            return paged_varlen_attention(q, r.k_cache[layer], r.v_cache[layer], self.tables[:S], q_starts, q_lens,
                                          ctx_lens, self.tiles[0, :T], self.tiles[1, :T], scale)  # fmt: skip

        return r.model.lm_head(r.forward(tokens, attend, feeds)[self.ends[:S]])

    @torch.no_grad()
    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Logits (sampling sequences, vocab) of a step with prompt chunks; on a GPU a view of the graph's
        output buffer, valid until the next step."""
        t0 = time.perf_counter()
        inputs = step_inputs(batch, self.runner.block_size, self.per_tile, self.runner.block_tables)
        n = len(inputs.tokens)
        N = next(s for s in self.sizes if s >= n)
        S, T = self._limits(N)
        host, B, width, tiles = self.inputs.writable(), len(batch), inputs.tables.shape[1], len(inputs.tile_seqs)
        host["meta"][:, :n] = inputs.tokens, inputs.feeds, inputs.positions, inputs.slots
        host["meta"][:, n:N] = [[0], [-1], [0], [self.scratch_slot]]  # padding: write the scratch block, in no tile
        host["seq_meta"][:, :B] = inputs.q_starts, inputs.q_lens, inputs.ctx_lens
        host["tables"][:B, :width] = inputs.tables
        host["tiles"][:, :tiles] = inputs.tile_seqs, inputs.tile_firsts
        host["tiles"][0, tiles:T] = -1
        # every row of ends is read: stale rows from a larger step could point past this step's tokens
        host["ends"][: len(inputs.ends)] = inputs.ends
        host["ends"][len(inputs.ends) : S] = 0
        if self.runner.timeline is not None:
            self.runner.timeline.start("mixed")
        self.inputs.upload()
        self.replays += 1
        self.last_tokens, self.last_size = n, N  # what step_costs.py replays again
        self.runner.prepare_seconds += time.perf_counter() - t0
        if N in self.graphs:
            self.graphs[N].replay()
            return self.logits[N][: len(inputs.ends)]
        return self._forward(N)[: len(inputs.ends)]
