"""flashattention-triton's benchmark, in the FlashAttention papers' format: batch x seqlen = 16k tokens,
hidden 2048 (32 heads of 64 or 16 of 128), seqlen 512 to 16k, causal and not, forward and backward
TFLOP/s for this kernel, SDPA's flash (FA2), cuDNN and math backends and the naive reference, all in one
run; plus peak memory of forward + backward against sequence length, naive against fused."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from mlsys_bench.memory import PeakMemory
from mlsys_bench.plots import grouped_bar_chart, line_chart
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.timing import TimingConfig, time_fn
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashattention_triton.kernels import backward as bwd_kernels
from flashattention_triton.kernels import forward as fwd_kernels
from flashattention_triton.kernels.configs import interpreting
from flashattention_triton.ops import attention
from flashattention_triton.reference import reference_attention


def _sdpa(backend: SDPBackend) -> Callable:
    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


IMPLS: dict[str, Callable] = {
    "triton": lambda q, k, v, causal: attention(q, k, v, causal=causal),
    "sdpa-flash": _sdpa(SDPBackend.FLASH_ATTENTION),
    "sdpa-cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION),
    "sdpa-math": _sdpa(SDPBackend.MATH),
    "naive": lambda q, k, v, causal: reference_attention(q, k, v, causal=causal)[0],
}
CUDA_ONLY = ("sdpa-flash", "sdpa-cudnn")
SLOW = ("sdpa-math", "naive")  # materialise T x T: fewer repeats, and they run out of memory first


def sweep_shape(scale: str) -> dict:
    """Tokens per batch, hidden size, sequence lengths, head dims and dtype of the sweep at this scale."""
    if scale == "gpu":
        return {"tokens": 16384, "hidden": 2048, "seqlens": [512, 1024, 2048, 4096, 8192, 16384],
                "head_dims": [64, 128], "dtype": "bf16"}  # fmt: skip
    # the CPU smoke run goes through Triton's interpreter, where bf16 arithmetic is not faithful
    return {"tokens": 128, "hidden": 128, "seqlens": [32, 64], "head_dims": [64], "dtype": "fp16"}


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool, direction: str) -> float:
    """The papers' count: two T x T x D matmuls forward (half of them under a causal mask), 2.5x backward."""
    f = 4 * batch * heads * seqlen * seqlen * head_dim * (0.5 if causal else 1.0)
    return f * (2.5 if direction == "bwd" else 1.0)


def _check(device: torch.device, dtype: torch.dtype, gpu: bool) -> dict[str, float]:
    """Worst error of the kernel's out/dq/dk/dv against float32, divided by the naive same-dtype error
    (FlashAttention's test criterion), over fresh inputs: ragged lengths, GQA, both masks."""
    shapes = [(2, 8, 2, 1000, 64), (2, 8, 8, 2048, 128), (1, 4, 1, 777, 128)] if gpu else [(1, 2, 1, 45, 64)]
    worst = {}
    for B, H, H_kv, T, D in shapes:
        for causal in (False, True):
            q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
            k = torch.randn(B, H_kv, T, D, device=device, dtype=dtype, requires_grad=True)
            v = torch.randn(B, H_kv, T, D, device=device, dtype=dtype, requires_grad=True)
            do = torch.randn(B, H, T, D, device=device, dtype=dtype)
            results = {}
            for name, fn, inputs in [
                ("ref", reference_attention, [t.detach().float().requires_grad_() for t in (q, k, v)]),
                ("naive", reference_attention, [t.detach().clone().requires_grad_() for t in (q, k, v)]),
                ("triton", lambda q, k, v, causal: (attention(q, k, v, causal=causal),), [q, k, v]),
            ]:
                out = fn(*inputs, causal=causal)[0]
                results[name] = [out, *torch.autograd.grad(out, inputs, do.to(out.dtype))]
            for i, part in enumerate(("out", "dq", "dk", "dv")):
                ref = results["ref"][i]
                naive = (results["naive"][i].float() - ref).abs().max().item()
                ours = (results["triton"][i].float() - ref).abs().max().item()
                if not math.isfinite(ours) or ours > 2 * naive + 1e-3:
                    raise AssertionError(f"{part} at {(B, H, H_kv, T, D)} causal={causal}: error {ours:.2e} vs "
                                         f"naive {naive:.2e}")  # fmt: skip
                worst[part] = max(worst.get(part, 0.0), ours / max(naive, 1e-6))
    return worst


