"""`mini-llm-server serving-bench`: the serving report's measurements, in one run.

For each policy (continuous batching, static batching, FIFO; continuous batching also with the engine in
a process of its own, and that behind several API server processes) a fresh server on loopback is
driven by the closed-loop load generator, split over several client processes of their own as real
clients would be (in the server's process their parsing would compete for the interpreter lock; in one
process of their own they fell behind), at each concurrency, every request streaming: TTFT, inter-token
and end-to-end percentiles, requests/s, tokens/s, KV memory per active request. Then 2x overload:
open-loop Poisson arrivals at twice the request rate continuous batching sustained at the highest
concurrency, against a bounded queue, where the p99 TTFT of admitted requests must stay bounded and the
excess be refused with 429s. And the step token budget (the chunked-prefill chunk) swept at one
concurrency, engine in its own process behind several API server processes: a small budget bounds how
long a step that admits prompts stalls every stream's next token, a large one admits prompts in fewer
steps; the budgets in top_step_tokens are measured at the highest concurrency too, where throughput is at
stake. Every point also records where a stream's gaps grow (as the engine reads each token, as its API
process takes it off the pipe and writes it, as the client parses it) and the engine's host time per step;
on a GPU, every engine keeps its steps on the GPU's clock (gpu_timeline.py): whether the GPU or the host
sets the pace.

Model: on a GPU the TinyLlama-1.1B shape with random weights (latency and throughput only, never quality)
and the `small` preset's tokenizer and vocabulary (the tokenizer trained alone); on a CPU whatever model the
caller passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from mlsys_bench.environment import hardware_label
from mlsys_bench.record import metric, param
from mlsys_bench.timing import TimingConfig
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread
from mini_llm_server.api_servers import ApiServers
from mini_llm_server.async_engine import AsyncEngine
from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine
from mini_llm_server.engine_process import EngineProcess, ModelFactory, copy_of
from mini_llm_server.load import LoadConfig, client_pool, run_split, summarize
from mini_llm_server.load_record import service_context
from mini_llm_server.metrics import TAKEN, TAKEN_DELAY, WRITTEN, WRITTEN_DELAY, StreamStats
from mini_llm_server.model_runner import kv_bytes_per_block
from mini_llm_server.report import ADMISSION_DIVISOR, TINYLLAMA, release_memory

PROCESS_POLICY = "continuous, engine process"  # continuous batching with the engine in a process of its own
SCALED_POLICY = "continuous, API processes"  # ...behind several API server processes (ServingConfig.api_servers)
POLICIES = ("continuous", SCALED_POLICY, "static", "fifo")  # at every concurrency; PROCESS_POLICY at one
METHOD = (
    f"uvicorn on loopback (engine on its own thread; for {PROCESS_POLICY!r}, in its own process; for "
    f"{SCALED_POLICY!r}, in its own process behind api_servers uvicorn processes sharing the port), httpx streaming "
    "clients in further processes (client_processes, each a share of the load)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingConfig:
    concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    # closed loop: each client sends this many, at least min_requests in all; enough that a point is mostly
    # steady state, not the first wave's ramp and the last one's tail (with 1.5 requests per client at 128
    # clients, a run measured 8,200 tokens/s there against 10,700 at 32)
    requests_per_client: int = 8
    min_requests: int = 16
    max_requests: int = 1024
    fifo_max_requests: int = 64  # FIFO serves one request at a time: 8 x 128 of them would take the whole run
    prompt_words: tuple[int, int] = (16, 256)
    output_tokens: tuple[int, int] = (32, 256)
    max_num_seqs: int = 128  # the batch limit of continuous and static batching
    max_queue: int = 256  # closed-loop runs never exceed it; the overload run does
    overload_factor: float = 2.0
    overload_seconds: float = 20.0
    # the load comes from this many client processes (each a share of the clients, requests or rate): one
    # process fell behind its open-loop schedule, and at 10k tokens/s its own parsing sets the pace. At 32
    # streams on the H200 the p95 inter-token gap was 2.20-2.52 ms across the swept budgets with 4 processes
    # (results/h200/earlier/serving_476389b_4_client_processes.json) and 2.03-2.39 ms with 8 (the record at
    # 0c0f9ae): with 4, a step's tokens queued in each behind each other (a probe had the busiest 63% busy)
    client_processes: int = 8
    max_num_batched_tokens: int = 256  # the step token budget of every point but the sweep's (the engine's default)
    step_token_sweep: tuple[int, ...] = (64, 128, 512)  # further budgets, measured at sweep_concurrency
    sweep_concurrency: int = 32  # also where PROCESS_POLICY (one API process) is measured, for comparison
    sweep_policy: str = SCALED_POLICY
    # budgets measured at the top concurrency too (sweep_policy): where a smaller budget could cost throughput,
    # so whether one that meets the tail goal at sweep_concurrency can be the default
    top_step_tokens: tuple[int, ...] = (512,)
    # SCALED_POLICY's HTTP side: at 32 streams one process was busy 84% of the time (stop 15's H100 record)
    api_servers: int = 4
    # further API process counts, measured at sweep_concurrency with the default budget: each process writes
    # its streams' tokens one after another, so fewer streams per process could shorten delivery's tail
    api_server_sweep: tuple[int, ...] = (8,)


@contextlib.contextmanager
def _service(
    model: Transformer,
    tok: Tokenizer,
    engine_config: EngineConfig,
    service: ServiceConfig,
    factory: ModelFactory | None,
    api_servers: int,
) -> Iterator[tuple[str, object, Callable[[], float], StreamStats]]:
    """A fresh server on loopback: (URL, its engine for metrics, the HTTP side's CPU seconds so far, its
    per-token series). Without `factory` the engine runs in this process; with it, in a process of its own,
    behind this process's uvicorn thread or (`api_servers` > 0) behind that many API server processes."""
    if api_servers:
        servers = ApiServers(factory, tok, engine_config, service, api_servers)
        try:
            yield servers.url, servers.engine, servers.cpu_seconds, StreamStats(servers.cells)
        finally:
            servers.stop()
        return
    engine = AsyncEngine(LLMEngine(model, engine_config)) if factory is None else EngineProcess(factory, engine_config)
    stats = StreamStats()
    app = create_app(engine, tok, service, stats)
    server, thread, url = serve_in_thread(app)
    try:
        # every thread of this process: the HTTP side (and the engine, when in-process)
        yield url, engine, time.process_time, stats
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()


