"""The running sequences' block tables mirrored in one numpy array across steps (vLLM's persistent batch).

Every step needs the block table of each sequence it runs as a padded integer array. Converting the Python
lists afresh costs the host tens of nanoseconds per entry, every entry of every sequence every step (at 128
streams, the largest single cost of building a step's inputs), though a table changes only once every
block_size tokens. Here each live sequence owns a row; a step copies into it only the entries appended since
the last step, and gathers its rows with one index.

The BlockManager keeps a table append-only: any other change (a copy-on-write, a free) replaces the list
with a new one, which is how a row knows to be rewritten in full. A row's entries past its table's length
are stale but valid block ids: a reader looks only at the blocks its sequence's context length covers.
"""

from __future__ import annotations

import numpy as np

from mini_llm_server.sequence import Sequence


class BlockTables:
    def __init__(self, max_seqs: int, max_blocks: int, fill_block: int) -> None:
        self.array = np.full((max_seqs, max_blocks), fill_block, dtype=np.int64)
        self._row_of: dict[int, int] = {}  # seq_id -> its row
        self._mirrored: list[list[int] | None] = [None] * max_seqs  # the list each row holds a copy of
        self._lengths = [0] * max_seqs  # how much of it
        self._free = list(range(max_seqs - 1, -1, -1))

    def sync(self, seq: Sequence) -> int:
        """The row holding `seq`'s block table as it is now (a row is taken on first sight)."""
        row = self._row_of.get(seq.seq_id)
        if row is None:
            if not self._free:
                raise RuntimeError(f"block tables: all {len(self._mirrored)} rows are held; sequence {seq.seq_id} "
                                   "needs one (a finished or preempted sequence was not released)")  # fmt: skip
            row = self._row_of[seq.seq_id] = self._free.pop()  # a free row mirrors nothing (release)
        table, have = seq.block_table, self._lengths[row]
        if table is not self._mirrored[row]:
            self.array[row, : len(table)] = table
            self._mirrored[row], self._lengths[row] = table, len(table)
        elif len(table) > have:
            self.array[row, have : len(table)] = table[have:]
            self._lengths[row] = len(table)
        return row

    def release(self, seq: Sequence) -> None:
        """`seq` finished or was preempted: its row is free for another."""
        row = self._row_of.pop(seq.seq_id, None)
        if row is not None:
            self._mirrored[row] = None
            self._free.append(row)

    @property
    def num_held(self) -> int:
        return len(self._row_of)
