"""mini-llm-server's offline benchmark: one request set per batch size, run to completion by the engine under
continuous batching, static batching and FIFO, and by Hugging Face `generate` in padded batches, all in
one run; generated tokens per second end to end, KV-cache utilisation at peak, and batch-1 decode
against the memory roofline (copy bandwidth / bytes read per step).

Models: a TinyLlama-1.1B-shaped model with random weights (fine for throughput, never for quality) and,
on the GPU, the shared model's trained `small` preset. Outputs have fixed lengths (no stop tokens) so
every system generates exactly the same number of tokens.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.timing import TimingConfig, time_gpu
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams
from torch.nn.attention import sdpa_kernel

from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine
from mini_llm_server.model_runner import PREFILL_BACKENDS

ADMISSION_DIVISOR = 8  # continuous batching admits new requests in groups of an eighth of the batch
TINYLLAMA = ModelConfig(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632,
                        max_seq_len=2048, rope_theta=10000.0)  # fmt: skip


def scale_settings(scale: str) -> dict:
    if scale == "gpu":
        return {"batch_sizes": [1, 8, 32, 128], "requests_per_slot": 2, "min_requests": 4, "fifo_requests": 8,
                "prompt_len": (32, 512), "output_len": (32, 256), "dtype": "bf16", "decode_tokens": 256}  # fmt: skip
    return {"batch_sizes": [1, 4], "requests_per_slot": 2, "min_requests": 4, "fifo_requests": 3,
            "prompt_len": (4, 24), "output_len": (4, 12), "dtype": "fp32", "decode_tokens": 16}  # fmt: skip


def _models(ctx: BenchContext, s: dict) -> dict[str, Transformer]:
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[s["dtype"]]
    torch.manual_seed(0)
    if ctx.scale != "gpu":
        cfg = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=256)
        return {"random-tiny": Transformer(cfg).to(ctx.device, dtype).eval()}
    from tinyllm import registry

    small, _ = registry.load("small", device=ctx.device, dtype=dtype, train_if_missing=True, progress=False)
    return {"tinyllama-1.1b-random": Transformer(TINYLLAMA).to(ctx.device, dtype).eval(), "small-trained": small}


def workload(n: int, s: dict, cfg: ModelConfig, seed: int) -> list[tuple[list[int], int]]:
    """n (prompt, output length) pairs, lengths uniform in the scale's ranges (as vLLM's throughput
    benchmark's random dataset), prompt tokens uniform over the vocabulary; prompts shortened where the
    model's context could not hold the longest output after them."""
    g = torch.Generator().manual_seed(seed)
    longest_prompt = min(s["prompt_len"][1], cfg.max_seq_len - s["output_len"][1])
    reqs = []
    for _ in range(n):
        p = int(torch.randint(s["prompt_len"][0], longest_prompt + 1, (), generator=g))
        o = int(torch.randint(s["output_len"][0], s["output_len"][1] + 1, (), generator=g))
        reqs.append((torch.randint(0, cfg.vocab_size, (p,), generator=g).tolist(), o))
    return reqs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Free a finished engine's KV pool and graphs now (the runner and its graphs refer to each other, so
    only the cycle collector frees them), before the next engine sizes its pool from free memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_engine(model: Transformer, config: EngineConfig, reqs) -> dict:
    engine = LLMEngine(model, config)
    for prompt, out_len in reqs:
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_new_tokens=out_len))
    device = model.lm_head.weight.device
    _sync(device)
    t0 = time.perf_counter()
    generated = 0
    while engine.has_unfinished():
        generated += sum(len(o.new_tokens) for o in engine.step())
    _sync(device)
    elapsed = time.perf_counter() - t0
    m = engine.metrics()
    del engine
    release_memory(device)
    return {"tokens": generated, "seconds": elapsed, "kv_util": m["kv_util_at_peak"],
            "preemptions": m["preemptions"]}  # fmt: skip


def run_hf(hf_model, batch_size: int, reqs, device: torch.device) -> dict:
    """HF generate in arrival-order batches, left-padded, each batch decoding as long as its longest output;
    only each request's own output length counts as generated."""
    _sync(device)
    t0 = time.perf_counter()
    generated = 0
    for i in range(0, len(reqs), batch_size):
        chunk = reqs[i : i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=device)
        new = max(o for _, o in chunk)
        with sdpa_kernel(PREFILL_BACKENDS):  # the engine's choice of SDPA kernels, for a fair comparison
            hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0)  # fmt: skip
        generated += sum(o for _, o in chunk)
    _sync(device)
    return {"tokens": generated, "seconds": time.perf_counter() - t0, "kv_util": None, "preemptions": None}


def _hf_model(model: Transformer, device: torch.device):
    from tinyllm.checkpoint import save_model
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp))
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=model.lm_head.weight.dtype)
    return hf.to(device).eval()


