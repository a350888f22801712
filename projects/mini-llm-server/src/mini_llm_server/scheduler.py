"""Which sequences run this step, and how many of their tokens.

Continuous (iteration-level) batching: every step, running sequences get their next token first (decode
is latency-critical and costs one token of budget each), then the token budget left over admits waiting
sequences, a prompt that does not fit being computed in chunks across steps (chunked prefill) so a long
prompt never stalls everyone's decode. A sequence with more than one token to compute (a prompt chunk, a
recomputation) also draws on the prefill budget (max_prefill_tokens), so a step's prompt work stays bounded
however few streams decode. Waiting sequences are taken by (priority, arrival). When the KV
pool runs out, the lowest-priority, latest-arrived running sequence is preempted: its blocks are freed
and it goes back to the queue to be recomputed later (its prefix may still be cached).

Two baselines share the machinery: "static" forms a batch and runs it to completion before admitting
anything else, "fifo" runs one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from mini_llm_server.block_manager import BlockManager
from mini_llm_server.config import EngineConfig
from mini_llm_server.sequence import Sequence, Status


class ScheduledSeq(NamedTuple):  # not a frozen dataclass: its __init__ costs twice as much, per sequence per step
    seq: Sequence
    start: int  # first position computed this step
    num_tokens: int  # positions start .. start + num_tokens - 1
    samples: bool  # whether this step reaches the sequence's newest token, so its logits yield a new token


@dataclass(slots=True)
class Schedule:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write block copies to do first
    preempted: list[Sequence] = field(default_factory=list)
    timed_out: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager) -> None:
        self.config, self.blocks = config, blocks
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and give its blocks back at once (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence, schedule: Schedule) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status, seq.num_computed = Status.WAITING, 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(seq)
        schedule.preempted.append(seq)

    # excerpt: schedule
    def schedule(self, now: float) -> Schedule:
        schedule = Schedule()
        for seq in [s for s in self.waiting + self.running if s.deadline is not None and now > s.deadline]:
            self.remove(seq)
            schedule.timed_out.append(seq)
        budget = self.config.max_num_batched_tokens
        prefill = self.config.max_prefill_tokens or budget
        # 1. running sequences, most important first; preempt from the back of the line when blocks run out
        self.running.sort(key=lambda s: (s.priority, s.arrival))
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            total = seq.num_tokens
            left = total - seq.num_computed
            n = min(left, budget) if left == 1 else min(left, budget, prefill)
            if n == 0:  # a prompt chunk with no prefill budget left this step: it goes on at the next
                i += 1
                continue
            copies = self.blocks.reserve(seq, seq.num_computed + n)
            while copies is None and self.running[-1] is not seq:
                self._preempt(self.running[-1], schedule)
                copies = self.blocks.reserve(seq, seq.num_computed + n)
            if copies is None:  # it is the last one left: recompute it later
                self._preempt(seq, schedule)
                continue
            schedule.copies += copies
            schedule.seqs.append(ScheduledSeq(seq, seq.num_computed, n, seq.num_computed + n == total))
            budget -= n
            prefill -= n if left > 1 else 0
            i += 1
        # 2. waiting sequences, while budget, batch slots and blocks last
        if self.config.policy == "static" and self.running:
            return schedule  # the current batch runs to completion first
        limit = 1 if self.config.policy == "fifo" else self.config.max_num_seqs
        # While others decode, admit only when min_admission requests (or all that wait) can start at once:
        # a step that carries a prompt cannot replay a decode CUDA graph, so prompts are better batched
        # into few such steps than spread one per finishing sequence over many.
        want = min(self.config.min_admission, len(self.waiting))
        if self.config.policy == "continuous" and self.running and limit - len(self.running) < want:
            return schedule
        self.waiting.sort(key=lambda s: (s.priority, s.arrival))
        static = self.config.policy == "static"  # a static batch is formed whole; its prompts fill in over steps
        while (self.waiting and (min(budget, prefill) > 0 or static) and len(self.running) < limit
               and not schedule.preempted):  # fmt: skip
            seq = self.waiting[0]
            self.blocks.admit(seq)
            total = seq.num_tokens
            left = total - seq.num_computed
            n = min(left, budget) if left == 1 else min(left, budget, prefill)
            copies = self.blocks.reserve(seq, seq.num_computed + n)
            if copies is None:
                self.blocks.free(seq)
                seq.num_computed = 0
                break
            self.waiting.pop(0)
            seq.status = Status.RUNNING
            self.running.append(seq)
            schedule.copies += copies
            if n:
                schedule.seqs.append(ScheduledSeq(seq, seq.num_computed, n, seq.num_computed + n == total))
            budget -= n
            prefill -= n if left > 1 else 0
        return schedule

    # end-excerpt
