"""The paged KV cache's bookkeeping: which physical block holds which sequence's tokens.

The pool is `num_blocks` blocks of `block_size` token slots. A sequence owns a block table (logical block
i -> physical block), so its K/V need not be contiguous and memory is handed out one block at a time.
Blocks carry reference counts: with prefix caching, a full block is identified by the hash of its tokens
chained with its predecessor's hash, and a new sequence whose prompt starts with the same tokens maps the
same physical block instead of recomputing it. A block whose count drops to zero keeps its contents and
hash (it is "evictable") until the allocator needs it back, least recently freed first. Writing into a
block that another sequence also maps copies it first (copy-on-write). A sequence's table list only grows in place;
any other change (a copy, a free) puts a new list in its place, which block_tables.py relies on.

The model runner owns the tensors; this module only decides indices, so it is tested on its own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from mini_llm_server.sequence import Sequence


@dataclass(frozen=True, slots=True)
class BlockStats:
    num_blocks: int
    used: int  # referenced by at least one sequence
    evictable: int  # unreferenced but holding a cached prefix
    free: int  # unreferenced and empty


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one slot, got {num_blocks} x {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU order: first is evicted first
        self._block_of_hash: dict[int, int] = {}
        self._hash_of_block: dict[int, tuple[int, tuple[int, ...]]] = {}  # block -> (hash, its tokens)
        self._seq_hashes: dict[int, list[int]] = {}  # seq_id -> hashes of its full, committed blocks
        self.prefix_hits = 0  # blocks reused from the cache, since creation
        self.prefix_queries = 0  # full prompt blocks looked up

    # -- allocation ----------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: empty ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            h, _ = self._hash_of_block.pop(block)
            del self._block_of_hash[h]
        self.ref_count[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_count[block] -= 1
        if self.ref_count[block] < 0:
            raise AssertionError(f"block {block} freed more often than it was allocated")
        if self.ref_count[block] == 0:
            if block in self._hash_of_block:
                self._evictable[block] = None
            else:
                self._free.append(block)

    # excerpt: prefix-cache
    def admit(self, seq: Sequence) -> None:
        """Map the longest cached prefix of a waiting sequence's tokens into its (empty) block table, and set
        how many tokens are already computed. At least one token is always left to compute: its logits
        are what the next step samples from."""
        if seq.block_table:
            raise AssertionError(f"sequence {seq.seq_id} is admitted with blocks already mapped")
        hashes: list[int] = []
        tokens, bs = seq.tokens, self.block_size
        if self.enable_prefix_caching:
            parent = 0
            for i in range(len(tokens) // bs):
                chunk = tuple(tokens[i * bs : (i + 1) * bs])
                h = hash((parent, chunk))
                self.prefix_queries += 1
                block = self._block_of_hash.get(h)
                if block is None or self._hash_of_block[block][1] != chunk:
                    break  # a miss (or a hash collision, told apart by the stored tokens)
                if self.ref_count[block] == 0:
                    del self._evictable[block]
                self.ref_count[block] += 1
                seq.block_table.append(block)
                hashes.append(h)
                parent = h
                self.prefix_hits += 1
        self._seq_hashes[seq.seq_id] = hashes
        seq.num_computed = min(len(seq.block_table) * bs, len(tokens) - 1)

    # end-excerpt

    def reserve(self, seq: Sequence, num_tokens: int) -> list[tuple[int, int]] | None:
        """Make slots for `seq`'s first `num_tokens` tokens, about to be written from position
        seq.num_computed on. Returns the (source, destination) block copies the runner must do before
        writing (copy-on-write of shared blocks), or None, changing nothing, if the pool is short."""
        table, bs, ref = seq.block_table, self.block_size, self.ref_count  # every running sequence, every step
        last = len(table) - 1
        if seq.num_computed // bs == last and num_tokens <= len(table) * bs and ref[table[last]] == 1:
            return []  # the usual decode step: it writes into its own last block, which has room
        new = max(0, -(-num_tokens // bs) - len(table))
        shared = [i for i in range(seq.num_computed // bs, len(table)) if ref[table[i]] > 1]
        if new + len(shared) > self.num_free_blocks:
            return None
        copies = []
        if shared:  # a table changes only by appends in place (block_tables.py): a copy makes it a new list
            seq.block_table = table = list(table)
        for i in shared:
            src = table[i]
            dst = self._take()
            self._release(src)
            table[i] = dst
            copies.append((src, dst))
            del self._seq_hashes[seq.seq_id][i:]  # the copy is private until committed again
        for _ in range(new):
            table.append(self._take())
        return copies

    def commit(self, seq: Sequence) -> None:
        """After a step computed K/V up to seq.num_computed: publish newly full blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        hashes, bs = self._seq_hashes.setdefault(seq.seq_id, []), self.block_size
        for i in range(len(hashes), seq.num_computed // bs):  # usually none: most steps fill no block
            chunk = tuple(seq.token_slice(i * bs, (i + 1) * bs))
            h = hash((hashes[-1] if hashes else 0, chunk))
            hashes.append(h)
            block = seq.block_table[i]
            if h in self._block_of_hash or block in self._hash_of_block:
                continue  # an identical block is cached already (computed twice concurrently): keep the first
            self._block_of_hash[h] = block
            self._hash_of_block[block] = (h, chunk)

    def free(self, seq: Sequence) -> None:
        """Drop every block of `seq` (finish, abort or preemption); cached blocks stay reusable."""
        for block in reversed(seq.block_table):  # the tail is least likely to be shared: evict it first
            self._release(block)
        seq.block_table = []
        self._seq_hashes.pop(seq.seq_id, None)

    # -- accounting ----------------------------------------------------------------------------------------

    def stats(self) -> BlockStats:
        free, evictable = len(self._free), len(self._evictable)
        return BlockStats(self.num_blocks, self.num_blocks - free - evictable, evictable, free)

    def check_invariants(self, live: list[Sequence]) -> None:
        """Raise AssertionError if the books do not balance against the sequences holding blocks."""
        expected = [0] * self.num_blocks
        for seq in live:
            for block in seq.block_table:
                expected[block] += 1
        if expected != self.ref_count:
            bad = [b for b in range(self.num_blocks) if expected[b] != self.ref_count[b]]
            raise AssertionError(f"reference counts wrong for blocks {bad[:10]}")
        unreferenced = {b for b in range(self.num_blocks) if self.ref_count[b] == 0}
        free, evictable = set(self._free), set(self._evictable)
        if len(free) != len(self._free) or free & evictable or (free | evictable) != unreferenced:
            raise AssertionError("free list and evictable set do not partition the unreferenced blocks")
        if any(b not in self._hash_of_block for b in evictable):
            raise AssertionError("an evictable block has no cached hash")
        if {b for b, (h, _) in self._hash_of_block.items()} != set(self._block_of_hash.values()):
            raise AssertionError("hash maps disagree")
