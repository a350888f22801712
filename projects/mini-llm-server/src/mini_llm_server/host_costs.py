"""`mini-llm-server host-bench`: the engine's host work per step, with the GPU's work taken out.

The engine process's host work per step grows with the running sequences (scheduling each, building the
step's inputs, reading and appending its tokens, publishing full blocks to the prefix cache); once it
outlasts the GPU's step, the GPU waits for it (at 128 streams it did: serving-bench's GPU timeline). This
runs the engine's own step, CUDA-graph input path included, on N running sequences in a closed loop (a
finished request is replaced at once; prompt and output lengths drawn as serving-bench's are), with both
graph paths' forward replaced by fixed logits, so what is timed is the host alone: ms per step in
LLMEngine.step(), split as the engine splits it (schedule; prepare: the graph's inputs; forward: the stub and
the argmax launch; sample: reading the last step's tokens and the books after), and per running sequence,
in the median of several segments of steps. Each load runs alone, then with the machine's other cores kept
busy by spinning processes, as serving keeps them with its API and client processes (a core's SMT sibling,
the shared caches and memory bandwidth slow Python down). Not in it: the engine process's pipes (commands
in, tokens out), and adding requests (serving-bench counts both as the engine loop's commands and fan-out).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams

from mini_llm_server.config import EngineConfig
from mini_llm_server.cuda_graphs import DecodeGraphs, MixedGraphs
from mini_llm_server.engine import LLMEngine

PHASES = ("schedule", "prepare", "forward", "sample")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCostConfig:
    sequences: tuple[int, ...] = (32, 128)  # serving-bench's two loads that matter: the tail goal's, the top
    max_num_batched_tokens: int = 256  # the engine's default
    prompt_tokens: tuple[int, int] = (17, 375)  # serving-bench's prompts (16-256 words) in the small tokenizer
    output_tokens: tuple[int, int] = (32, 256)
    warmup_steps: int = 300  # past the first wave of prompts
    steps: int = 100  # per segment
    repeats: int = 15  # segments; the record holds the median one
    # the stub's logits: a small vocabulary keeps the host's argmax (on a GPU, the device's) out of the figures
    vocab_size: int = 256
    seed: int = 0
    # each load again with this many of the machine's other cores kept busy by spinning processes (None: all but
    # one): serving, the engine process shares the machine with its API processes and the load's clients
    busy_cores: tuple[int | None, ...] = (0, None)


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(1000))


@contextlib.contextmanager
def _busy(cores: int) -> Iterator[None]:
    """`cores` processes spinning in Python until the block ends (forked: nothing to import)."""
    mp = multiprocessing.get_context("fork")
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in spinners:
            p.join()


def _engine(n: int, cfg: HostCostConfig) -> LLMEngine:
    """An engine for n sequences whose decode and mixed steps go through the CUDA-graph classes' input path
    (padded eagerly off a GPU, as the tests run them) into a forward that returns fixed logits."""
    model = Transformer(
        ModelConfig(
            vocab_size=cfg.vocab_size,
            dim=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            ffn_dim=64,
            max_seq_len=cfg.prompt_tokens[1] + cfg.output_tokens[1] + 1,
        )
    ).eval()
    blocks = n * -(-model.cfg.max_seq_len // 16) + 16  # every sequence at its longest: no preemption
    config = EngineConfig(num_blocks=blocks, block_size=16, attention_backend="triton", max_num_seqs=n,
                          max_num_batched_tokens=cfg.max_num_batched_tokens, min_admission=max(1, n // 8))  # fmt: skip
    engine = LLMEngine(model, config)
    runner = engine.runner
    runner.decode_graphs = DecodeGraphs(runner, n)
    runner.mixed_graphs = MixedGraphs(runner, cfg.max_num_batched_tokens, n)
    for graphs in (runner.decode_graphs, runner.mixed_graphs):
        logits = torch.zeros(max(graphs.sizes), cfg.vocab_size)
        graphs._forward = lambda size, logits=logits: logits[:size]
    return engine


def _one_load(n: int, cfg: HostCostConfig) -> dict:
    engine, rng = _engine(n, cfg), random.Random(cfg.seed)

    def add() -> None:
        prompt = [rng.randrange(cfg.vocab_size) for _ in range(rng.randint(*cfg.prompt_tokens))]
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_new_tokens=rng.randint(*cfg.output_tokens)))

    def run(steps: int) -> float:
        """Seconds in engine.step(): the closed loop's own work (drawing and adding requests) is not timed."""
        seconds = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            outputs = engine.step()
            seconds += time.perf_counter() - t0
            for out in outputs:
                if out.finished:
                    add()
        return seconds

    for _ in range(n):
        add()
    run(cfg.warmup_steps)
    segments = []
    for _ in range(cfg.repeats):
        before, steps0, mixed0 = dict(engine.step_seconds), engine.num_steps, engine.steps_by_kind["mixed"]
        seconds = run(cfg.steps)
        steps = engine.num_steps - steps0
        segment = {"mixed_share": (engine.steps_by_kind["mixed"] - mixed0) / steps,
                   "host_ms_per_step": 1e3 * seconds / steps}  # fmt: skip
        for k in PHASES:
            segment[f"{k}_ms"] = 1e3 * (engine.step_seconds[k] - before[k]) / steps
        segments.append(segment)
    engine.close()
    # the median segment by host time, its split with it: on a shared VM a neighbour's burst lands in a few
    median = sorted(segments, key=lambda seg: seg["host_ms_per_step"])[len(segments) // 2]
    row = {"sequences": n, "steps": cfg.steps * cfg.repeats, **median}
    row["us_per_sequence"] = 1e3 * row["host_ms_per_step"] / n
    return row


def measure(cfg: HostCostConfig) -> list[dict]:
    rows = []
    for n in cfg.sequences:
        for busy in cfg.busy_cores:
            cores = max(0, (os.cpu_count() or 1) - 1) if busy is None else busy
            with _busy(cores):
                rows.append({"busy_cores": cores, **_one_load(n, cfg)})
    return rows


def write_record(rows: list[dict], cfg: HostCostConfig, hardware: str, root: Path | None = None) -> Path:
    from mlsys_bench.record import metric, param
    from mlsys_bench.timing import TimingConfig

    from mini_llm_server.load_record import service_context

    ctx = service_context(hardware, root)
    columns = [param("busy_cores", "other cores kept busy by processes spinning meanwhile"),
               param("sequences", "running sequences, kept at that by replacing each finished request"),
               metric("steps", "count", "steps timed, in `repeats` segments"),
               metric("mixed_share", "", "of them, steps that carry prompt tokens"),
               metric("host_ms_per_step", "ms", "time in LLMEngine.step() per step, the forward stubbed out"),
               *(metric(f"{k}_ms", "ms", f"the engine's {k!r} time per step") for k in PHASES),
               metric("us_per_sequence", "us", "host time per step per running sequence")]  # fmt: skip
    ctx.record(benchmark="host_costs", columns=columns, rows=rows, config=asdict(cfg),
               timing=TimingConfig(warmup=cfg.warmup_steps, repeats=cfg.repeats),
               method="LLMEngine.step() timed with perf_counter over `repeats` segments of `steps` steps, the "
               "figures those of the median segment by time per step; the CUDA-graph input path on the host and "
               "both graphs' forward replaced by fixed logits",
               notes="Host work only: no GPU kernel, no engine-process pipe.")  # fmt: skip
    return ctx.written[-1]


def main() -> list:
    """Measure, print, and write the record, labelled with this machine's GPU where it has one (the host
    the engine process runs on) and its CPU otherwise."""
    from mlsys_bench.environment import hardware_label

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = HostCostConfig()
    rows = measure(cfg)
    for r in rows:
        print(f"  {r}", flush=True)
    return [write_record(rows, cfg, hardware_label(device))]