# the API processes' series serving-bench records, by the name of their columns (metrics.py)
HOPS = {TAKEN: "taken_itl", WRITTEN: "written_itl", TAKEN_DELAY: "taken_delay", WRITTEN_DELAY: "written_delay"}


def _point(model: Transformer, tok: Tokenizer, engine_config: EngineConfig, load: LoadConfig, max_queue: int,
           client: ProcessPoolExecutor, client_processes: int, factory: ModelFactory | None = None,
           api_servers: int = 0) -> dict:  # fmt: skip
    """One load against a fresh server (`_service`), from `client_processes` processes of the `client` pool."""
    service = ServiceConfig(model_name="bench", max_queue=max_queue)
    with _service(model, tok, engine_config, service, factory, api_servers) as (url, engine, cpu_seconds, stats):
        cpu = cpu_seconds()
        results, wall, client_cpu = run_split(replace(load, url=url), client, client_processes)
        cpu = cpu_seconds() - cpu
        summary = summarize(results, wall, client_cpu)
        summary["server_cpu_share"] = cpu / wall  # of one core: ~1 for one interpreter is its ceiling
        summary["server_cpu_us_per_token"] = 1e6 * cpu / max(sum(r.tokens for r in results), 1)
        failed = {f"{r.status}: {r.error}" for r in results if r.status != 429 and (r.status != 200 or r.error)}
        for what in sorted(failed):  # the record counts errors; the log says what they were
            print(f"  error: {what}", flush=True)
        m = asyncio.run(engine.metrics())
        api_gaps = {(at, q): stats.percentile_ms(at, q) for at in HOPS for q in (50, 95, 99)}
        del engine
    block_bytes = kv_bytes_per_block(model, engine_config.block_size)
    active = min(load.concurrency or engine_config.max_num_seqs, engine_config.max_num_seqs)  # running at peak
    summary["kv_MB_per_request"] = m["kv_blocks_peak"] * block_bytes / 1e6 / active
    summary["preemptions"] = m["preemptions"]
    busy = sum(m[f"{k}_seconds"] for k in ("schedule", "prepare", "forward", "sample"))
    summary["engine_step_ms"] = 1e3 * busy / max(m["steps"], 1)  # the engine alone, without HTTP
    # of that, the host's work (the rest is waiting for overlapped steps' tokens); in an engine process, its
    # loop's time for its clients' commands and for handing out each step's tokens
    summary["engine_host_ms"] = 1e3 * (busy - m["gpu_wait_seconds"]) / max(m["steps"], 1)
    for k in ("commands", "fan_out"):
        loop = m.get(f"loop_{k}_seconds")
        summary[f"loop_{k}_ms"] = None if loop is None else 1e3 * loop / max(m["steps"], 1)
    for kind in ("decode", "mixed"):  # how long each kind of step takes, and how many steps carry prompts
        summary[f"{kind}_step_ms"] = 1e3 * m[f"{kind}_step_seconds"] / max(m[f"{kind}_steps"], 1)
    summary["mixed_step_share"] = m["mixed_steps"] / max(m["steps"], 1)
    for q in (50, 95, 99):  # the engine's own inter-token gaps, as it reads the tokens: the tail before delivery
        summary[f"engine_itl_p{q}_ms"] = m[f"itl_p{q}_ms"]
    # the same streams' gaps inside the API processes: taken off the engine's pipe, and written to the socket;
    # and each token's delay there since the engine read it
    for at, name in HOPS.items():
        for q in (50, 95, 99):
            summary[f"{name}_p{q}_ms"] = api_gaps[at, q]
    summary.update(_gpu_figures(m))
    release_memory(model.lm_head.weight.device)
    return summary


