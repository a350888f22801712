"""Several API server processes in front of one engine process (vLLM's API-server scale-out).

One interpreter writing every stream's server-sent events caps the service: at tens of thousands of
tokens/s its event loop is busy most of the time, and a step's tokens that arrive while it writes other
streams reach their clients a step late. Here `count` uvicorn processes accept connections from one
listening socket (as uvicorn's own --workers do; a connection stays with the process that accepted it),
each with its own pipe to the one engine process (an EngineClient) and its own row of the per-token
metrics. Each one's admission control reads the engine's queue as of its last step, plus its own adds on
their way. The starting process keeps a pipe of its own, for the engine's metrics.

Shutdown: SIGTERM or SIGINT makes each uvicorn stop accepting and finish its open responses; each API
process then leaves the engine, which aborts whatever that process still had and ends with its last client.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import MutableSequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from tinyllm.tokenizer import Tokenizer

from mini_llm_server.api import ServiceConfig, create_app
from mini_llm_server.config import EngineConfig
from mini_llm_server.engine_process import EngineClient, ModelFactory, start_engine
from mini_llm_server.heap import freeze_startup_heap
from mini_llm_server.metrics import StreamStats, shared_cells


def _api_main(conn: Connection, sock: socket.socket, tokenizer: Tokenizer, service: ServiceConfig, block_size: int,
              cells: MutableSequence[float], row: int, ready: Event, log_level: str) -> None:  # fmt: skip
    """One API server process: uvicorn on the shared socket, in front of its own pipe to the engine."""
    import uvicorn

    engine = EngineClient(conn, block_size, on_loop=True)
    app = create_app(engine, tokenizer, service, StreamStats(cells, row))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    freeze_startup_heap()

    async def serve() -> None:
        engine.attach()  # the engine's messages are read on this loop, which serves the streams
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:  # accepting: the starting process waits for every one before it says the service is up
            ready.set()
        await task

    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve())
    finally:
        engine.close()


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process (Linux's /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


class ApiServers:
    """`count` API server processes and the engine process behind them, serving on host:port (port 0: a free
    one; `url` says which). Built and ready when the constructor returns; `stop` drains and ends them."""

    def __init__(self, factory: ModelFactory, tokenizer: Tokenizer, engine_config: EngineConfig,
                 service: ServiceConfig, count: int, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", start_timeout_s: float = 600.0) -> None:  # fmt: skip
        if count < 1:
            raise ValueError(f"count: at least one API server process, got {count}")
        sock = socket.create_server((host, port), backlog=2048)  # bound here, so every process shares it
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        self.engine_proc, conns = start_engine(factory, engine_config, clients=count + 1)
        self.cells = shared_cells(count)
        ctx = multiprocessing.get_context("spawn")
        readies = [ctx.Event() for _ in range(count)]
        self.api_procs = []
        for row in range(count):
            args = (conns[row], sock, tokenizer, service, engine_config.block_size, self.cells, row, readies[row],
                    log_level)  # fmt: skip
            proc = ctx.Process(target=_api_main, args=args, name=f"api-server-{row}", daemon=True)
            proc.start()
            conns[row].close()  # the API process holds its own end: the pipe breaks if that process dies
            self.api_procs.append(proc)
        sock.close()
        self._stopped, self._own_conn = False, conns[-1]
        try:
            self.engine = EngineClient(conns[-1], engine_config.block_size)  # waits for the model
            deadline = time.monotonic() + start_timeout_s
            for proc, ready in zip(self.api_procs, readies, strict=True):
                while not ready.wait(0.1):
                    if not proc.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError(f"{proc.name} did not start (exit code {proc.exitcode})")
        except BaseException:
            self.stop()
            raise

    def cpu_seconds(self) -> float:
        """CPU time the API server processes have used so far (the HTTP side, without the engine)."""
        return sum(process_cpu_seconds(p.pid) for p in self.api_procs)

    def wait(self) -> None:
        """Serve until the API processes end (a signal to them, or to this process: see the CLI)."""
        try:
            for proc in self.api_procs:
                proc.join()
        finally:
            self.stop()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain: each API process finishes its open responses and leaves; then the engine ends."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self.api_procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for proc in self.api_procs:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
        if hasattr(self, "engine"):
            self.engine.close()
        else:  # it failed to start: leaving is enough for the engine to end
            self._own_conn.close()
        self.engine_proc.join(timeout_s)
        if self.engine_proc.is_alive():
            self.engine_proc.kill()
