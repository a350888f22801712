"""The ladder's benchmark: every rung and cuBLAS in one run, correctness first, then TFLOP/s by size,
the compiler's resource report per rung and an Nsight Compute summary at 4096.
"""

from __future__ import annotations

import torch
from mlsys_bench.ceilings import tf32_matmul
from mlsys_bench.plots import bar_chart, line_chart, roofline_chart
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.timing import TimingConfig, time_gpu

from cuda_matmul.build import default_arch
from cuda_matmul.ladder import RUNGS, Rung
from cuda_matmul.profile import ncu_summary, resource_usage
from cuda_matmul.tune import NAMES, TUNED

SQUARE = [256, 512, 1024, 2048, 4096, 8192]
# (label, M tokens, N out features, K in features): a Llama-7B layer over 8192 tokens
TRANSFORMER = [("qkv_proj", 8192, 12288, 4096), ("mlp_up", 8192, 11008, 4096), ("mlp_down", 8192, 4096, 11008)]
SHAPES = [(str(n), n, n, n) for n in SQUARE] + TRANSFORMER
CHECK_SHAPES = [(509, 385, 263), (1024, 1024, 1024), (64, 8, 1000), (1, 1, 1)]
TOLERANCE = 1e-5  # relative Frobenius error against float64, fp32 accumulation over K <= 1000
PROFILE_N = 4096
FP32_LABELS = {r.label for r in RUNGS if r.dtype == "fp32"}


