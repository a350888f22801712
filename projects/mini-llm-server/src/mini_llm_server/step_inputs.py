"""A step's inputs as numpy arrays, built from the scheduled sequences: per token (packed in batch order), per
sequence, and per tile of the varlen attention kernel. The eager forward and both kinds of CUDA graph take
their inputs from here.

This runs every step on the host while the GPU waits for it (at 128 streams it was the largest share of the
engine's host time), so the only Python loop is one pass over the sequences reading a few fields each; every
per-token and per-block value is computed by array operations over the whole step. Token ids are copied only
where the host has them: with overlapped greedy steps a decode token is still on the device, and the step
names the row of the runner's `sampled` buffer it is read from instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mini_llm_server.block_tables import BlockTables
from mini_llm_server.scheduler import ScheduledSeq


@dataclass(frozen=True, slots=True)
class StepInputs:
    tokens: np.ndarray  # per token; 0 where the token is still on the device
    feeds: np.ndarray  # per token: the row of the runner's `sampled` holding it, or -1 (it is in `tokens`)
    positions: np.ndarray
    slots: np.ndarray  # each token's cache slot: block id * block_size + offset
    ends: np.ndarray  # the packed row of each sampling sequence's newest token
    q_starts: np.ndarray  # per sequence: its first packed row
    q_lens: np.ndarray  # its new tokens this step
    ctx_lens: np.ndarray  # its positions with K/V once this step has written them
    tables: np.ndarray  # (sequences, the longest table's length) block tables; past a table's end, any valid block
    tile_seqs: np.ndarray  # per tile of the varlen kernel: its sequence
    tile_firsts: np.ndarray  # and its sequence's first new token in it


def _ragged_offsets(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of these lengths laid end to end: each element's segment, and its index inside it."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - (np.cumsum(lengths) - lengths)[owner]


def varlen_tiles(q_lens, per_tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The varlen kernel's tile table (paged_attention.py): for each tile, its sequence's index and its first
    new token."""
    seqs, index = _ragged_offsets(-(-np.asarray(q_lens, dtype=np.int64) // per_tile))
    return seqs, index * per_tile


def step_inputs(batch: list[ScheduledSeq], block_size: int, per_tile: int, block_tables: BlockTables) -> StepInputs:
    """The arrays of a step over `batch`, its block tables gathered from the rows of `block_tables`."""
    start_list, len_list, samples, rows = [], [], [], []
    host_parts: list[tuple[int, list[int]]] = []  # (packed row, ids) of the tokens the host has
    on_device: list[tuple[int, int]] = []  # (packed row, row of `sampled`) of those it has not read yet
    width = offset = 0
    for it in batch:
        seq, start, n = it.seq, it.start, it.num_tokens
        start_list.append(start)
        len_list.append(n)
        samples.append(it.samples)
        rows.append(block_tables.sync(seq))
        if len(seq.block_table) > width:
            width = len(seq.block_table)
        known = seq.num_known
        if start + n > known:
            assert start + n == known + 1 and seq.num_pending == 1, "only the newest token can be on the device"
            on_device.append((offset + n - 1, seq.sampled_row))
        if start < known:
            host_parts.append((offset, seq.token_slice(start, min(start + n, known))))
        offset += n
    starts, q_lens = np.array(start_list, np.int64), np.array(len_list, np.int64)
    seq_of, index = _ragged_offsets(q_lens)
    positions = starts[seq_of] + index
    table_array = block_tables.array[rows, :width]
    slots = table_array[seq_of, positions // block_size] * block_size + positions % block_size
    tokens, feeds = np.zeros(offset, np.int64), np.full(offset, -1, np.int64)
    for first, ids in host_parts:
        tokens[first : first + len(ids)] = ids
    if on_device:
        device_rows, sampled_rows = zip(*on_device, strict=True)
        feeds[list(device_rows)] = sampled_rows
    q_starts = np.cumsum(q_lens) - q_lens
    ends = (q_starts + q_lens - 1)[np.array(samples, bool)]
    tile_seqs, tile_firsts = varlen_tiles(q_lens, per_tile)
    return StepInputs(tokens, feeds, positions, slots, ends, q_starts, q_lens, starts + q_lens, table_array,
                      tile_seqs, tile_firsts)  # fmt: skip
