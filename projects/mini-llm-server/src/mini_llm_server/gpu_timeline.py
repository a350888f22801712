"""GpuTimeline: the engine's steps on the GPU's clock, kept as running sums while it serves
(`EngineConfig.gpu_timeline`).

The engine's own step times are host intervals, from one wait for the GPU to the next; they cannot say
whether the GPU was working all that time or waiting for the host to queue the next step. Two CUDA events
per step on the compute stream can: one as the step's first GPU work is queued (its inputs' upload: the
host has built them), one after its sampled tokens' copy. A step is busy from start to end; the GPU is idle
from the previous step's end to its start, waiting for the host. A step that samples nothing (a prompt
chunk short of its end) has no end and breaks the chain, as does an engine with nothing to run: the next
step's idle time is then not known, and not counted. Steps are folded into the sums once their end has
passed (`Event.query`), so the host never waits for them; a summary may wait.

Cost: two event records per step and a query for each step folded (host time, not measured apart).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch


class GpuTimeline:
    def __init__(self, event: Callable[[], object] | None = None) -> None:
        self.event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self._open: tuple[str, object] | None = None  # the step launched last, until it samples
        self._last_end = None  # the end of the last step of an unbroken chain
        self._pending: deque[tuple[str, object, object, object]] = deque()  # (kind, start, end, previous end)
        self.reset()

    def _record(self):
        e = self.event()
        e.record()
        return e

    def start(self, kind: str) -> None:
        """A step of `kind` is about to queue its first GPU work."""
        if self._open is not None:  # the step before sampled nothing: its end, and so this step's idle, unknown
            self._last_end = None
        self._open = (kind, self._record())

    def end(self) -> None:
        """The open step's sampled tokens are queued to be copied out: its last GPU work."""
        if self._open is None:
            return
        kind, start = self._open
        end = self._record()
        self._pending.append((kind, start, end, self._last_end))
        self._open, self._last_end = None, end
        self.fold()

    def pause(self) -> None:
        """The engine has nothing to run: the GPU's wait until its next step is not the host's doing."""
        self._open = self._last_end = None

    def fold(self, wait: bool = False) -> None:
        """Add the steps whose end has passed on the GPU (all of them, waiting, with `wait`) to the sums."""
        if wait and self._pending:  # the host waits for the GPU here: the next step's idle is the wait's doing
            self._pending[-1][2].synchronize()
            self._last_end = None
        while self._pending:
            kind, start, end, previous = self._pending[0]
            if not end.query():
                return
            self._pending.popleft()
            sums = self._sums.setdefault(kind, {"steps": 0, "busy_ms": 0.0, "chained": 0, "idle_ms": 0.0,
                                                "idle_max_ms": 0.0})  # fmt: skip
            sums["steps"] += 1
            sums["busy_ms"] += start.elapsed_time(end)
            if previous is not None:
                idle = previous.elapsed_time(start)
                sums["chained"] += 1
                sums["idle_ms"] += idle
                sums["idle_max_ms"] = max(sums["idle_max_ms"], idle)

    def reset(self) -> None:
        """Start the sums over; the steps already launched count toward the old ones (waited for)."""
        if self._pending:
            self.fold(wait=True)
        self._sums: dict[str, dict[str, float]] = {}

    def summary(self, wait: bool = False) -> dict[str, dict[str, float]]:
        """Per kind of step: steps, mean GPU busy ms, mean idle ms before a step (over the steps whose
        previous step's end is known), the longest idle, and the busy and idle totals."""
        self.fold(wait)
        return {kind: {"steps": s["steps"], "gpu_busy_ms": s["busy_ms"] / s["steps"],
                       "gpu_idle_before_ms": s["idle_ms"] / s["chained"] if s["chained"] else 0.0,
                       "gpu_idle_max_ms": s["idle_max_ms"], "gpu_busy_total_ms": s["busy_ms"],
                       "gpu_idle_total_ms": s["idle_ms"]}
                for kind, s in self._sums.items()}  # fmt: skip
