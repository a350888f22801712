"""Streaming on top of the engine: each request is an async iterator of its outputs, one background task
steps the engine while any request is unfinished, and a consumer that stops listening (a client that
disconnected, a cancelled task) aborts its request, which frees its blocks before the next step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from tinyllm.sampling import SamplingParams

from mini_llm_server.engine import LLMEngine, RequestOutput


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._queues: dict[int, asyncio.Queue[RequestOutput]] = {}
        self._loop_task: asyncio.Task | None = None

    async def _run(self) -> None:
        while self.engine.has_unfinished():
            for out in self.engine.step():
                queue = self._queues.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)
            await asyncio.sleep(0)  # let consumers and new requests in between steps

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stream(
        self, prompt: Sequence[int], params: SamplingParams, *, priority: int = 0, timeout: float | None = None,
        stop: Sequence[str] = (), detokenize: Callable[[list[int]], str] | None = None,
    ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        """Outputs of one request as they are produced; the last one has finished=True."""
        request_id = self.engine.add_request(prompt, params, priority=priority, timeout=timeout, stop=stop,
                                             detokenize=detokenize)  # fmt: skip
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._queues[request_id] = queue
        self._ensure_running()
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)
