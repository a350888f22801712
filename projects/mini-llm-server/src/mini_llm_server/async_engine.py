"""Streaming on top of the engine: each request is an async iterator of its outputs, one background task
drives engine steps while any request is unfinished, and a consumer that stops listening (a client that
disconnected, a cancelled task) aborts its request, which frees its blocks before the next step.

The engine runs on one worker thread, never on the event loop: a step blocks for the whole GPU forward
(the sampled tokens are copied back to the host), and on the loop that time would be taken from every
stream's HTTP writes. Every engine call (step, add, abort, metrics) goes through that one thread, so the
engine is never touched by two threads at once and needs no locks; the loop only awaits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tinyllm.sampling import SamplingParams

from mini_llm_server.engine import LLMEngine, RequestOutput


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._queues: dict[int, asyncio.Queue[RequestOutput]] = {}
        self._loop_task: asyncio.Task | None = None
        self._added = 0  # bumped after each add: tells the driver its idle check may be stale
        self._arriving: list[int] = []  # prompt lengths of adds queued behind a step, not yet in the engine
        self._closed = False

    async def call(self, fn: Callable, *args, **kwargs):
        """Run `fn(*args, **kwargs)` on the engine's thread, after any step in flight."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, lambda: fn(*args, **kwargs))

    def _step_if_busy(self) -> list[RequestOutput] | None:
        if not self.engine.has_unfinished():
            return None
        # the streams read these while the next step runs, which appends to each sequence's output list
        return [out._replace(output=list(out.output)) for out in self.engine.step()]

    async def _drive(self) -> None:
        while not self._closed:
            seen = self._added
            outputs = await self.call(self._step_if_busy)
            if outputs is None:
                if self._added == seen:  # idle, and nothing was added while the check ran: stop
                    return
                continue
            for out in outputs:
                queue = self._queues.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._drive())

    def close(self) -> None:
        """After the server has stopped: end the engine's thread once its queued calls are done, then release
        the engine's device memory (FastAPI caches endpoint functions, and through them the engine, for the
        life of the process; a process that serves several engines in turn needs this)."""
        self._closed = True
        self._worker.shutdown(wait=True)
        self.engine.close()

    def waiting_lengths(self) -> list[int]:
        """Token counts of the requests waiting to run: the engine's queue and the adds on their way to it
        (counted twice for the moment between its add and its stream's resuming: admission errs strict)."""
        waiting = list(self.engine.scheduler.waiting)  # a snapshot: the engine's thread may be mid-step
        return [s.num_tokens for s in waiting] + self._arriving

    @property
    def block_size(self) -> int:
        return self.engine.config.block_size

    def num_free_blocks(self) -> int:
        return self.engine.blocks.num_free_blocks

    async def metrics(self) -> dict:
        return await self.call(self.engine.metrics)

    async def stream(
        self, prompt: Sequence[int], params: SamplingParams, *, priority: int = 0, timeout: float | None = None,
        stop: Sequence[str] = (), detokenize: Callable[[list[int]], str] | None = None,
    ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        """Outputs of one request as they are produced; the last one has finished=True."""
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._arriving.append(len(prompt))  # before the first await: the next admission check sees it
        try:
            request_id = await self.call(self.engine.add_request, prompt, params, priority=priority,
                                         timeout=timeout, stop=stop, detokenize=detokenize)  # fmt: skip
        finally:
            self._arriving.remove(len(prompt))
        # registered before the driver can step again: the loop runs this line before any other callback
        self._queues[request_id] = queue
        self._added += 1
        self._ensure_running()
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            self._queues.pop(request_id, None)
            if not finished and not self._closed:  # once closed, the engine is gone and so is the request
                # queued behind any step in flight, so it lands before the next one; not awaited, since a
                # generator being closed by the garbage collector cannot wait
                self._worker.submit(self.engine.abort, request_id)