def _inputs(rung_dtype: str, M: int, N: int, K: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn(M, K, device="cuda", generator=g)
    b = torch.randn(K, N, device="cuda", generator=g)
    if rung_dtype == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    return a, b


def check(rung: Rung) -> float:
    """Worst relative error over CHECK_SHAPES against float64 on the same (rounded) inputs; raises if over."""
    from cuda_matmul.ops import gemm

    worst = 0.0
    for i, (M, N, K) in enumerate(CHECK_SHAPES):
        a, b = _inputs(rung.dtype, M, N, K, seed=100 + i)  # fresh inputs per shape
        c0 = torch.randn(M, N, device="cuda")
        ref = 0.5 * (a.double() @ b.double()) + 2.0 * c0.double()
        c = c0.clone()
        gemm(a, b, rung=rung.number, c=c, alpha=0.5, beta=2.0)
        err = ((c.double() - ref).norm() / ref.norm()).item()
        poisoned = torch.full((M, N), float("nan"), device="cuda")  # beta = 0: C is write-only, NaN must vanish
        gemm(a, b, rung=rung.number, c=poisoned)
        err = max(err, ((poisoned.double() - a.double() @ b.double()).norm() / (a.double() @ b.double()).norm()).item())
        if not err <= TOLERANCE:
            raise AssertionError(f"rung {rung.label} wrong at {M}x{N}x{K}: relative error {err:.2e}")
        worst = max(worst, err)
    return worst


def _time(fn, flops: float) -> float:
    """TFLOP/s of fn, with repeats scaled so slow rungs are not timed for minutes."""
    probe = time_gpu(fn, config=TimingConfig(warmup=1, repeats=1, flush_l2=True)).median
    repeats = max(3, min(50, int(0.3 / max(probe, 1e-6))))
    t = time_gpu(fn, config=TimingConfig(warmup=2, repeats=repeats, flush_l2=True))
    return flops / t.median / 1e12


def bench_gpu(ctx: BenchContext) -> None:
    from cuda_matmul.ops import gemm

    errors = {r.label: check(r) for r in ctx.progress(RUNGS, "correctness")}
    rows = []
    for label, M, N, K in ctx.progress(SHAPES, "ladder"):
        flops = 2.0 * M * N * K
        a32, b32 = _inputs("fp32", M, N, K, seed=M + N + K)
        a16, b16 = a32.bfloat16(), b32.bfloat16()
        c = torch.empty(M, N, device="cuda")
        with tf32_matmul(False):
            base = {"fp32": _time(lambda a=a32, b=b32: torch.mm(a, b), flops)}
        base["bf16"] = _time(lambda a=a16, b=b16: torch.mm(a, b), flops)
        for name, tf in (("cublas_fp32", base["fp32"]), ("cublas_bf16", base["bf16"])):
            rows.append(
                {
                    "rung": name,
                    "shape": label,
                    "M": M,
                    "N": N,
                    "K": K,
                    "TFLOPs": tf,
                    "of_cublas": 1.0,
                    "of_ceiling": tf / ctx.ceilings.matmul_TFLOPs[name[-4:]],
                }
            )
        for r in RUNGS:
            a, b = (a16, b16) if r.dtype == "bf16" else (a32, b32)
            tf = _time(lambda a=a, b=b, r=r, c=c: gemm(a, b, rung=r.number, c=c), flops)
            rows.append(
                {
                    "rung": r.label,
                    "shape": label,
                    "M": M,
                    "N": N,
                    "K": K,
                    "TFLOPs": tf,
                    "of_cublas": tf / base[r.dtype],
                    "of_ceiling": tf / ctx.ceilings.matmul_TFLOPs[r.dtype],
                }
            )
    timing = TimingConfig(warmup=2, repeats=50, flush_l2=True)
    ladder = ctx.record(
        benchmark="ladder",
        columns=[
            param("rung"),
            param("shape"),
            param("M"),
            param("N"),
            param("K"),
            metric("TFLOPs", "TFLOP/s"),
            metric("of_cublas", "fraction", "of cuBLAS at the rung's dtype (fp32 with TF32 off, or bf16)"),
            metric("of_ceiling", "fraction", "of the probed matmul ceiling for the dtype"),
        ],
        rows=rows,
        config={
            "square": SQUARE,
            "transformer": TRANSFORMER,
            "check_shapes": CHECK_SHAPES,
            "max_rel_error": errors,
            "tolerance": TOLERANCE,
            "repeats": "3 to 50, about 0.3 s of work per measurement",
        },
        timing=timing,
        method="cuda-events",
        notes="C = A @ B (alpha 1, beta 0), row-major, random inputs; L2 flushed before every call. "
        "The bf16 rung writes fp32 C; cuBLAS bf16 (torch.mm) writes bf16.",
    )
    _figures(ctx, ladder)
    _resources(ctx)
    _ncu(ctx)
    _tuning(ctx)


def _tuning(ctx: BenchContext) -> None:
    from cuda_matmul.tune import sweep

    rows = sweep(PROFILE_N)
    if not rows:
        print("nvcc not found: no tuning sweep")
        return
    ctx.record(
        benchmark="tuning",
        columns=[
            *(param(n) for n in NAMES),
            param("threads"),
            param("smem_bytes", "bytes"),
            metric("TFLOPs", "TFLOP/s"),
            metric("median_ms", "ms"),
            metric("rel_err", "", "vs a reference kernel"),
        ],
        rows=[{k: r.get(k) for k in (*NAMES, "threads", "smem_bytes", "TFLOPs", "median_ms", "rel_err")} for r in rows],
        config={"n": PROFILE_N, "probe": "csrc/tune/tune_main.cu", "repeats": 20, "warmup": 3},
        timing=TimingConfig(warmup=3, repeats=20, flush_l2=True),
        method="cuda-events",
        notes="Each configuration of rung 8's kernel compiled alone and timed at n^3; rung 8 uses the fastest.",
    )


def _figures(ctx: BenchContext, ladder) -> None:
    at = {r["rung"]: r["TFLOPs"] for r in ladder.rows if r["shape"] == str(PROFILE_N)}
    fp32 = {r.label: at[r.label] for r in RUNGS if r.dtype == "fp32"}
    ctx.figure(
        bar_chart(
            fp32,
            title=f"FP32 ladder at {PROFILE_N}^3 on {ctx.ceilings.device_name}",
            ylabel="TFLOP/s",
            reference=(f"cuBLAS fp32 {at['cublas_fp32']:.1f}", at["cublas_fp32"]),
        ),
        "ladder",
    )
    tc = {r.label: at[r.label] for r in RUNGS if r.dtype == "bf16"} | {"cuBLAS bf16": at["cublas_bf16"]}
    ctx.figure(bar_chart(tc, title=f"bf16 tensor cores at {PROFILE_N}^3", ylabel="TFLOP/s"), "tensor-core")
    series = {}
    for name in [r.label for r in RUNGS] + ["cublas_fp32", "cublas_bf16"]:
        series[name] = (
            SQUARE,
            [next(r["TFLOPs"] for r in ladder.rows if r["rung"] == name and r["shape"] == str(n)) for n in SQUARE],
        )
    ctx.figure(
        line_chart(
            series, title="TFLOP/s by size (square)", xlabel="n = M = N = K", ylabel="TFLOP/s", logx=True, logy=True
        ),
        "sweep",
    )


def _resources(ctx: BenchContext) -> None:
    usage = resource_usage()
    if not usage:
        print("nvcc not found: no resource report")
        return
    cols = ["registers", "smem_bytes", "stack_bytes", "spill_stores", "spill_loads"]
    ctx.record(
        benchmark="resources",
        columns=[param("rung"), *(metric(c, "per thread" if c == "registers" else "bytes") for c in cols)],
        rows=[{"rung": k, **v} for k, v in usage.items()],
        config={"compiler": "nvcc --resource-usage", "arch": f"sm_{default_arch().replace('.', '')}"},
        timing=TimingConfig(warmup=0, repeats=1),
        method="ptxas",
        notes="The fast path of each rung (the vectorised variant where a rung has two).",
    )


def _ncu(ctx: BenchContext) -> None:
    kernels = ncu_summary(PROFILE_N)
    if kernels is None:
        print("ncu not found: no Nsight Compute summary")
        return
    names = [r.label for r in RUNGS] + ["cublas_fp32", "cublas_bf16"]
    if len(kernels) != len(names):
        print(f"ncu saw {len(kernels)} GEMM kernels, expected {len(names)}: {[k['kernel'][:40] for k in kernels]}")
        names = names[: len(kernels)]
    flops = 2.0 * PROFILE_N**3
    rows = [
        {
            "rung": n,
            "kernel": k["kernel"][:80],
            "occupancy_pct": k.get("occupancy_pct"),
            "dram_GB": k.get("dram_bytes", 0) / 1e9,
            "dram_pct": k.get("dram_pct"),
            "sm_pct": k.get("sm_pct"),
            "intensity": flops / k["dram_bytes"] if k.get("dram_bytes") else None,
            "duration_ms": k.get("duration_ns", 0) / 1e6,
            "issue_pct": k.get("issue_pct"),
            "short_scoreboard": k.get("short_scoreboard"),
            "smem_conflicts_M": k["smem_conflicts"] / 1e6 if "smem_conflicts" in k else None,
        }
        for n, k in zip(names, kernels, strict=True)
    ]
    rec = ctx.record(
        benchmark="ncu",
        columns=[
            param("rung"),
            param("kernel"),
            metric("occupancy_pct", "%", "achieved occupancy"),
            metric("dram_GB", "GB", "DRAM bytes read + written"),
            metric("dram_pct", "%", "of peak DRAM throughput"),
            metric("sm_pct", "%", "SM throughput, of peak"),
            metric("intensity", "FLOP/B", "FLOPs / DRAM bytes"),
            metric("duration_ms", "ms", "one call, under the profiler"),
            metric("issue_pct", "%", "cycles a scheduler issued an instruction"),
            metric("short_scoreboard", "cycles", "per issued instruction, waiting on shared-memory loads"),
            metric("smem_conflicts_M", "millions", "shared-memory bank conflicts"),
        ],
        rows=rows,
        config={"n": PROFILE_N, "clock_control": "none"},
        timing=TimingConfig(warmup=0, repeats=1),
        method="nsight-compute",
        notes="One launch per kernel under ncu (kernel replay); cuBLAS kernels as named by the library.",
    )
    pts = [
        (r["rung"], r["intensity"], flops / (r["duration_ms"] * 1e-3) / 1e12)
        for r in rec.rows
        if r["intensity"] and r["rung"] in FP32_LABELS | {"cublas_fp32"}
    ]
    ctx.figure(
        roofline_chart(
            ctx.ceilings,
            pts,
            dtype="fp32",
            title=f"FP32 rungs on the roofline, {PROFILE_N}^3 (DRAM bytes from Nsight Compute)",
        ),
        "roofline",
    )


def bench_cpu(ctx: BenchContext) -> None:
    """No GPU: the kernels cannot run, but the compiler's resource report still says what they cost."""
    _resources(ctx)


def bench(ctx: BenchContext) -> None:
    bench_gpu(ctx) if ctx.scale == "gpu" else bench_cpu(ctx)


def headline(results: ResultSet) -> list[str]:
    rec = results.get("ladder")
    if rec is None:
        return []
    at = {r["rung"]: r for r in rec.rows if r["shape"] == str(PROFILE_N)}
    best = max((at[label] for label in FP32_LABELS), key=lambda r: r["TFLOPs"])
    tc = max((at[r.label] for r in RUNGS if r.dtype == "bf16"), key=lambda r: r["TFLOPs"])
    return [
        f"best FP32 rung {100 * best['of_cublas']:.0f}% of cuBLAS at {PROFILE_N}",
        f"tensor cores {100 * tc['of_cublas']:.0f}% of cuBLAS bf16",
        f"{best['TFLOPs'] / at['01_naive']['TFLOPs']:.0f}x over naive",
    ]


PROJECT = Project(
    name="cuda-matmul",
    title="Climbing the SGEMM ladder on an H100",
    summary="CUDA matrix multiplication from the naive kernel to tensor cores, each rung a torch op",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    publish=("h100-80gb-hbm3",),
    template_globals={"rungs": RUNGS, "tuned": dict(zip(NAMES, TUNED, strict=True))},
)
