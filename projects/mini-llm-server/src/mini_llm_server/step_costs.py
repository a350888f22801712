"""`mini-llm-server step-bench`: what one engine step costs on the GPU, by kind and size.

A stream waits for every step, so its inter-token gaps are the steps' lengths. With B sequences decoding,
a decode-only step replays the decode graph of padded batch B; a step that also carries a prompt replays
the mixed graph of its padded token count. Here B sequences decode while prompts of growing length
arrive one at a time, each followed by decode-only steps, and for each prompt length this measures: the
GPU time of the step's graph (CUDA events around replays on that step's own inputs), the engine's
interval for each kind of step (from one wait for the GPU to the next, as serving-bench reports them),
and, for one prompt length, where the mixed step's kernel time goes (its forward run eagerly under the
profiler, the same kernels its graph replays).

Model: the TinyLlama-1.1B shape with random weights in bf16 (timing only).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from mlsys_bench.environment import hardware_label
from mlsys_bench.record import metric, param
from mlsys_bench.timing import TimingConfig, time_gpu
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams

from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine
from mini_llm_server.load_record import service_context
from mini_llm_server.report import TINYLLAMA, kernel_families

# kernel families of a mixed step's forward, by a substring of the kernel's name (report.kernel_families)
MIXED_KERNELS = {"_paged_varlen": "varlen attention", "_rope_cache": "rotary + KV-cache write",
                 "_add_rmsnorm": "residual add + RMSNorm", "_silu_mul": "SiLU(gate) * up", "_embed": "embedding",
                 "_tma_gemm": "gate/up and down (TMA GEMM, steps of 65-128 tokens)",  # before "gemm": it holds it
                 "nvjet": "projections and LM head (cuBLAS)", "gemm": "projections and LM head (cuBLAS)",
                 "_gemv": "projections (split-K GEMV, steps of up to 64 tokens)"}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCostConfig:
    decodes: int = 31  # sequences decoding beside each prompt: with it, the serving goal's 32 streams
    context: int = 100  # the decoding sequences' prompt length
    prompt_tokens: tuple[int, ...] = (16, 64, 150, 400)
    max_num_batched_tokens: int = 512  # the largest step budget serving-bench measures: the largest mixed graph
    prompts_per_length: int = 8
    decode_steps_between: int = 6
    replays: int = 20
    profile_prompt: int = 150
    timeline_steps: int = 200  # decode-only engine steps timed on the GPU's clock (GpuTimeline)


def _replay_timing(cfg: StepCostConfig) -> TimingConfig:
    return TimingConfig(warmup=3, repeats=cfg.replays, prime_cycles_per_call=2_000_000)  # a replay is host work too


def _replay_ms(graph: torch.cuda.CUDAGraph, cfg: StepCostConfig) -> float:
    return 1e3 * time_gpu(graph.replay, config=_replay_timing(cfg)).median


def _gpu(summary: dict[str, float]) -> dict[str, float]:
    """A kind's GPU busy and idle figures from GpuTimeline.summary, as the record's columns name them."""
    return {k: summary[k] for k in ("gpu_busy_ms", "gpu_idle_before_ms", "gpu_idle_max_ms")}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after.keys() & before.keys() if isinstance(after[k], int | float)}


def measure(model: Transformer, cfg: StepCostConfig) -> tuple[list[dict], list[dict]]:
    """(a row per prompt length, and the decode-only row first; the profiled mixed step's kernel families)."""
    if model.lm_head.weight.device.type != "cuda":
        raise RuntimeError("step-bench measures the CUDA-graph steps: it needs the paged kernels on a GPU")
    engine = LLMEngine(model, EngineConfig(max_num_seqs=128, max_num_batched_tokens=cfg.max_num_batched_tokens,
                                           gpu_timeline=True))  # fmt: skip
    runner, gen, timeline = engine.runner, torch.Generator().manual_seed(0), engine.runner.timeline
    if runner.decode_graphs is None or runner.mixed_graphs is None:
        raise RuntimeError("step-bench measures the CUDA-graph steps: it needs the paged kernels on a GPU")
    vocab = model.cfg.vocab_size
    long_run = SamplingParams(temperature=0.0, max_new_tokens=100_000)
    for _ in range(cfg.decodes):
        engine.add_request(torch.randint(0, vocab, (cfg.context,), generator=gen).tolist(), long_run)
    for _ in range(cfg.context * cfg.decodes // cfg.max_num_batched_tokens + 20):  # prompts in, then decodes
        engine.step()
    mixed = runner.mixed_graphs
    decode_graph = next(g for g in runner.decode_graphs.sizes if g >= cfg.decodes)
    decode = {"prompt_tokens": 0, "step_tokens": cfg.decodes, "graph_tokens": decode_graph,
              "graph_ms": _replay_ms(runner.decode_graphs.graphs[decode_graph], cfg)}  # fmt: skip
    # a step was in flight during those replays, and the engine's interval for it spans them: not measured
    engine.step()
    timeline.reset()
    before = engine.metrics()
    for _ in range(cfg.timeline_steps):
        engine.step()
    d = _delta(before, engine.metrics())
    rows = [{"kind": "decode", **decode, **_gpu(timeline.summary(wait=True)["decode"]),
             "engine_interval_ms": 1e3 * d["decode_step_seconds"] / max(d["decode_steps"], 1)}]  # fmt: skip
    kernels, between = [], defaultdict(list)  # the decode-only steps between prompts: per prompt length
    try:
        for plen in cfg.prompt_tokens:
            before = engine.metrics()
            graph_ms = []
            timeline.reset()
            for i in range(cfg.prompts_per_length + 1):
                short = SamplingParams(temperature=0.0, max_new_tokens=2)  # gone before the next prompt
                engine.add_request(torch.randint(0, vocab, (plen,), generator=gen).tolist(), short)
                if i == cfg.prompts_per_length:  # the replays below would lengthen the engine's intervals
                    after = engine.metrics()
                    steps = timeline.summary(wait=True)
                engine.step()
                if i == cfg.prompts_per_length:  # the step just run: its graph, again, on its inputs
                    graph_ms.append(_replay_ms(mixed.graphs[mixed.last_size], cfg))
                    if plen == cfg.profile_prompt:
                        kernels = kernel_families(lambda n=mixed.last_size: mixed._forward(n), MIXED_KERNELS, 3)
                for _ in range(cfg.decode_steps_between):
                    engine.step()
            d = _delta(before, after)
            between["engine_interval_ms"].append(1e3 * d["decode_step_seconds"] / max(d["decode_steps"], 1))
            for k, v in _gpu(steps["decode"]).items():
                between[k].append(v)
            rows.append({"kind": "mixed", "prompt_tokens": plen, "step_tokens": mixed.last_tokens,
                         "graph_tokens": mixed.last_size,
                         "graph_ms": graph_ms[0], **_gpu(steps["mixed"]),
                         "engine_interval_ms": 1e3 * d["mixed_step_seconds"] / max(d["mixed_steps"], 1)})  # fmt: skip
    finally:
        engine.close()
    means = {k: (max if k == "gpu_idle_max_ms" else statistics.mean)(v) for k, v in between.items()}
    rows.insert(1, {"kind": "decode between prompts", **decode, **means})
    return rows, [{"prompt_tokens": cfg.profile_prompt, **k} for k in kernels]


def write_records(rows: list[dict], kernels: list[dict], cfg: StepCostConfig, device: torch.device) -> list:
    ctx = service_context(hardware_label(device))
    config = {**asdict(cfg), "model": "tinyllama-1.1b-random", "dtype": "bfloat16"}
    ctx.record(benchmark="step_costs",
               columns=[param("kind", "decode: decode-only, no prompt arriving; decode between prompts: the "
                              "decode-only steps after each prompt's step (averaged over the prompt lengths); "
                              "mixed: the decodes plus one prompt"),
                        param("prompt_tokens", "the prompt's tokens in the step"),
                        metric("step_tokens", "tokens", "tokens the step computes"),
                        metric("graph_tokens", "tokens", "the captured graph's padded size"),
                        metric("graph_ms", "ms", "GPU time of one replay of the step's graph, on its inputs"),
                        metric("gpu_busy_ms", "ms", "engine steps of this kind: GPU time from the step's input "
                               "upload to its tokens' copy, mean (GpuTimeline)"),
                        metric("gpu_idle_before_ms", "ms", "engine steps of this kind: GPU idle between the "
                               "previous step's end and the step's upload, mean (GpuTimeline)"),
                        metric("gpu_idle_max_ms", "ms", "engine steps of this kind: the longest such idle"),
                        metric("engine_interval_ms", "ms", "the engine's mean interval for steps of this kind")],
               rows=rows, config=config, timing=_replay_timing(cfg),
               method="graph_ms: CUDA events around each replay, median (time_gpu); engine intervals from its metrics",
               notes="The decode row's steps run with no prompt arriving; the next row's follow each prompt's "
               "step, and their figures are means over the prompt lengths.")  # fmt: skip
    ctx.record(benchmark="mixed_kernels",
               columns=[param("prompt_tokens"), param("kernel", "family"), metric("calls_per_step", "count"),
                        metric("us_per_step", "us", "summed kernel time in one mixed step")],
               rows=kernels, config=config, timing=TimingConfig(warmup=1, repeats=3),
               method="torch.profiler (CUPTI kernel times) over the mixed graph's forward run eagerly",
               notes="Kernel time only; the graph's replay time adds each kernel's launch and drain.")  # fmt: skip
    return ctx.written


def main() -> list:
    if not torch.cuda.is_available():
        raise SystemExit("step-bench measures CUDA-graph steps on a GPU; none is visible here")
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = Transformer(TINYLLAMA).to(device, torch.bfloat16).eval()
    cfg = StepCostConfig()
    rows, kernels = measure(model, cfg)
    for r in rows:
        print(f"  {r}", flush=True)
    return write_records(rows, kernels, cfg, device)
