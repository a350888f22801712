"""One request's state inside the engine: its tokens, how many of them have KV in the cache, its block
table, and why it finished."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tinyllm.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued; holds no blocks (new, or preempted and to be recomputed)
    RUNNING = "running"  # in the batch; holds blocks
    FINISHED = "finished"


@dataclass(eq=False, kw_only=True)
class Sequence:
    seq_id: int
    prompt: list[int]
    params: SamplingParams
    arrival: float
    priority: int = 0  # lower runs first
    deadline: float | None = None  # engine clock time after which the request is ended with "timeout"
    output: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # leading tokens whose K/V are in the cache
    finish_reason: str | None = None  # "stop", "length", "context", "abort", "timeout"
    generator: torch.Generator | None = None
    num_preemptions: int = 0
    stop_strings: tuple[str, ...] = ()  # text that ends the request once the output contains it
    detokenize: Callable[[list[int]], str] | None = None  # for stop_strings
    # Tokens sampled on the device but not read back yet (the engine reads a step's greedy tokens while the
    # GPU runs the next step): they count as tokens of the sequence, but are not in `output`. The newest one
    # is row `sampled_row` of the model runner's `sampled` buffer, where the next step's forward reads it.
    num_pending: int = 0
    sampled_row: int = -1
    last_token_at: float = 0.0  # perf_counter time the host read the newest output token

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def token_slice(self, start: int, end: int) -> list[int]:
        """tokens[start:end] without building the whole prompt + output list (a hot path: every step)."""
        P = len(self.prompt)
        if end <= P:
            return self.prompt[start:end]
        if start >= P:
            return self.output[start - P : end - P]
        return self.prompt[start:] + self.output[: end - P]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output) + self.num_pending

    @property
    def num_known(self) -> int:
        """Tokens whose ids the host has: the prompt and the output read so far."""
        return len(self.prompt) + len(self.output)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
