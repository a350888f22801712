"""`mini-llm-server soak`: a bounded overload soak of the live service on loopback.

For a fixed time, Poisson arrivals at a rate above what the server sustains send streaming completions,
and a random fraction of the clients hang up after a few tokens. Every request must end in one of three
ways: the exact greedy text the engine gives that prompt alone, with a finish reason and `[DONE]`
(ok); HTTP 429 with Retry-After (rejected); or the client's own hang-up (disconnected). Anything else
counts against the server: a connection error, another status, a stream that ends in an error event or
without `[DONE]` (lost), or a different text (corrupted). Afterwards the engine must drain to nothing
running or waiting with no KV block in use, and the block manager's books must balance. The client keeps
at most `max_in_flight` streams open, so the soak is bounded whatever the server does.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch
from mlsys_bench.environment import hardware_label
from mlsys_bench.record import metric, param
from mlsys_bench.timing import TimingConfig
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams
from tinyllm.tokenizer import Tokenizer

from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread
from mini_llm_server.async_engine import AsyncEngine
from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine
from mini_llm_server.load import WORDS
from mini_llm_server.load_record import service_context

OUTCOMES = ("ok", "rejected", "disconnected", "lost", "corrupted")


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    duration_s: float = 600.0
    rate: float = 30.0  # requests offered per second (Poisson); above what a CPU serves, on purpose
    disconnect_fraction: float = 0.2  # clients that hang up after a random number of tokens
    max_in_flight: int = 256  # streams the client keeps open at most
    max_queue: int = 16  # the server's bound on waiting requests (past it: 429)
    num_prompts: int = 24
    output_tokens: tuple[int, int] = (4, 40)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.rate <= 0:
            raise ValueError(f"duration_s and rate must be positive, got {self.duration_s}, {self.rate}")
        if not 0.0 <= self.disconnect_fraction <= 1.0:
            raise ValueError(f"disconnect_fraction must be in [0, 1], got {self.disconnect_fraction}")


async def _one(client: httpx.AsyncClient, body: dict, hang_up_after: int | None, expected: str) -> str:
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code == 429:
                return "rejected" if "retry-after" in r.headers else "lost"
            if r.status_code != 200:
                return "lost"
            text, reason, chunks = [], None, 0
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return ("ok" if "".join(text) == expected else "corrupted") if reason else "lost"
                chunk = json.loads(line[6:])
                if "error" in chunk:  # the server gave up on it
                    return "lost"
                choice = chunk["choices"][0]
                text.append(choice["text"])
                reason = choice.get("finish_reason") or reason
                chunks += 1
                if hang_up_after is not None and chunks >= hang_up_after:
                    return "disconnected"  # leaving the block closes the connection mid-stream
            return "lost"  # the stream ended without [DONE]
    except httpx.HTTPError:
        return "lost"


async def _drive(cfg: SoakConfig, url: str, model_name: str, prompts: list[str], expected) -> tuple[Counter, int]:
    rng = random.Random(cfg.seed)
    slots = asyncio.Semaphore(cfg.max_in_flight)
    outcomes: Counter = Counter()
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        loop = asyncio.get_running_loop()
        end, sent = loop.time() + cfg.duration_s, 0
        while loop.time() < end:
            await slots.acquire()
            i, n = rng.randrange(len(prompts)), rng.randint(*cfg.output_tokens)
            hang_up = rng.randint(1, n) if rng.random() < cfg.disconnect_fraction else None
            body = {"model": model_name, "prompt": prompts[i], "max_tokens": n, "temperature": 0.0, "stream": True}
            task = asyncio.create_task(_one(client, body, hang_up, expected[i][n]))
            tasks.add(task)
            task.add_done_callback(lambda t: (outcomes.update([t.result()]), slots.release(), tasks.discard(t)))
            sent += 1
            await asyncio.sleep(rng.expovariate(cfg.rate))
        await asyncio.gather(*tasks)
    return outcomes, sent


def run_soak(model: Transformer, tok: Tokenizer, cfg: SoakConfig, engine_config: EngineConfig | None = None) -> dict:
    """Run the soak against a fresh in-process server; returns the summary (outcome counts, drain state)."""
    rng = random.Random(cfg.seed + 1)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24))) for _ in range(cfg.num_prompts)]
    ref = LLMEngine(model, EngineConfig(num_blocks=512, block_size=8))
    longest = cfg.output_tokens[1]
    outs = ref.generate([tok.encode(p) for p in prompts], SamplingParams(temperature=0.0, max_new_tokens=longest))
    # greedy without stop tokens: the first n tokens of the longest run are the n-token answer
    expected = [{n: tok.decode(o[:n]) for n in range(1, longest + 1)} for o in outs]
    engine = LLMEngine(model, engine_config or EngineConfig())
    app = create_app(AsyncEngine(engine), tok, ServiceConfig(model_name="soak", max_queue=cfg.max_queue))
    server, thread, url = serve_in_thread(app)
    try:
        t0 = time.perf_counter()
        outcomes, sent = asyncio.run(_drive(cfg, url, "soak", prompts, expected))
        wall = time.perf_counter() - t0
        deadline = time.time() + 60  # aborted streams are reaped within a step; give the engine time to drain
        while engine.scheduler.has_work() and time.time() < deadline:
            time.sleep(0.05)
        metrics = engine.metrics()
        engine.blocks.check_invariants(list(engine.scheduler.running))  # raises if the books do not balance
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {"sent": sent, **{k: outcomes.get(k, 0) for k in OUTCOMES}, "wall_s": wall,
            "running_at_end": metrics["running"], "waiting_at_end": metrics["waiting"],
            "kv_blocks_used_at_end": metrics["kv_blocks_used"], "preemptions": metrics["preemptions"],
            "tokens_generated": metrics["tokens_generated"]}  # fmt: skip


def write_soak_record(cfg: SoakConfig, summary: dict, model_name: str, root: Path | None = None) -> Path:
    ctx = service_context(hardware_label(torch.device("cpu")), root)
    columns = [param("model")] + [metric(k, "s" if k.endswith("_s") else "count") for k in summary]
    ctx.record(benchmark="soak", columns=columns, rows=[{"model": model_name, **summary}],
               config=asdict(cfg), timing=TimingConfig(warmup=0, repeats=1),
               method="in-process uvicorn on loopback, httpx streaming clients",
               notes="ok: the exact greedy text with a finish reason and [DONE]; rejected: 429 with Retry-After; "
               "disconnected: the client hung up on purpose; lost or corrupted: anything else.")  # fmt: skip
    return ctx.written[-1]
