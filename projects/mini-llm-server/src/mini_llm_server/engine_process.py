"""The engine in a process of its own, behind AsyncEngine's interface (vLLM's EngineCore split).

In one process the HTTP side (parsing, tokenizing, writing a server-sent event per token) and the engine
(scheduling, preparing inputs, sampling) take turns on one interpreter lock, so a step waits behind the
streams' writes and the writes behind the step. Here the engine process builds the model from a picklable
factory, and a duplex pipe per client carries commands to it (add, abort, metrics, close) and, back, each
step's new tokens with a snapshot of the waiting queue and free blocks for admission control. A client is
an EngineClient: the process that started the engine (EngineProcess), or each of several API server
processes (api_servers), so that no one interpreter writes every stream's events. A client reads its pipe
with a thread of its own, or (an API server process) on its event loop, which then wakes once per step's
tokens rather than being handed them by a thread.

Ids are the client's: an add is acknowledged (or refused with the engine's ValueError) before that
request's first output, since a pipe keeps order. Only new tokens cross the pipe; the client keeps each
request's output so far, and a stream takes every token that has arrived since it last looked: one that
fell behind the engine (its HTTP side busy with other streams) catches up in one output, one server-sent
event, instead of paying the per-event cost once per step it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams
from tinyllm.tokenizer import Tokenizer

from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine, RequestOutput
from mini_llm_server.heap import freeze_startup_heap

ModelFactory = Callable[[], tuple[Transformer, Tokenizer | None]]
# A client that reads its pipe with a thread (EngineProcess; an API server process reads on its event loop):
# the thread needs the interpreter lock to unpickle a step's outputs; while the event loop is busy writing
# streams (CPU-bound, its socket writes do not release the lock) the thread waits for the interpreter's
# switch interval, 5 ms by default, which is three decode steps of every stream's tokens.
PIPE_SWITCH_INTERVAL_S = 0.0005


def copy_of(model: Transformer, tokenizer: Tokenizer | None) -> tuple[Transformer, Tokenizer | None]:
    """A factory (with functools.partial) for a model this process already holds: it is pickled across, so
    for small models (tests, CPU); a large one is better built by the engine process itself."""
    return model, tokenizer


class _Outputs:
    """One request's tokens on the parent side, how many its stream has taken, and the stream's waiter."""

    __slots__ = ("rid", "tokens", "taken", "finished", "reason", "read_at", "waiter")

    def __init__(self, rid: int) -> None:
        self.rid, self.tokens, self.taken = rid, [], 0
        self.finished, self.reason, self.read_at = False, None, 0.0
        self.waiter: asyncio.Future | None = None

    def add(self, new: list[int], finished: bool, reason: str | None, read_at: float) -> None:  # on the loop
        if new:  # the newest token's: a stream that takes several at once is as late as its newest
            self.tokens.extend(new)
            self.read_at = read_at
        if finished:
            self.finished, self.reason = True, reason
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> RequestOutput:
        """Every token since the last call (waiting for one), or the end."""
        while self.taken == len(self.tokens) and not self.finished:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        new, self.taken = self.tokens[self.taken :], len(self.tokens)
        return RequestOutput(self.rid, new, list(self.tokens), self.finished, self.reason, self.read_at)


def _queue_state(engine: LLMEngine) -> dict:
    return {"waiting": [s.num_tokens for s in engine.scheduler.waiting], "free": engine.blocks.num_free_blocks}


class _EngineLoop:
    """The engine process's side: its clients' pipes and their requests, known by (client, the client's id)."""

    def __init__(self, conns: list[Connection], factory: ModelFactory, config: EngineConfig) -> None:
        model, self.tok = factory()
        self.engine = LLMEngine(model, config)
        freeze_startup_heap()  # before "ready": the collection it starts with delays no request
        self.clients = dict(enumerate(conns))
        self.index = {id(conn): c for c, conn in self.clients.items()}
        self.engine_id: dict[tuple[int, int], int] = {}
        self.owner: dict[int, tuple[int, int]] = {}  # the engine's id -> (client, id)
        state = _queue_state(self.engine)
        self.sent_state = dict.fromkeys(self.clients, state)
        # the loop's time while there is work: its clients' commands, the engine's step (its wait for the GPU
        # inside, as gpu_wait_seconds), and handing each client its tokens
        self.loop_seconds = dict.fromkeys(("commands", "step", "fan_out"), 0.0)
        for c in range(len(conns)):
            self.send(c, ("ready", state))

    def send(self, c: int, msg: tuple) -> None:
        try:
            self.clients[c].send(msg)
        except (BrokenPipeError, ConnectionResetError):  # it died since its last command: its end is closed
            self.drop(c)

    def drop(self, c: int) -> None:
        """A client left (said close, or its process died): its requests end and free their blocks."""
        if c not in self.clients:  # already gone
            return
        for key in [k for k in self.engine_id if k[0] == c]:
            eid = self.engine_id.pop(key)
            del self.owner[eid]
            self.engine.abort(eid)
        self.clients.pop(c).close()
        del self.sent_state[c]

    def command(self, c: int, msg: tuple) -> None:
        engine = self.engine
        if msg[0] == "add":
            _, rid, prompt, params, priority, timeout, stop = msg
            detokenize = self.tok.decode if stop and self.tok is not None else None
            try:
                eid = engine.add_request(prompt, params, priority=priority, timeout=timeout, stop=stop,
                                         detokenize=detokenize)  # fmt: skip
            except ValueError as e:
                self.send(c, ("refused", rid, str(e)))
                return
            self.engine_id[(c, rid)], self.owner[eid] = eid, (c, rid)
            self.sent_state[c] = state = _queue_state(engine)
            self.send(c, ("added", rid, state))
        elif msg[0] == "abort":
            eid = self.engine_id.pop((c, msg[1]), None)
            if eid is not None:
                del self.owner[eid]
                engine.abort(eid)
        elif msg[0] == "metrics":  # and what this process keeps out of the collector's way (heap.py)
            loop = {f"loop_{k}_seconds": v for k, v in self.loop_seconds.items()}
            self.send(c, ("metrics", msg[1], {**engine.metrics(), **loop, "gc_frozen_objects": gc.get_freeze_count()}))
        elif msg[0] == "close":
            self.drop(c)

    # excerpt: fan-out
    def step(self) -> None:
        t0 = time.perf_counter()
        outputs = self.engine.step()
        t1 = time.perf_counter()
        batches: dict[int, list] = {c: [] for c in self.clients}
        for out in outputs:
            key = self.owner.get(out.request_id)
            if key is None:  # aborted while the step ran
                continue
            if out.finished:
                del self.owner[out.request_id], self.engine_id[key]
            batches[key[0]].append((key[1], out.new_tokens, out.finished, out.finish_reason, out.read_at))
        state = _queue_state(self.engine)
        for c, batch in batches.items():
            # every client's admission control reads this state: one with no stream of its own still needs
            # to see the queue shrink, or it would go on refusing requests on a full queue long gone
            if batch or state != self.sent_state[c]:
                self.sent_state[c] = state
                self.send(c, ("outputs", batch, state))
        self.loop_seconds["step"] += t1 - t0
        self.loop_seconds["fan_out"] += time.perf_counter() - t1

    # end-excerpt

    def run(self) -> None:
        """Take every queued command, then step while there is work; end with the last client."""
        while self.clients:
            busy = self.engine.has_unfinished()
            wait = 0 if busy else None  # idle: block until a command comes
            t0 = time.perf_counter()
            while self.clients and (ready := connection.wait(list(self.clients.values()), wait)):
                wait = 0
                for conn in ready:
                    c = self.index[id(conn)]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        self.drop(c)
                    else:
                        self.command(c, msg)
            if busy:  # an idle loop's blocking wait is not work
                self.loop_seconds["commands"] += time.perf_counter() - t0
            if self.engine.has_unfinished():
                self.step()
        self.engine.close()


def _engine_main(conns: list[Connection], factory: ModelFactory, config: EngineConfig) -> None:
    # Ctrl-C in a terminal reaches every process of the group: the engine ends when its clients have left,
    # after they drained their streams, not on the signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _EngineLoop(conns, factory, config).run()


def start_engine(factory: ModelFactory, config: EngineConfig, clients: int = 1) -> tuple[BaseProcess, list[Connection]]:
    """The engine process, building its model with `factory`, and one pipe end per client (an EngineClient
    each, in this process or handed to others). It ends when every client has closed or gone."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: CUDA cannot be forked
    ends = [ctx.Pipe() for _ in range(clients)]
    proc = ctx.Process(target=_engine_main, args=([child for _, child in ends], factory, config), daemon=True)
    proc.start()
    for _, child in ends:
        child.close()  # the child holds its own copies: a client's pipe breaks when either side goes
    return proc, [parent for parent, _ in ends]


class EngineClient:
    """AsyncEngine's interface (stream, metrics, waiting_lengths, block_size, num_free_blocks, close) over one
    pipe to an engine process: in the process that started it (EngineProcess) or in an API server process of
    its own (api_servers). Construct it outside a running event loop's hot path: it waits for the engine to
    have built its model."""

    def __init__(self, conn: Connection, block_size: int, *, on_loop: bool = False) -> None:
        """on_loop: the engine's messages are read by the serving event loop itself, from `attach()` (to be
        called on it before anything else); otherwise by a thread of the client's own, from now."""
        self._conn = conn
        kind, self._state = self._conn.recv()  # EOFError here: the engine died building its model
        assert kind == "ready", kind
        self.block_size = block_size
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, _Outputs] = {}
        self._replies: dict[int, asyncio.Future] = {}  # pending adds and metrics, by id
        self._arriving: list[int] = []
        self._closed, self._on_loop = False, on_loop
        if on_loop:
            return
        # process-wide: this process's other threads switch as often (a documented cost of serving this way)
        sys.setswitchinterval(min(sys.getswitchinterval(), PIPE_SWITCH_INTERVAL_S))
        self._reader = threading.Thread(target=self._read, name="engine-pipe", daemon=True)
        self._reader.start()

    def attach(self) -> None:
        """Read the engine's messages on the running event loop from now on (an on_loop client: an API server
        process, whose loop lives as long as it does). A step's tokens then reach their streams in one wake-up
        of the loop. Through a reader thread they took two hand-overs, each up to the interpreter's switch
        interval when the loop held the lock: the thread's wake-up, then its call into the loop (a probe on the
        H200 at 32 streams timed each at a p95 of 0.3 ms)."""
        assert self._on_loop and self._loop is None, "attach: only once, and only for an on_loop client"
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._read_ready)

    # -- the pipe ----------------------------------------------------------------------------------------

    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _read(self) -> None:  # the reader thread
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self._engine_gone()
                return
            self._handle(msg)

    def _read_ready(self) -> None:  # on the loop, when the pipe is readable: every message there is
        try:
            while self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):
            with contextlib.suppress(OSError):  # closed meanwhile: nothing to stop reading
                self._loop.remove_reader(self._conn.fileno())
            self._engine_gone()

    def _engine_gone(self) -> None:
        if self._closed:
            return
        # the engine died: end every request and every pending question now
        for rid in list(self._replies):
            self._reply(rid, "exited", "the engine process exited")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fail_streams)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "outputs":
            self._state = msg[2]
            if self._on_loop:
                self._deliver(msg[1])
            elif self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver, msg[1])
            return
        if kind == "added":
            self._state = msg[2]
        self._reply(msg[1], kind, msg[2])

    def _reply(self, rid: int, kind: str, value) -> None:
        future = self._replies.pop(rid, None)
        if future is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits for it any more
                future.get_loop().call_soon_threadsafe(self._answer, future, kind, value)  # on the loop that asked

    @staticmethod
    def _answer(future: asyncio.Future, kind: str, value) -> None:
        if future.done():
            return
        if kind == "refused":
            future.set_exception(ValueError(value))
        elif kind == "exited":
            future.set_exception(RuntimeError(value))
        else:
            future.set_result(value)

    def _deliver(self, batch: list) -> None:  # on the streams' event loop
        for rid, new, finished, reason, read_at in batch:
            outputs = self._streams.get(rid)
            if outputs is not None:
                outputs.add(new, finished, reason, read_at)

    def _fail_streams(self) -> None:  # on the streams' event loop
        for outputs in self._streams.values():
            outputs.add([], True, "engine-exited", 0.0)

    async def _ask(self, msg_for: Callable[[int], tuple]):
        future = asyncio.get_running_loop().create_future()
        rid = next(self._ids)
        self._replies[rid] = future
        self._send(msg_for(rid))
        return rid, await future

    # -- AsyncEngine's interface -------------------------------------------------------------------------

    def waiting_lengths(self) -> list[int]:
        """Token counts of the requests waiting in the engine (as of its last message) and on their way."""
        return self._state["waiting"] + self._arriving

    def num_free_blocks(self) -> int:
        return self._state["free"]

    async def metrics(self) -> dict:
        return (await self._ask(lambda rid: ("metrics", rid)))[1]

    async def stream(
        self, prompt: Sequence[int], params: SamplingParams, *, priority: int = 0, timeout: float | None = None,
        stop: Sequence[str] = (), detokenize: Callable[[list[int]], str] | None = None,
    ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        """Outputs of one request as they are produced; the last one has finished=True. Stop strings are
        matched with the engine process's own tokenizer (`detokenize` is not sent across)."""
        self._loop = asyncio.get_running_loop()  # the loop the streams' outputs are delivered on
        self._arriving.append(len(prompt))
        rid, outputs = None, None

        def add(i: int) -> tuple:
            nonlocal rid, outputs
            rid, outputs = i, _Outputs(i)
            self._streams[i] = outputs  # before the add is sent: outputs may follow at once
            return ("add", i, list(prompt), params, priority, timeout, tuple(stop))

        try:
            await self._ask(add)
        except ValueError:
            self._forget(rid)
            raise
        finally:
            self._arriving.remove(len(prompt))
        finished = False
        try:
            while not finished:
                out = await outputs.next()
                finished = out.finished
                yield out
        finally:
            self._forget(rid)
            if not finished and not self._closed:
                self._send(("abort", rid))

    def _forget(self, rid: int | None) -> None:
        self._streams.pop(rid, None)

    def close(self) -> None:
        """Leave the engine: it aborts this client's requests (and ends once its last client has left)."""
        if self._closed:
            return
        self._closed = True
        if self._on_loop and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: called off the loop's thread
                self._loop.remove_reader(self._conn.fileno())
        with contextlib.suppress(BrokenPipeError, OSError):  # the engine is already gone
            self._send(("close",))
        self._conn.close()


class EngineProcess(EngineClient):
    """An engine process of this process's own, with this process its only client."""

    def __init__(self, factory: ModelFactory, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        self._proc, (conn,) = start_engine(factory, config)
        super().__init__(conn, config.block_size)

    def close(self) -> None:
        """Stop the engine process (its device memory goes with it)."""
        super().close()
        self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.kill()