def _gpu_figures(m: dict) -> dict[str, float | None]:
    """The engine's steps on the GPU's clock (EngineConfig.gpu_timeline; None without it): the share of the
    GPU's time from step to step spent in them, each kind's mean busy time, the mean and longest wait for the
    host before a step, steps run eagerly (no graph fitted)."""
    kinds = [k for k in ("decode", "mixed", "eager") if f"gpu_{k}_steps" in m]
    if not kinds:
        return dict.fromkeys(("gpu_busy_share", "decode_gpu_ms", "mixed_gpu_ms", "gpu_idle_ms", "gpu_idle_max_ms",
                              "eager_steps"))  # fmt: skip
    busy, idle = (sum(m[f"gpu_{k}_{t}_total_ms"] for k in kinds) for t in ("busy", "idle"))
    steps = sum(m[f"gpu_{k}_steps"] for k in kinds)
    # idle is known only before a step that follows a step's end (GpuTimeline): the few after a break (an idle
    # engine, a step that sampled nothing) count as not waiting, so the busy share is an upper bound
    return {"gpu_busy_share": busy / (busy + idle) if busy else None,
            "decode_gpu_ms": m.get("gpu_decode_busy_ms"), "mixed_gpu_ms": m.get("gpu_mixed_busy_ms"),
            "gpu_idle_ms": idle / steps if steps else None,
            "gpu_idle_max_ms": max(m[f"gpu_{k}_idle_max_ms"] for k in kinds),
            "eager_steps": m.get("gpu_eager_steps", 0)}  # fmt: skip


def measure(model: Transformer, tok: Tokenizer, cfg: ServingConfig, factory: ModelFactory | None = None) -> list[dict]:
    """Every point; `factory` builds the same model in the engine process of the PROCESS_POLICY and
    SCALED_POLICY rows (by default a pickled copy of `model`, fine for small ones)."""
    factory = factory or functools.partial(copy_of, model, tok)
    with client_pool(cfg.client_processes) as client:  # warm first, so a point's parts run side by side
        return _measure(model, tok, cfg, client, factory)