def _time(fn: Callable, device: torch.device, timing: TimingConfig) -> float | None:
    try:
        return time_fn(fn, device=device, config=timing).median
    except torch.OutOfMemoryError:
        return None


def _time_both(fn: Callable, q, k, v, do, causal: bool, device: torch.device, timing: TimingConfig) -> dict:
    """Median seconds of the forward and of the backward alone (autograd.grad on a kept graph)."""
    fwd = _time(lambda: fn(q, k, v, causal), device, timing)
    if fwd is None:
        return {"fwd": None, "bwd": None}
    try:
        out = fn(q, k, v, causal)
    except torch.OutOfMemoryError:
        return {"fwd": fwd, "bwd": None}
    return {
        "fwd": fwd,
        "bwd": _time(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), device, timing),
    }


def _sweep(ctx: BenchContext, shape: dict, timing: TimingConfig, slow_timing: TimingConfig) -> list[dict]:
    gpu, dtype = ctx.scale == "gpu", DTYPES[shape["dtype"]]
    impls = [i for i in IMPLS if gpu or i not in CUDA_ONLY]
    rows = []
    points = [(d, c, n) for d in shape["head_dims"] for c in (False, True) for n in shape["seqlens"]]
    for head_dim, causal, seqlen in ctx.progress(points, "sweep"):
        batch, heads = shape["tokens"] // seqlen, shape["hidden"] // head_dim
        q, k, v = (
            torch.randn(batch, heads, seqlen, head_dim, device=ctx.device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        do = torch.randn_like(q)
        times = {impl: _time_both(IMPLS[impl], q, k, v, do, causal, ctx.device,
                                  slow_timing if impl in SLOW else timing) for impl in impls}  # fmt: skip
        if gpu:
            torch.cuda.empty_cache()
        for impl in impls:
            for direction in ("fwd", "bwd"):
                s, base = times[impl][direction], times.get("sdpa-flash", {}).get(direction)
                f = flops(batch, heads, seqlen, head_dim, causal, direction)
                rows.append({
                    "direction": direction, "impl": impl, "head_dim": head_dim, "causal": causal, "seqlen": seqlen,
                    "batch": batch, "heads": heads,
                    "ms": None if s is None else s * 1e3,
                    "TFLOPs": None if s is None else f / s / 1e12,
                    "vs_flash": None if s is None or base is None else base / s,
                })  # fmt: skip
    return rows


def _memory(ctx: BenchContext, shape: dict) -> list[dict]:
    """Peak bytes allocated during forward + backward beyond the inputs, batch 1, head dim 128."""
    gpu, dtype = ctx.scale == "gpu", DTYPES[shape["dtype"]]
    head_dim = shape["head_dims"][-1]
    heads = shape["hidden"] // head_dim
    rows = []
    for seqlen in shape["seqlens"]:
        q, k, v = (
            torch.randn(1, heads, seqlen, head_dim, device=ctx.device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        do = torch.randn_like(q)
        for impl in [i for i in ("triton", "sdpa-flash", "naive") if gpu or i not in CUDA_ONLY]:
            if not gpu:
                break  # the CUDA allocator's high-water mark is the measurement; nothing comparable on the CPU
            before = torch.cuda.memory_allocated(ctx.device)
            try:
                with PeakMemory(ctx.device) as pm:
                    torch.autograd.grad(IMPLS[impl](q, k, v, False), (q, k, v), do)
                peak = pm.result.cuda_allocated_bytes - before
            except torch.OutOfMemoryError:
                peak = None
            torch.cuda.empty_cache()
            rows.append({"impl": impl, "seqlen": seqlen, "heads": heads, "head_dim": head_dim,
                         "peak_MiB": None if peak is None else peak / 2**20})  # fmt: skip
    return rows


def _kernel_resources(ctx: BenchContext, shape: dict) -> list[dict]:
    """What the compiler made of each kernel at 4k tokens: the tile the autotuner chose, registers per
    thread, spills, shared memory, and whether its PTX issues Hopper's asynchronous warpgroup MMA (wgmma)."""
    rows = []
    seqlen, dtype = 4096, DTYPES[shape["dtype"]]
    for head_dim in shape["head_dims"]:
        for causal in (False, True):
            batch, heads = shape["tokens"] // seqlen, shape["hidden"] // head_dim
            q, k, v, do = (torch.randn(batch, heads, seqlen, head_dim, device=ctx.device, dtype=dtype)
                           for _ in range(4))  # fmt: skip
            o, lse = fwd_kernels.attention_forward(q, k, v, causal, head_dim**-0.5)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            delta = torch.empty_like(lse)
            compiled = {"forward": (fwd_kernels.launch_forward(q, k, v, o, lse, causal, head_dim**-0.5),
                                    fwd_kernels._forward_kernel)}  # fmt: skip
            launched = bwd_kernels.launch_backward(do, q, k, v, o, lse, delta, dq, dk, dv, causal, head_dim**-0.5)
            compiled["backward dK dV"] = (launched["dkdv"], bwd_kernels._dkdv_kernel)
            compiled["backward dQ"] = (launched["dq"], bwd_kernels._dq_kernel)
            for name, (kernel, tuner) in compiled.items():
                cfg = tuner.best_config
                rows.append({
                    "kernel": name, "head_dim": head_dim, "causal": causal,
                    "BLOCK_M": cfg.kwargs["BLOCK_M"], "BLOCK_N": cfg.kwargs["BLOCK_N"],
                    "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                    "wgmma": "wgmma.mma_async" in kernel.asm["ptx"],
                    "registers": kernel.n_regs, "spills": kernel.n_spills,
                    "shared_KiB": kernel.metadata.shared / 1024,
                })  # fmt: skip
    return rows


def bench(ctx: BenchContext) -> None:
    gpu = ctx.scale == "gpu"
    if ctx.device.type != "cuda" and not interpreting():
        raise SystemExit("flashattention-triton bench on a CPU runs the kernels in Triton's interpreter: "
                         "set TRITON_INTERPRET=1")  # fmt: skip
    shape = sweep_shape(ctx.scale)
    errors = _check(ctx.device, DTYPES[shape["dtype"]], gpu)
    # ~0.5 ms of queued GPU spin per call: more than the host needs to dispatch one call (Python custom op,
    # autotuner lookup, or the autograd engine's backward), so short sequences time the kernels, not dispatch
    prime = 1_000_000
    timing = (
        TimingConfig(warmup=10, repeats=30, flush_l2=True, prime_cycles_per_call=prime)
        if gpu
        else TimingConfig(warmup=1, repeats=2)
    )
    slow_timing = (TimingConfig(warmup=2, repeats=5, flush_l2=True, prime_cycles_per_call=prime) if gpu
                   else TimingConfig(warmup=0, repeats=1))  # fmt: skip
    rows = _sweep(ctx, shape, timing, slow_timing)
    method = "cuda-events" if gpu else "perf-counter"
    rec = ctx.record(
        benchmark="attention",
        columns=[
            param("direction"),
            param("impl"),
            param("head_dim"),
            param("causal"),
            param("seqlen", "tokens"),
            param("batch"),
            param("heads"),
            metric("ms", "ms"),
            metric("TFLOPs", "TFLOP/s", "4*B*H*T^2*D (halved if causal) forward, 2.5x that backward, / time"),
            metric("vs_flash", "x", "SDPA flash backend's time / this time, same shape (>1: faster than FA2)"),
        ],
        rows=rows,
        config={
            **shape,
            "max_error_vs_naive": errors,
            "impls": {
                "triton": "this project's kernels (flashattention_triton.attention)",
                "sdpa-flash": "F.scaled_dot_product_attention, SDPBackend.FLASH_ATTENTION (FlashAttention-2)",
                "sdpa-cudnn": "F.scaled_dot_product_attention, SDPBackend.CUDNN_ATTENTION",
                "sdpa-math": "F.scaled_dot_product_attention, SDPBackend.MATH",
                "naive": "flashattention_triton.reference_attention in the same dtype",
            },
        },  # fmt: skip
        timing=timing,
        method=method,
        notes=f"Slow implementations ({', '.join(SLOW)}) take {slow_timing.warmup} warm-up and {slow_timing.repeats} "
        "timed calls; a null time is an out-of-memory. Backward is timed alone (autograd.grad on a kept graph). "
        "max_error_vs_naive: the kernel's worst error against float32 divided by the naive same-dtype error.",
    )
    mem_rows = _memory(ctx, shape)
    if mem_rows:
        mem = ctx.record(
            benchmark="memory",
            columns=[param("impl"), param("seqlen", "tokens"), param("heads"), param("head_dim"),
                     metric("peak_MiB", "MiB", "peak CUDA allocation of forward + backward beyond the inputs")],
            rows=mem_rows,
            config={"batch": 1, "dtype": shape["dtype"], "causal": False},
            timing=TimingConfig(warmup=0, repeats=1),
            method="allocator-peak",
            notes="A null peak is an out-of-memory.",
        )  # fmt: skip
        series = {}
        for impl in ("triton", "sdpa-flash", "naive"):
            pts = [r for r in mem.rows if r["impl"] == impl]
            series[impl] = ([r["seqlen"] for r in pts], [r["peak_MiB"] for r in pts])
        ctx.figure(line_chart(series, title=f"peak memory of forward + backward, batch 1, {mem_rows[0]['heads']} heads "
                              f"x {mem_rows[0]['head_dim']}", xlabel="sequence length", ylabel="MiB", logx=True,
                              logy=True), "memory")  # fmt: skip
    _charts(ctx, rec.rows, shape)
    if gpu:
        ctx.record(
            benchmark="kernels",
            columns=[param("kernel"), param("head_dim"), param("causal"), param("BLOCK_M"), param("BLOCK_N"),
                     param("num_warps"), param("num_stages"), param("wgmma"), metric("registers", "per thread"),
                     metric("spills", "bytes"), metric("shared_KiB", "KiB", "shared memory per program")],
            rows=_kernel_resources(ctx, shape),
            config={"seqlen": 4096, "tokens": shape["tokens"], "hidden": shape["hidden"], "dtype": shape["dtype"]},
            timing=TimingConfig(warmup=0, repeats=1),
            method="compiler-report",
            notes="The autotuner's choice at this shape; registers and spills from ptxas through Triton; wgmma: "
            "the PTX contains wgmma.mma_async (Hopper's warpgroup tensor-core instruction).",
        )  # fmt: skip


def _charts(ctx: BenchContext, rows, shape: dict) -> None:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for head_dim in shape["head_dims"]:
        for causal in (False, True):
            for direction in ("fwd", "bwd"):
                at = {(r["impl"], r["seqlen"]): r["TFLOPs"] for r in rows
                      if (r["head_dim"], r["causal"], r["direction"]) == (head_dim, causal, direction)}  # fmt: skip
                series = {i: [at[(i, n)] for n in shape["seqlens"]] for i in impls}
                groups = [f"{n // 1024}k" if n >= 1024 else str(n) for n in shape["seqlens"]]
                mask = "causal" if causal else "no mask"
                name = "forward" if direction == "fwd" else "backward"
                ctx.figure(
                    grouped_bar_chart(groups, series, title=f"{name}, head dim {head_dim}, {mask}",
                                      xlabel="sequence length", ylabel="TFLOP/s"),
                    f"{direction}-d{head_dim}-{'causal' if causal else 'full'}",
                )  # fmt: skip


def headline(results: ResultSet) -> list[str]:
    rec = results.get("attention")
    if rec is None:
        return []
    at = {(r["direction"], r["impl"], r["head_dim"], r["causal"], r["seqlen"]): r for r in rec.rows}
    n = max(r["seqlen"] for r in rec.rows)
    d = max(r["head_dim"] for r in rec.rows)
    fwd, bwd = at[("fwd", "triton", d, False, n)], at[("bwd", "triton", d, False, n)]
    return [
        f"forward {fwd['TFLOPs']:.0f} TFLOP/s ({fwd['vs_flash']:.2f}x FA2) at d={d}, {n // 1024}k",
        f"backward {bwd['TFLOPs']:.0f} TFLOP/s ({bwd['vs_flash']:.2f}x FA2)",
    ]


PROJECT = Project(
    name="flashattention-triton",
    title="FlashAttention from scratch in Triton",
    summary="FlashAttention-2 forward and backward in Triton, GQA, a torch.library op",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    publish=("h100-80gb-hbm3",),
)
