"""tinyllm's benchmark and its registration with the harness: training throughput and MFU per preset,
validation perplexity against the unigram baseline, prefill vs decode time, and memory (weights,
KV cache, activations) measured beside the formulas.
"""

from __future__ import annotations

import torch
from mlsys_bench.plots import bar_chart, line_chart
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.timing import TimingConfig

from tinyllm.corpus import load_corpus
from tinyllm.data import tokenize
from tinyllm.instrument import activation_memory_by_layer, time_prefill_decode
from tinyllm.perplexity import perplexity
from tinyllm.presets import get_preset
from tinyllm.train import train

# CPU smoke scale: a few seconds of the tiny preset, so `mlsys bench all` finishes anywhere
CPU_SMOKE = dict(
    max_steps=60,
    corpus_bytes=300_000,
    tokenizer_bytes=150_000,
    vocab_size=512,
    eval_every=60,
    eval_batches=4,
    max_seconds=None,
)
EVAL_TOKENS = 100_000


def _train_presets(ctx: BenchContext):
    names = ["tiny", "small", "base"] if ctx.scale == "gpu" else ["tiny"]
    rows, curves, models = [], {}, {}
    peak = ctx.ceilings.matmul_TFLOPs["bf16" if ctx.device.type == "cuda" else "fp32"]
    for name in names:
        preset = get_preset(name) if ctx.scale == "gpu" else get_preset(name, **CPU_SMOKE)
        model, tok, r = train(preset, None, ctx.device, progress=ctx.show_progress, log=print)
        val = tokenize(load_corpus(preset.train.corpus, max_bytes=preset.train.corpus_bytes).val, tok)[:EVAL_TOKENS]
        window = preset.train.seq_len  # the context it was trained on: RoPE does not extrapolate past it
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
            sliding = perplexity(model, val, window=window, stride=window // 2)
        achieved = r.flops_per_token * r.tokens_per_s / 1e12
        rows.append(
            {
                "preset": name,
                "params_M": r.num_params / 1e6,
                "layers": model.cfg.n_layers,
                "dim": model.cfg.dim,
                "vocab": model.cfg.vocab_size,
                "seq_len": preset.train.seq_len,
                "batch_tokens": preset.train.tokens_per_step,
                "steps": r.steps,
                "train_tokens_M": r.tokens / 1e6,
                "seconds": r.seconds,
                "tokens_per_s": r.tokens_per_s,
                "TFLOPs": achieved,
                "mfu": achieved / peak,
                "val_ppl": r.val_ppl,
                "sliding_ppl": sliding,
                "unigram_ppl": r.unigram_ppl,
                "peak_GiB": None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**30,
            }
        )
        curves[name] = ([s for s, _ in r.val], [p for _, p in r.val])
        models[name] = model
    return rows, curves, models, peak


def _record_training(ctx: BenchContext, rows, curves, peak) -> None:
    gpu = ctx.scale == "gpu"
    ctx.record(
        benchmark="training",
        columns=[
            param("preset"),
            param("params_M", "M"),
            param("layers"),
            param("dim"),
            param("vocab"),
            param("seq_len"),
            param("batch_tokens", "tokens"),
            metric("steps", "steps"),
            metric("train_tokens_M", "M tokens"),
            metric("seconds", "s", "wall time including evaluation"),
            metric("tokens_per_s", "tokens/s", "steady state, after 5 warm-up steps"),
            metric("TFLOPs", "TFLOP/s", "flops_per_token x tokens/s (6N + attention, PaLM appendix B)"),
            metric("mfu", "fraction", "achieved TFLOP/s over the measured library matmul ceiling"),
            metric("val_ppl", "perplexity", "fixed validation windows of seq_len"),
            metric("sliding_ppl", "perplexity", f"window seq_len, stride half, first {EVAL_TOKENS} val tokens"),
            metric("unigram_ppl", "perplexity", "train-set token frequencies, add-one smoothed"),
            metric("peak_GiB", "GiB", "torch.cuda.max_memory_allocated during training"),
        ],
        rows=rows,
        config={
            "presets": [r["preset"] for r in rows],
            "ceiling_TFLOPs": peak,
            "compile": gpu,
            "autocast": "bf16" if gpu else "fp32",
            "cpu_smoke": None if gpu else CPU_SMOKE,
        },
        timing=TimingConfig(warmup=5, repeats=1),
        method="wall-clock",
        notes="Corpus: the Python standard library's source, split by file. Throughput excludes the first 5 steps.",
    )
    fig = line_chart(
        curves, title="Validation perplexity during training", xlabel="step", ylabel="perplexity", logy=True
    )
    ctx.figure(fig, "val-perplexity")


def _record_inference(ctx: BenchContext, model, name: str) -> None:
    gpu = ctx.scale == "gpu"
    timing = TimingConfig(warmup=5, repeats=30) if gpu else TimingConfig(warmup=1, repeats=5)
    prompt = 512 if gpu else 64
    weight_bytes = sum(p.nbytes for p in model.parameters())
    kv_token = model.cfg.kv_bytes_per_token(model.lm_head.weight.element_size())
    rows = []
    for batch in [1, 8, 32, 128] if gpu else [1, 4]:
        t_pre, t_dec = time_prefill_decode(model, batch, prompt, timing)
        gbps = (weight_bytes + kv_token * (prompt + 1) * batch) / t_dec / 1e9  # a decode step reads all of both
        rows.append(
            {
                "preset": name,
                "batch": batch,
                "prompt": prompt,
                "prefill_ms": t_pre * 1e3,
                "prefill_tokens_per_s": batch * prompt / t_pre,
                "decode_ms": t_dec * 1e3,
                "decode_tokens_per_s": batch / t_dec,
                "decode_GBps": gbps,
                "of_copy": gbps / ctx.ceilings.copy_GBps,
            }
        )
    ctx.record(
        benchmark="inference",
        columns=[
            param("preset"),
            param("batch"),
            param("prompt", "tokens"),
            metric("prefill_ms", "ms"),
            metric("prefill_tokens_per_s", "tokens/s"),
            metric("decode_ms", "ms", "one step for the whole batch"),
            metric("decode_tokens_per_s", "tokens/s"),
            metric("decode_GBps", "GB/s", "(weights + KV cache read) / decode step time"),
            metric("of_copy", "fraction", "decode_GBps over the copy ceiling"),
        ],
        rows=rows,
        config={
            "dtype": str(model.lm_head.weight.dtype),
            "weight_bytes": weight_bytes,
            "attention": "SDPA",
            "cuda_graphs": False,
        },
        timing=timing,
        method="cuda-events" if gpu else "perf-counter",
        notes="Eager PyTorch, no CUDA graphs: small-batch decode is launch-bound, which is what this shows.",
    )
    fig = bar_chart(
        {f"b={r['batch']}": r["decode_tokens_per_s"] for r in rows},
        title=f"{name}: decode tokens/s by batch (prompt {prompt})",
        ylabel="tokens/s",
    )
    ctx.figure(fig, "decode")


def _record_memory(ctx: BenchContext, model, name: str) -> None:
    """Formulas beside what the tensors and the autograd hooks measured."""
    gpu = ctx.scale == "gpu"
    cfg, elt = model.cfg, model.lm_head.weight.element_size()
    cache = model.new_cache(1, cfg.max_seq_len)
    T = 1024 if gpu else 64
    train_model = model.float().train()  # training keeps fp32 master weights and autocasts to bf16 on the GPU
    by_batch = {}
    for B in (2, 4):
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), device=ctx.device)
        by_batch[B] = activation_memory_by_layer(train_model, tokens, autocast_bf16=gpu)
    acts = by_batch[4]
    # two batch sizes separate what grows with tokens (activations) from what does not (bf16 weight copies)
    per_token = (by_batch[4]["layers.1"] - by_batch[2]["layers.1"]) / (2 * T)
    fixed = by_batch[2]["layers.1"] - 2 * T * per_token
    model.eval()
    rows = [
        {"quantity": "weights", "formula_bytes": cfg.num_params() * elt, "measured_bytes": cfg.num_params() * elt},
        {
            "quantity": "kv_per_token",
            "formula_bytes": cfg.kv_bytes_per_token(elt),
            "measured_bytes": cache.bytes_per_token,
        },
        {
            "quantity": f"kv_per_{cfg.max_seq_len}_token_sequence",
            "formula_bytes": cfg.kv_bytes_per_token(elt) * cfg.max_seq_len,
            "measured_bytes": cache.nbytes,
        },
        {
            "quantity": "activations_per_layer_per_token",
            "formula_bytes": None,
            "measured_bytes": per_token,
        },
        {"quantity": "per_layer_fixed_bytes", "formula_bytes": None, "measured_bytes": fixed},
        {"quantity": f"activations_total_B{B}_T{T}", "formula_bytes": None, "measured_bytes": sum(acts.values())},
    ]
    rows[0]["measured_bytes"] = sum(p.nbytes for p in model.to(cache.k.dtype).parameters())
    ctx.record(
        benchmark="memory",
        columns=[param("quantity"), metric("formula_bytes", "bytes"), metric("measured_bytes", "bytes")],
        rows=rows,
        config={
            "preset": name,
            "dtype": str(cache.k.dtype),
            "activation_batch": [B, T],
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "activations_by_layer": acts,
            "autocast": gpu,
        },
        timing=TimingConfig(warmup=0, repeats=1),
        method="tensor-bytes",
        notes="Activations: storage saved for backward during one forward, by module (tinyllm.instrument).",
    )
    fig = bar_chart(
        {k: v / 2**20 for k, v in acts.items()},
        title=f"{name}: activation memory by module, batch {B} x {T}",
        ylabel="MiB saved for backward",
    )
    ctx.figure(fig, "activations")


def bench(ctx: BenchContext) -> None:
    rows, curves, models, peak = _train_presets(ctx)
    _record_training(ctx, rows, curves, peak)
    name = "base" if ctx.scale == "gpu" else "tiny"
    model = models[name].to(torch.bfloat16 if ctx.scale == "gpu" else torch.float32).eval()
    _record_inference(ctx, model, name)
    _record_memory(ctx, model, name)


def headline(results: ResultSet) -> list[str]:
    rec = results.get("training")
    if rec is None:
        return []
    out = []
    for r in rec.rows:
        if r["preset"] == "base":
            out.append(f"base {r['params_M']:.0f}M: {r['tokens_per_s'] / 1e3:.0f}k tok/s, MFU {100 * r['mfu']:.0f}%")
    tiny = next((r for r in rec.rows if r["preset"] == "tiny"), None)
    if tiny:
        out.append(f"tiny val ppl {tiny['val_ppl']:.0f} vs unigram {tiny['unigram_ppl']:.0f}")
    return out


PROJECT = Project(
    name="tinyllm",
    title="Transformer internals: shapes, memory and time",
    summary="The shared reference transformer: Llama model, BPE tokenizer, training, HF checkpoints",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    publish=("h100-80gb-hbm3",),
)