def _measure(model: Transformer, tok: Tokenizer, cfg: ServingConfig, client: ProcessPoolExecutor,
             factory: ModelFactory) -> list[dict]:  # fmt: skip
    timeline = model.lm_head.weight.device.type == "cuda"  # every engine's steps on the GPU's clock, on a GPU

    def point(policy: str, c: int, step_tokens: int, api_servers: int | None = None) -> dict:
        scheduling = "continuous" if policy in (PROCESS_POLICY, SCALED_POLICY) else policy
        seqs = 1 if policy == "fifo" else cfg.max_num_seqs
        group = max(1, min(c, seqs) // ADMISSION_DIVISOR) if scheduling == "continuous" else 1
        engine = EngineConfig(policy=scheduling, max_num_seqs=seqs, max_num_batched_tokens=step_tokens,
                              min_admission=group, gpu_timeline=timeline)  # fmt: skip
        cap = cfg.fifo_max_requests if policy == "fifo" else cfg.max_requests
        n = min(cap, max(cfg.min_requests, cfg.requests_per_client * c))
        load = LoadConfig(url="", model="bench", num_requests=n, concurrency=c, prompt_words=cfg.prompt_words,
                          output_tokens=cfg.output_tokens)  # fmt: skip
        t0 = time.perf_counter()
        if api_servers is None:
            api_servers = cfg.api_servers if policy == SCALED_POLICY else 0
        row = _point(model, tok, engine, load, cfg.max_queue, client, cfg.client_processes,
                     factory if scheduling != policy else None, api_servers)  # fmt: skip
        print(f"  {policy} ({api_servers}) c={c} step tokens {step_tokens}: {row['tokens_per_s']:.0f} tok/s, p95 ITL "
              f"{row['itl_p95_ms']:.2f} ms, HTTP CPU {row['server_cpu_share']:.2f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip
        return {"policy": policy, "load": f"closed, {c} clients", "concurrency": c, "step_tokens": step_tokens,
                "api_servers": api_servers, **row}  # fmt: skip

    rows = [point(policy, c, cfg.max_num_batched_tokens) for policy in POLICIES for c in cfg.concurrencies]
    rows.append(point(PROCESS_POLICY, cfg.sweep_concurrency, cfg.max_num_batched_tokens))
    rows += [point(cfg.sweep_policy, cfg.sweep_concurrency, b) for b in cfg.step_token_sweep]
    top = max(cfg.concurrencies)
    rows += [point(cfg.sweep_policy, top, b) for b in cfg.top_step_tokens]
    rows += [point(SCALED_POLICY, cfg.sweep_concurrency, cfg.max_num_batched_tokens, n) for n in cfg.api_server_sweep]
    sustained = next(r for r in rows if r["policy"] == "continuous" and r["concurrency"] == top)["requests_per_s"]
    rate = cfg.overload_factor * sustained
    group = max(1, cfg.max_num_seqs // ADMISSION_DIVISOR)
    engine = EngineConfig(max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                          min_admission=group, gpu_timeline=timeline)  # fmt: skip
    load = LoadConfig(url="", model="bench", num_requests=max(cfg.min_requests, int(rate * cfg.overload_seconds)),
                      rate=rate, prompt_words=cfg.prompt_words, output_tokens=cfg.output_tokens)  # fmt: skip
    queue = cfg.max_num_seqs  # a queue as deep as one batch: past it, refuse rather than let TTFT grow
    rows.append({"policy": "continuous", "load": f"open, {cfg.overload_factor:g}x sustained rate ({rate:.1f}/s)",
                 "concurrency": 0, "step_tokens": cfg.max_num_batched_tokens, "api_servers": 0,
                 **_point(model, tok, engine, load, queue, client, cfg.client_processes)})  # fmt: skip
    return rows


def gpu_model(device: torch.device, tok: Tokenizer | None = None) -> tuple[Transformer, Tokenizer]:
    """The TinyLlama-shaped model with random weights, over the `small` preset's vocabulary; its tokenizer is
    trained alone when not given (seconds: the model is random, so the preset's model is never trained)."""
    from tinyllm import registry

    tok = registry.tokenizer("small") if tok is None else tok
    torch.manual_seed(0)
    model = Transformer(replace(TINYLLAMA, vocab_size=tok.vocab_size)).to(device, torch.bfloat16).eval()
    return model, tok


def http_stack() -> str:
    """What uvicorn serves with here: it takes httptools and uvloop when they are installed, else h11 and asyncio."""
    import uvicorn

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {uvicorn.__version__}, {parser}, {loop}"


def write_serving_record(rows: list[dict], cfg: ServingConfig, model_name: str, device: torch.device,
                         root: Path | None = None) -> Path:  # fmt: skip
    ctx = service_context(hardware_label(device), root)
    params = ("policy", "load", "concurrency", "step_tokens", "api_servers")
    keys = [k for k in rows[0] if k not in params]
    columns = [param("policy"), param("load"), param("concurrency", "closed-loop clients; 0: open loop"),
               param("step_tokens", "tokens computed per step at most"),
               param("api_servers", "API server processes in front of the engine's; 0: HTTP in the process that "
                     "starts the engine")]  # fmt: skip
    units = {"_ms": "ms", "_MB_per_request": "MB", "_us_per_token": "us"}
    columns += [metric(k, next((u for end, u in units.items() if k.endswith(end)), "")) for k in keys]
    config = {**asdict(cfg), "model": model_name, "http_stack": http_stack()}
    ctx.record(benchmark="serving", columns=columns, rows=rows, config=config,
               timing=TimingConfig(warmup=0, repeats=1), method=METHOD,
               notes="Latencies as a streaming client sees them; 429s counted apart from errors; KV MB per request "
               "= peak KV blocks in use x bytes per block / concurrency.")  # fmt: skip
    return ctx.written[-1]
