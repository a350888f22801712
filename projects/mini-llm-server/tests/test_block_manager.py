"""The block manager under long random workloads (hypothesis): admissions with shared prefixes, growth,
frees, aborts and preemptions; after every operation no block is leaked or freed twice and every
reference count equals the number of block tables that map the block."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mini_llm_server.block_manager import BlockManager
from mini_llm_server.sequence import Sequence
from tinyllm.sampling import SamplingParams

PARAMS = SamplingParams(max_new_tokens=8)
op = st.tuples(st.sampled_from(["add", "grow", "free"]), st.integers(0, 10**6), st.integers(1, 12))


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, min_size=1, max_size=120), num_blocks=st.integers(2, 24), block_size=st.integers(1, 4),
       caching=st.booleans())  # fmt: skip
def test_books_balance_under_random_workloads(ops, num_blocks, block_size, caching):
    bm = BlockManager(num_blocks, block_size, caching)
    live: list[Sequence] = []
    prefixes = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 1, 2, 3, 4], [5, 6, 7, 8, 1, 2, 3, 4]]
    for i, (kind, pick, n) in enumerate(ops):
        if kind == "add":
            prompt = prefixes[pick % 3][: 1 + pick % 8] + [pick % 13] * (n % 5)
            seq = Sequence(seq_id=i, prompt=prompt, params=PARAMS, arrival=float(i))
            bm.admit(seq)
            copies = bm.reserve(seq, seq.num_tokens)
            if copies is None:
                bm.free(seq)  # refused: must leave nothing behind
            else:
                seq.num_computed = seq.num_tokens
                bm.commit(seq)
                live.append(seq)
        elif kind == "grow" and live:
            seq = live[pick % len(live)]
            seq.output += [pick % 7] * n
            if bm.reserve(seq, seq.num_tokens) is not None:
                seq.num_computed = seq.num_tokens
                bm.commit(seq)
            else:  # preempted: blocks back, recomputed later
                bm.free(seq)
                live.remove(seq)
        elif kind == "free" and live:
            bm.free(live.pop(pick % len(live)))
        bm.check_invariants(live)
        stats = bm.stats()
        assert stats.used + stats.evictable + stats.free == num_blocks
        for seq in live:
            assert len(seq.block_table) * block_size >= seq.num_computed
    for seq in live:
        bm.free(seq)
    bm.check_invariants([])
    assert bm.stats().used == 0


def test_a_shared_block_is_copied_before_it_is_written():
    bm = BlockManager(8, 4)
    a = Sequence(seq_id=0, prompt=[1, 2, 3, 4, 5, 6, 7, 8], params=PARAMS, arrival=0.0)
    bm.admit(a)
    assert bm.reserve(a, 8) == [] and a.num_computed == 0
    a.num_computed = 8
    bm.commit(a)
    b = Sequence(seq_id=1, prompt=[1, 2, 3, 4, 5, 6, 7, 8], params=PARAMS, arrival=1.0)
    bm.admit(b)
    assert b.block_table == a.block_table and b.num_computed == 7  # the last token is recomputed for logits
    copies = bm.reserve(b, 8)
    assert copies == [(a.block_table[1], b.block_table[1])] and b.block_table[1] != a.block_table[1]
    bm.check_invariants([a, b])


def test_evictable_blocks_are_reused_least_recently_freed_first():
    bm = BlockManager(4, 2)
    seqs = []
    for i, prompt in enumerate(([1, 2, 3], [4, 5, 6])):
        s = Sequence(seq_id=i, prompt=prompt, params=PARAMS, arrival=float(i))
        bm.admit(s)
        bm.reserve(s, 3)
        s.num_computed = 3
        bm.commit(s)
        seqs.append(s)
    first_cached, second_cached = seqs[0].block_table[0], seqs[1].block_table[0]
    for s in seqs:
        bm.free(s)
    assert bm.stats().evictable == 2 and bm.stats().free == 2
    big = Sequence(seq_id=9, prompt=[7] * 5, params=PARAMS, arrival=9.0)
    bm.admit(big)
    bm.reserve(big, 5)  # 3 blocks: the 2 empty ones, then the cached block freed first
    assert first_cached in big.block_table and second_cached not in big.block_table
    assert bm.stats().evictable == 1
    bm.check_invariants([big])


@given(st.integers(0, 6), st.integers(0, 6), st.data())
def test_token_slice_is_the_slice_of_prompt_plus_output(n_prompt, n_output, data):
    seq = Sequence(seq_id=0, prompt=list(range(n_prompt)), params=PARAMS, arrival=0.0)
    seq.output = list(range(100, 100 + n_output))
    start = data.draw(st.integers(0, seq.num_tokens))
    end = data.draw(st.integers(start, seq.num_tokens))
    assert seq.token_slice(start, end) == seq.tokens[start:end]
