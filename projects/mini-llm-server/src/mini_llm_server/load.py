"""`mini-llm-server load`: a load generator for any OpenAI-compatible completions endpoint.

Closed loop (`--concurrency N`: N clients, each sending its next request when the last one ends) or open
loop (`--rate R`: Poisson arrivals at R requests/s whatever the server does, the way overload happens).
Every request streams, so time to first token and the gaps between tokens are seen as a client sees
them. Reports p50/p95/p99 TTFT, inter-token latency, time per output token and end-to-end latency,
requests/s, tokens/s, and errors (429s counted apart), and writes them as a harness record.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import statistics
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import httpx

WORDS = ("the", "model", "reads", "a", "prompt", "and", "writes", "tokens", "one", "at", "time", "while",
         "server", "batches", "many", "requests", "into", "each", "step", "of", "engine", "GPU", "busy")  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadConfig:
    url: str  # the server's base URL, e.g. http://127.0.0.1:8000
    model: str
    num_requests: int = 64
    concurrency: int | None = None  # closed loop: this many clients back to back
    rate: float | None = None  # requests per second, Poisson arrivals
    prompt_words: tuple[int, int] = (8, 64)
    output_tokens: tuple[int, int] = (16, 128)
    seed: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")


@dataclass(slots=True)
class Result:
    status: int = 0  # HTTP status; 0: the connection failed
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    tokens: int = 0  # completion tokens, from the stream's closing usage chunk
    error: str | None = None


def bodies(cfg: LoadConfig) -> list[dict]:
    rng = random.Random(cfg.seed)
    out = []
    for _ in range(cfg.num_requests):
        words = [rng.choice(WORDS) for _ in range(rng.randint(*cfg.prompt_words))]
        out.append({"model": cfg.model, "prompt": " ".join(words), "max_tokens": rng.randint(*cfg.output_tokens),
                    "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    return out


async def one_request(client: httpx.AsyncClient, body: dict) -> Result:
    res, t0 = Result(), time.perf_counter()
    last = None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            res.status = r.status_code
            if r.status_code != 200:
                res.error = (await r.aread()).decode(errors="replace")[:200]
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:  # the server ended the stream with an error (a deadline, the engine gone)
                    res.error = str(chunk["error"].get("message"))[:200]
                    break
                if chunk.get("usage"):  # the last chunk: the count, since a text chunk may carry several tokens
                    res.tokens = chunk["usage"]["completion_tokens"]
                elif chunk["choices"][0]["text"]:  # inter-token gaps are gaps between chunks that carry text
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - t0
                    else:
                        res.itl.append(now - last)
                    last = now
        res.e2e = time.perf_counter() - t0
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


def split(cfg: LoadConfig, parts: int) -> list[LoadConfig]:
    """The same load cut into `parts` loads for as many client processes (one Python process streaming
    thousands of tokens a second falls behind, and its lag would be counted as the server's): requests,
    clients or rate shared out as evenly as they go, a seed of its own for each part's prompts."""
    parts = max(1, min(parts, cfg.num_requests, cfg.concurrency or parts))
    out = []
    for i in range(parts):
        n = cfg.num_requests // parts + (i < cfg.num_requests % parts)
        c = None if cfg.concurrency is None else cfg.concurrency // parts + (i < cfg.concurrency % parts)
        rate = None if cfg.rate is None else cfg.rate / parts
        out.append(replace(cfg, num_requests=n, concurrency=c, rate=rate, seed=cfg.seed + 1000 * i))
    return out


async def run(cfg: LoadConfig) -> tuple[list[Result], float]:
    """Send every request; returns the results and the wall time."""
    work = bodies(cfg)
    # An idle pooled connection is dropped well before uvicorn's 5 s keep-alive timeout closes it: reusing
    # one the server is closing fails with a ReadError that is the client's doing (the likely cause of the 4
    # ReadErrors one serving run counted under overload).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=cfg.url, timeout=cfg.timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        if cfg.concurrency is not None:
            queue = list(reversed(work))
            results: list[Result] = []

            async def worker():
                while queue:
                    results.append(await one_request(client, queue.pop()))

            await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        else:
            rng = random.Random(cfg.seed + 1)
            tasks, due = [], t0
            for body in work:
                tasks.append(asyncio.create_task(one_request(client, body)))
                # arrivals on an absolute schedule: a busy event loop sends late ones at once, it does not
                # push every later arrival back (relative sleeps would lower the rate under load)
                due += rng.expovariate(cfg.rate)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - t0


def drive(cfg: LoadConfig) -> tuple[list[Result], float, float]:
    """run() in a process of its own (a client process's task); also the CPU seconds it took."""
    cpu = time.process_time()
    results, wall = asyncio.run(run(cfg))
    return results, wall, time.process_time() - cpu


def ready() -> None:
    """A client process's first task, so its start-up (interpreter, imports) is over before a load is timed."""


def client_pool(processes: int) -> ProcessPoolExecutor:
    """`processes` client processes, started and warm."""
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    for f in [pool.submit(ready) for _ in range(processes)]:
        f.result()
    return pool


def run_split(cfg: LoadConfig, pool: Executor, processes: int) -> tuple[list[Result], float, float]:
    """The load cut into `processes` parts (split), each driven in a process of `pool` at the same time; the
    results of all, the wall time of the longest (the parts start together), and the busiest client process's
    CPU share (its CPU seconds over its wall time). A client process near 1 sets the pace itself: a step's
    tokens for its streams wait in it behind each other, and the wait is counted as the server's."""
    futures = [pool.submit(drive, part) for part in split(cfg, processes)]
    results, wall, busiest = [], 0.0, 0.0
    for f in futures:
        part_results, part_wall, part_cpu = f.result()
        results += part_results
        wall = max(wall, part_wall)
        busiest = max(busiest, part_cpu / part_wall)
    return results, wall, busiest


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarize(results: list[Result], wall: float, client_cpu_share: float | None = None) -> dict:
    ok = [r for r in results if r.status == 200 and r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [g for r in ok for g in r.itl]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    # time per output token after the first, per request: unlike the gaps between chunks, it does not depend
    # on how many tokens each streamed chunk carries
    tpot = [(r.e2e - r.ttft) / (r.tokens - 1) for r in ok if r.e2e is not None and r.ttft is not None and r.tokens > 1]
    summary = {"requests": len(results), "ok": len(ok), "rejected_429": sum(r.status == 429 for r in results),
               "errors": sum(r.status != 429 and (r.status != 200 or r.error is not None) for r in results),
               "requests_per_s": len(ok) / wall, "tokens_per_s": sum(r.tokens for r in ok) / wall,
               "wall_s": wall}  # fmt: skip
    for name, values in (("ttft", ttft), ("itl", itl), ("tpot", tpot), ("e2e", e2e)):
        for q in (50, 95, 99):
            v = _pct(values, q)
            summary[f"{name}_p{q}_ms"] = None if v is None else v * 1e3
    # the longest any client waited between two chunks: a pause of the whole server (a garbage collection, a
    # stall) is one gap per stream, too few to reach a percentile
    summary["itl_max_ms"] = max(itl) * 1e3 if itl else None
    if client_cpu_share is not None:  # from run_split: the busiest client process's
        summary["client_cpu_share"] = client_cpu_share
    return summary
