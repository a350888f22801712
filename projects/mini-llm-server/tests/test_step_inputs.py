"""step_inputs' arrays against the same values written out token by token, and the block tables' rows that
it gathers from."""

import random

import numpy as np
import pytest
from mini_llm_server.block_tables import BlockTables
from mini_llm_server.scheduler import ScheduledSeq
from mini_llm_server.sequence import Sequence
from mini_llm_server.step_inputs import step_inputs
from tinyllm.sampling import SamplingParams

BLOCK, PER_TILE, FILL = 4, 3, 999


def _random_item(rng: random.Random, seq_id: int) -> ScheduledSeq:
    """A prompt chunk (maybe its last), or a decode token whose input is read back already or still on the
    device; its block table long enough for the step and a little more."""
    prompt = [rng.randrange(100) for _ in range(rng.randint(1, 20))]
    seq = Sequence(seq_id=seq_id, prompt=prompt, params=SamplingParams(), arrival=0.0)
    if rng.random() < 0.5:  # a prompt chunk
        start = rng.randrange(len(prompt))
        n = rng.randint(1, len(prompt) - start)
    else:  # decode: its newest token is the input
        seq.output = [rng.randrange(100) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.5:
            seq.num_pending, seq.sampled_row = 1, rng.randrange(16)
        start, n = seq.num_tokens - 1, 1
    seq.block_table = rng.sample(range(200), -(-(start + n) // BLOCK) + rng.randint(0, 2))
    return ScheduledSeq(seq, start, n, start + n == seq.num_tokens)


@pytest.mark.parametrize("seed", range(20))
def test_step_inputs_match_token_by_token(seed):
    rng = random.Random(seed)
    batch = [_random_item(rng, i) for i in range(rng.randint(1, 9))]
    got = step_inputs(batch, BLOCK, PER_TILE, BlockTables(16, 16, FILL))
    tokens, feeds, positions, slots, ends, q_starts, tiles = [], [], [], [], [], [], []
    width = max(len(it.seq.block_table) for it in batch)
    for n, it in enumerate(batch):
        seq, q_starts = it.seq, [*q_starts, len(tokens)]
        for p in range(it.start, it.start + it.num_tokens):
            on_device = p >= seq.num_known
            tokens.append(0 if on_device else seq.tokens[p])
            feeds.append(seq.sampled_row if on_device else -1)
            positions.append(p)
            slots.append(seq.block_table[p // BLOCK] * BLOCK + p % BLOCK)
        if it.samples:
            ends.append(len(tokens) - 1)
        tiles += [(n, first) for first in range(0, it.num_tokens, PER_TILE)]
    expected = {
        "tokens": tokens, "feeds": feeds, "positions": positions, "slots": slots, "ends": ends,
        "q_starts": q_starts, "q_lens": [it.num_tokens for it in batch],
        "ctx_lens": [it.start + it.num_tokens for it in batch],
        "tables": [it.seq.block_table + [FILL] * (width - len(it.seq.block_table)) for it in batch],
        "tile_seqs": [s for s, _ in tiles], "tile_firsts": [f for _, f in tiles],
    }  # fmt: skip
    for name, want in expected.items():
        np.testing.assert_array_equal(getattr(got, name), np.array(want, dtype=np.int64).reshape(-1, width)
                                      if name == "tables" else want, err_msg=name)  # fmt: skip


def test_only_the_newest_token_may_be_on_the_device():
    seq = Sequence(seq_id=0, prompt=[1, 2, 3], params=SamplingParams(), arrival=0.0, block_table=[0])
    seq.output, seq.num_pending = [4], 2  # two tokens not read back: a step cannot take both
    with pytest.raises(AssertionError, match="only the newest token"):
        step_inputs([ScheduledSeq(seq, 3, 3, True)], BLOCK, PER_TILE, BlockTables(1, 4, FILL))


def test_block_table_rows_follow_appends_copies_and_frees():
    tables = BlockTables(2, 6, FILL)
    a, b = (Sequence(seq_id=i, prompt=[1], params=SamplingParams(), arrival=0.0) for i in range(2))
    a.block_table, b.block_table = [3], [5, 6]
    ra, rb = tables.sync(a), tables.sync(b)
    assert ra != rb and tables.array[ra, :1].tolist() == [3] and tables.array[rb, :2].tolist() == [5, 6]
    a.block_table.append(4)  # an append in place: only the new entry is copied
    assert tables.sync(a) == ra and tables.array[ra, :2].tolist() == [3, 4]
    a.block_table = [7, 4]  # copy-on-write replaces the list
    assert tables.array[tables.sync(a), :2].tolist() == [7, 4]
    with pytest.raises(RuntimeError, match="all 2 rows are held"):
        tables.sync(Sequence(seq_id=2, prompt=[1], params=SamplingParams(), arrival=0.0))
    tables.release(a)
    c = Sequence(seq_id=3, prompt=[1], params=SamplingParams(), arrival=0.0, block_table=[9])
    assert tables.sync(c) == ra and tables.array[ra, :1].tolist() == [9] and tables.num_held == 2
