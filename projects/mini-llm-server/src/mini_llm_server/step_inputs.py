"""A step's inputs as host lists, built from the scheduled sequences: per token (packed in batch order), per
sequence, and per tile of the varlen attention kernel. The eager forward and both kinds of CUDA graph take
their inputs from here."""

from __future__ import annotations

from dataclasses import dataclass

from mini_llm_server.paged_attention import varlen_tiles
from mini_llm_server.scheduler import ScheduledSeq


@dataclass(frozen=True, slots=True)
class StepInputs:
    tokens: list[int]  # 0 where the token is still on the device
    feeds: list[int]  # per token: the row of the runner's `sampled` holding it, or -1 (it is in `tokens`)
    positions: list[int]
    slots: list[int]  # each token's cache slot: block id * block_size + offset
    ends: list[int]  # the packed row of each sampling sequence's newest token
    q_starts: list[int]  # each sequence's first packed row
    q_lens: list[int]  # its new tokens this step
    ctx_lens: list[int]  # its positions with K/V once this step has written them
    tables: list[list[int]]  # block tables, padded with their last entry to one width
    tile_seqs: list[int]
    tile_firsts: list[int]


def input_tokens(item: ScheduledSeq) -> tuple[list[int], int]:
    """A scheduled sequence's input token ids, and the row of the runner's `sampled` its last one is to be
    read from (-1: none). Only the newest token can still be on the device; it stands as 0 in the ids."""
    seq, end = item.seq, item.start + item.num_tokens
    if end <= seq.num_known:
        return seq.token_slice(item.start, end), -1
    assert end == seq.num_known + 1 and seq.num_pending == 1, "only the newest token can be on the device"
    return seq.token_slice(item.start, end - 1) + [0], seq.sampled_row


def step_inputs(batch: list[ScheduledSeq], block_size: int, per_tile: int) -> StepInputs:
    tokens, feeds, positions, slots, ends, q_starts = [], [], [], [], [], []
    for it in batch:
        q_starts.append(len(tokens))
        table = it.seq.block_table
        ids, feed = input_tokens(it)
        tokens += ids
        feeds += [-1] * (len(ids) - 1) + [feed]
        span = range(it.start, it.start + it.num_tokens)
        positions += span
        slots += [table[p // block_size] * block_size + p % block_size for p in span]
        if it.samples:
            ends.append(len(tokens) - 1)
    q_lens = [it.num_tokens for it in batch]
    width = max(len(it.seq.block_table) for it in batch)
    tables = [it.seq.block_table + it.seq.block_table[-1:] * (width - len(it.seq.block_table)) for it in batch]
    tile_seqs, tile_firsts = varlen_tiles(q_lens, per_tile)
    ctx_lens = [it.start + it.num_tokens for it in batch]
    return StepInputs(tokens, feeds, positions, slots, ends, q_starts, q_lens, ctx_lens, tables, tile_seqs, tile_firsts)