# batch-1 decode modes: CUDA graphs with steps overlapped (the default engine), graphs with every step's token
# read before the next is scheduled, and eager
DECODE_MODES = {"cuda-graphs": {}, "cuda-graphs, no overlap": {"overlap_steps": False}, "eager": {"cuda_graphs": False}}


# kernel families of the batch-1 decode forward, by a substring of the kernel's name
KERNEL_FAMILIES = {"_gemv": "split-K GEMV (Q/K/V, O, gate/up with SwiGLU, down)",
                   "_paged_decode": "decode attention (with rotary and the cache write)",
                   "_add_rmsnorm": "residual add + RMSNorm", "_embed": "embedding",
                   "nvjet": "LM head (cuBLAS)", "gemm": "LM head (cuBLAS)"}  # fmt: skip


def kernel_families(forward: Callable[[], object], families: dict[str, str], repeats: int = 5) -> list[dict]:
    """GPU time per call of `forward` by kernel family (the first key of `families` in a kernel's name, else
    "other"), from the profiler's kernel records over `repeats` calls after one warm-up."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        forward()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                forward()
            torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        name = next((f for key, f in families.items() if key in e.name), "other")
        calls_us = totals.setdefault(name, [0, 0.0])
        calls_us[0] += 1
        calls_us[1] += e.device_time_total
    return [{"kernel": k, "calls_per_step": n / repeats, "us_per_step": us / repeats}
            for k, (n, us) in sorted(totals.items(), key=lambda kv: -kv[1][1])]  # fmt: skip


def kernel_profile(graphs, repeats: int = 5) -> list[dict]:
    """GPU time per decode step by kernel family: the batch-1 graph's forward run eagerly under the profiler
    (the same kernels the graph replays, at the last step's context), summed per family."""
    return kernel_families(lambda: graphs._forward(1), KERNEL_FAMILIES, repeats)


def decode_rate(model: Transformer, tokens: int, mode: str) -> dict:
    """Batch-1 decode through the engine: tokens/s from the first sampled token to the last, and, under CUDA
    graphs, the rate of the batch-1 graph replayed alone (the GPU's share of a step, without the host's)."""
    prompt, block_size = list(range(1, 17)), EngineConfig().block_size
    # a pool of exactly this request's blocks: the batch-1 step reads only its own cache either way
    config = EngineConfig(num_blocks=-(-(len(prompt) + tokens) // block_size), max_num_seqs=1, **DECODE_MODES[mode])
    engine = LLMEngine(model, config)
    engine.add_request(prompt, SamplingParams(temperature=0.0, max_new_tokens=tokens))
    engine.step()  # prefill and the first token
    device = model.lm_head.weight.device
    _sync(device)
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    _sync(device)
    rate = (tokens - 1) / (time.perf_counter() - t0)
    graphs, replay = engine.runner.decode_graphs, None
    if graphs is not None and 1 in graphs.graphs:
        timing = TimingConfig(warmup=3, repeats=50, prime_cycles_per_call=2_000_000)  # a graph launch is host work too
        replay = 1.0 / time_gpu(graphs.graphs[1].replay, config=timing).median
    kernels = kernel_profile(graphs) if replay is not None and mode == "cuda-graphs" else []
    del engine, graphs
    release_memory(device)
    return {"tok_per_s": rate, "replay_tok_per_s": replay, "kernels": kernels}


def _run_system(system: str, model: Transformer, hf, batch: int, reqs) -> dict:
    if system == "hf-generate":
        return run_hf(hf, batch, reqs, model.lm_head.weight.device)
    group = max(1, batch // ADMISSION_DIVISOR) if system == "continuous" else 1
    config = EngineConfig(policy=system, max_num_seqs=batch, max_num_batched_tokens=2048, min_admission=group)
    return run_engine(model, config, reqs)


def _log(model: str, system: str, batch: int, r: dict) -> None:
    print(f"  {model} {system} batch {batch}: {r['tokens']} tokens in {r['seconds']:.1f} s, "
          f"{r['tokens'] / r['seconds']:.0f} tok/s", flush=True)  # fmt: skip


def bench(ctx: BenchContext) -> None:
    s = scale_settings(ctx.scale)
    rows, decode_rows, kernel_rows = [], [], []
    models = _models(ctx, s)
    for name, model in ctx.progress(models.items(), "models"):
        # HF generate is host-bound and slow: it runs once per scale, on the first model (the shape)
        hf = _hf_model(model, ctx.device) if name == next(iter(models)) else None
        run_engine(model, EngineConfig(), workload(2, s, model.cfg, seed=99))  # warm-up: allocator, kernels
        fifo_reqs = workload(s["fifo_requests"], s, model.cfg, seed=1)
        fifo = run_engine(model, EngineConfig(policy="fifo"), fifo_reqs)
        _log(name, "fifo", 1, fifo)
        for bs in s["batch_sizes"]:
            reqs = workload(max(s["min_requests"], s["requests_per_slot"] * bs), s, model.cfg, seed=bs)
            results = {}
            for system in ("continuous", "static", "hf-generate") if hf is not None else ("continuous", "static"):
                results[system] = _run_system(system, model, hf, bs, reqs)
                _log(name, system, bs, results[system])
            results["fifo"] = fifo  # one at a time: the same at every batch size, measured once on its own set
            for system, r in results.items():
                rows.append({"model": name, "batch": bs, "system": system, "requests": len(reqs if system != "fifo"
                             else fifo_reqs), "tokens": r["tokens"], "seconds": r["seconds"],
                             "tok_per_s": r["tokens"] / r["seconds"], "kv_util": r["kv_util"],
                             "preemptions": r["preemptions"]})  # fmt: skip
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        roofline = ctx.ceilings.copy_GBps * 1e9 / weight_bytes if ctx.ceilings else None
        for mode in DECODE_MODES if ctx.device.type == "cuda" else ("eager",):
            r = decode_rate(model, s["decode_tokens"], mode)
            kernel_rows += [{"model": name, **k} for k in r.pop("kernels")]
            print(f"  {name} batch-1 decode, {mode}: {r}", flush=True)
            decode_rows.append({"model": name, "mode": mode,
                                "weight_MB": weight_bytes / 1e6, **r, "roofline_tok_per_s": roofline,
                                "of_roofline": None if roofline is None else r["tok_per_s"] / roofline})  # fmt: skip
        del hf
    gpu = ctx.scale == "gpu"
    ctx.record(
        benchmark="throughput",
        columns=[
            param("model"),
            param("batch", "max sequences"),
            param("system"),
            param("requests"),
            metric("tokens", "tokens"),
            metric("seconds", "s"),
            metric("tok_per_s", "tokens/s"),
            metric("kv_util", "fraction", "at the step with the most KV blocks in use: live tokens / slots held"),
            metric("preemptions", "count"),
        ],  # fmt: skip
        rows=rows,
        config={**s, "weights": "random for tinyllama-1.1b-random / random-tiny; trained for small-trained"},
        timing=TimingConfig(warmup=1, repeats=1),
        method="wall-clock" + (" with cuda synchronize" if gpu else ""),
        notes="tok_per_s: generated tokens / wall time of the whole request set, prefill included. fifo is "
        "measured once on its own request set and repeated on every batch-size row. SDPA kernels: flash, "
        "memory-efficient or math for both the engine's prompts and HF (cuDNN's per-shape plans excluded).",
    )
    ctx.record(
        benchmark="decode",
        columns=[
            param("model"),
            param("mode", "CUDA graphs (steps overlapped with the host's work, or not) or eager"),
            metric("weight_MB", "MB"),
            metric("tok_per_s", "tokens/s", "through the engine: schedule, forward, sample"),
            metric("replay_tok_per_s", "tokens/s", "the batch-1 CUDA graph replayed alone (GPU time only)"),
            metric("roofline_tok_per_s", "tokens/s", "copy bandwidth / weight bytes"),
            metric("of_roofline", "fraction"),
        ],  # fmt: skip
        rows=decode_rows,
        config={"prompt_tokens": 16, "decode_tokens": s["decode_tokens"]},
        timing=TimingConfig(warmup=0, repeats=1),
        method="wall-clock",
        notes="Batch-1 decode through the engine, wall clock from the first sampled token to the last; "
        "replay_tok_per_s from CUDA events around replays of the batch-1 graph.",
    )
    if kernel_rows:
        ctx.record(
            benchmark="decode_kernels",
            columns=[
                param("model"),
                param("kernel", "family"),
                metric("calls_per_step", "count"),
                metric("us_per_step", "us", "summed kernel time in one batch-1 decode step"),
            ],  # fmt: skip
            rows=kernel_rows,
            config={"prompt_tokens": 16, "context": 16 + s["decode_tokens"]},
            timing=TimingConfig(warmup=1, repeats=5),
            method="torch.profiler (CUPTI kernel times) over the batch-1 graph's forward run eagerly",
            notes="Kernel time only: the gaps between kernels (each kernel's launch and drain inside the graph) "
            "are the graph's replay time less the sum.",
        )


def headline(results: ResultSet) -> list[str]:
    rec = results.get("throughput")
    if rec is None:
        return []
    at = {(r["model"], r["batch"], r["system"]): r for r in rec.rows}
    model, bs = rec.rows[0]["model"], max(r["batch"] for r in rec.rows)
    c, f = at[(model, bs, "continuous")], at[(model, bs, "fifo")]
    return [
        f"continuous batching {c['tok_per_s']:.0f} tok/s at batch {bs}, {c['tok_per_s'] / f['tok_per_s']:.1f}x FIFO"
    ]


PROJECT = Project(
    name="mini-llm-server",
    title="Building a mini vLLM",
    summary="a small vLLM: continuous batching over a paged KV cache, CUDA-graph decode, an OpenAI-compatible service",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    # the GPU for every measurement, plus the one deliberate CPU measurement: the overload soak (soak.py)
    publish=("h100-80gb-hbm3", "h200", "cpu-amd-epyc"),
    template_globals={"median": statistics.median},
)
