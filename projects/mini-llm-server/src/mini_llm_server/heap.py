"""The serving processes' startup heap, kept out of the cyclic garbage collector's way; `gc-bench` measures it.

A serving process holds a few hundred thousand long-lived objects from startup: torch's and FastAPI's
modules, the model, the app. A full collection walks every one of them, and CPython runs one whenever the
objects promoted since the last reach a quarter of the long-lived ones. In a serving probe on this repo's
2-core CPU machine the engine process ran one in the middle of the load, for 190 ms, and every stream
waited for it; with the heap frozen, the full collection in the same probe took 3 ms. Nothing built at
startup is garbage, so once a process is built `gc.freeze()` moves all of it into a permanent generation
that collections skip (vLLM's engine does the same), and a full collection walks only what serving has
created since. The engine process and each API server process freeze theirs before they say they are
ready; so does a single-process `serve`.

`gc-bench` times a full collection, before and after the freeze, in fresh processes built the way the
engine process and an API server process build themselves.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine and API processes import this module for the freeze alone
    import torch
    from tinyllm.tokenizer import Tokenizer

    from mini_llm_server.config import EngineConfig
    from mini_llm_server.engine_process import ModelFactory

REPEATS = 5


def freeze_startup_heap() -> None:
    """Collect what startup left behind, then freeze everything alive: from now on collections skip it."""
    gc.collect()
    gc.freeze()


def _full_collection_ms() -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        gc.collect()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def collection_cost(build: Callable[[], object]) -> dict:
    """In this process: `build()` (what it returns stays alive, as a serving process keeps its state), then
    the median time of a full collection, before and after `freeze_startup_heap`."""
    state = build()
    gc.collect()  # startup's own garbage: not what a collection during serving walks
    tracked = len(gc.get_objects())
    before = _full_collection_ms()
    freeze_startup_heap()
    after = _full_collection_ms()
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    del state
    return {"tracked_objects": tracked, "full_collection_ms": before, "frozen_objects": frozen,
            "full_collection_ms_frozen": after}  # fmt: skip


def engine_process_state(factory: ModelFactory, config: EngineConfig) -> object:
    """What the engine process builds before it serves (engine_process._EngineLoop)."""
    from mini_llm_server.engine import LLMEngine

    model, _ = factory()
    return LLMEngine(model, config)


class _IdleEngine:
    """Stands in for the API process's pipe to the engine: building the app only keeps a reference to it."""


def api_process_state(tokenizer: Tokenizer) -> object:
    """What an API server process builds before it serves (api_servers._api_main): uvicorn and the app."""
    import uvicorn

    from mini_llm_server.api import ServiceConfig, create_app

    app = create_app(_IdleEngine(), tokenizer, ServiceConfig())
    return app, uvicorn.Config(app)


def measure(factory: ModelFactory, tokenizer: Tokenizer, config: EngineConfig) -> list[dict]:
    """A row per kind of serving process, each measured in a fresh interpreter of its own."""
    builds = {"engine process": functools.partial(engine_process_state, factory, config),
              "API server process": functools.partial(api_process_state, tokenizer)}  # fmt: skip
    rows = []
    for name, build in builds.items():
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append({"process": name, **pool.submit(collection_cost, build).result()})
    return rows


def write_gc_record(rows: list[dict], model_name: str, device: torch.device, root: Path | None = None) -> Path:
    from mlsys_bench.environment import hardware_label
    from mlsys_bench.record import metric, param
    from mlsys_bench.timing import TimingConfig

    from mini_llm_server.load_record import service_context

    ctx = service_context(hardware_label(device), root)
    columns = [param("process", "a serving process, built the way it builds itself"),
               metric("tracked_objects", "count", "objects the collector tracks after startup"),
               metric("full_collection_ms", "ms", "one full collection, median"),
               metric("frozen_objects", "count", "objects gc.freeze() moved out of the collector's reach"),
               metric("full_collection_ms_frozen", "ms", "one full collection after the freeze, median")]  # fmt: skip
    ctx.record(benchmark="gc_pauses", columns=columns, rows=rows, config={"model": model_name, "repeats": REPEATS},
               timing=TimingConfig(warmup=1, repeats=REPEATS), method="gc.collect() timed with perf_counter, "
               "in a fresh spawned process per row after it builds what that serving process builds",
               notes="A full collection stalls every stream the process serves for its duration.")  # fmt: skip
    return ctx.written[-1]
