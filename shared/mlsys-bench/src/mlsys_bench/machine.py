"""The harness's own benchmark: the machine's ceilings, and how close to them each size gets.

Registered like any project (entry point "mlsys-bench"), so `mlsys bench all` always has one thing
to run and the whole pipeline (probe, record, plots, README section, post) is exercised end to end.

  ceilings      the two numbers every other project divides by: copy GB/s, matmul TFLOP/s
  copy-sweep    y.copy_(x) from 1 MiB up: where the L2 cache stops helping and DRAM takes over
  matmul-sweep  torch.mm over n for fp32 (TF32 off), tf32, fp16, bf16: how large n must be to fill the chip
"""

from __future__ import annotations

import torch

from mlsys_bench.ceilings import Ceilings, measure_copy_GBps, probe_ceilings, save_to_cache, tf32_matmul
from mlsys_bench.plots import line_chart, roofline_chart
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.stats import tflops
from mlsys_bench.timing import TimingConfig, time_fn

SWEEP_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sizes(ctx: BenchContext) -> tuple[list[int], list[int], list[str]]:
    if ctx.scale == "gpu":
        return [2**k for k in range(20, 33)], [256, 512, 1024, 2048, 4096, 8192], list(SWEEP_DTYPES)
    return [2**k for k in range(16, 29, 2)], [128, 256, 512, 1024], ["fp32", "bf16"]


def _matmul_time(ctx: BenchContext, n: int, dtype: str, timing: TimingConfig) -> float:
    gen = torch.Generator(device=ctx.device).manual_seed(n)
    a = torch.randn(n, n, device=ctx.device, dtype=SWEEP_DTYPES[dtype], generator=gen)
    b = torch.randn(n, n, device=ctx.device, dtype=SWEEP_DTYPES[dtype], generator=gen)
    with tf32_matmul(dtype == "tf32"):
        return time_fn(lambda: torch.mm(a, b), device=ctx.device, config=timing).median


def record_ceilings(ctx: BenchContext) -> Ceilings:
    """Probe afresh, refresh the cache with it, and write the ceilings record."""
    c = save_to_cache(probe_ceilings(ctx.device))
    ctx.record(
        benchmark="ceilings",
        columns=[
            metric("copy_GBps", "GB/s", "device-to-device copy, bytes read + written"),
            metric("fp32_TFLOPs", "TFLOP/s", "torch.mm fp32, TF32 off"),
            metric("bf16_TFLOPs", "TFLOP/s", "torch.mm bf16, fp32 accumulate"),
            metric("ridge_fp32", "FLOP/B", "intensity where fp32 compute takes over from bandwidth"),
            metric("ridge_bf16", "FLOP/B", "intensity where bf16 compute takes over from bandwidth"),
        ],
        rows=[
            {
                "copy_GBps": c.copy_GBps,
                "fp32_TFLOPs": c.matmul_TFLOPs["fp32"],
                "bf16_TFLOPs": c.matmul_TFLOPs["bf16"],
                "ridge_fp32": c.ridge_point("fp32"),
                "ridge_bf16": c.ridge_point("bf16"),
            }
        ],
        config=c.probe,
        timing=TimingConfig(**c.probe["timing"]),
        method="cuda-events" if ctx.device.type == "cuda" else "perf-counter",
        notes="Random inputs (never zeros). Copy of one buffer far larger than L2.",
    )
    return c


def bench(ctx: BenchContext) -> None:
    c = record_ceilings(ctx)  # the sweeps are expressed against this very probe, not an older cached one
    copy_sizes, ns, dtypes = _sizes(ctx)
    method = "cuda-events" if ctx.device.type == "cuda" else "perf-counter"

    copy_timing = TimingConfig(warmup=10, repeats=50) if ctx.scale == "gpu" else TimingConfig(warmup=2, repeats=10)
    rows = []
    for size in ctx.progress(copy_sizes, "copy sweep"):
        bw = measure_copy_GBps(ctx.device, size, copy_timing)
        rows.append({"MiB": size / 2**20, "GBps": bw, "of_ceiling": bw / c.copy_GBps})
    copy = ctx.record(
        benchmark="copy-sweep",
        columns=[
            param("MiB", "MiB", "size of the source buffer"),
            metric("GBps", "GB/s", "bytes read + written"),
            metric("of_ceiling", "fraction", "of the probed copy ceiling"),
        ],
        rows=rows,
        config={"sizes_bytes": copy_sizes},
        timing=copy_timing,
        method=method,
        notes="No L2 flush: the small sizes show the cache on purpose.",
    )

    mm_timing = TimingConfig(warmup=5, repeats=20) if ctx.scale == "gpu" else TimingConfig(warmup=1, repeats=3)
    rows = []
    for dtype in ctx.progress(dtypes, "matmul sweep"):
        for n in ns:
            t = tflops(2 * n**3, _matmul_time(ctx, n, dtype, mm_timing))
            # tf32 has no probed ceiling of its own; fp16 runs on the same tensor-core path as bf16
            base = {"fp32": "fp32", "fp16": "bf16", "bf16": "bf16"}.get(dtype)
            frac = t / c.matmul_TFLOPs[base] if base else None
            rows.append({"dtype": dtype, "n": n, "TFLOPs": t, "of_ceiling": frac})
    mm = ctx.record(
        benchmark="matmul-sweep",
        columns=[
            param("dtype"),
            param("n", "", "M = N = K"),
            metric("TFLOPs", "TFLOP/s"),
            metric("of_ceiling", "fraction", "of the fp32 ceiling (fp32) or bf16 ceiling (fp16, bf16); null: tf32"),
        ],
        rows=rows,
        config={"n": ns, "dtypes": dtypes},
        timing=mm_timing,
        method=method,
        notes="torch.mm on random inputs; fp32 with TF32 off, tf32 with it on.",
    )

    ctx.figure(
        line_chart(
            {"y.copy_(x)": ([r["MiB"] for r in copy.rows], [r["GBps"] for r in copy.rows])},
            title=f"Copy bandwidth vs size, {c.device_name}",
            xlabel="buffer size (MiB)",
            ylabel="GB/s (read + write)",
            logx=True,
            hlines={f"ceiling {c.copy_GBps:.0f} GB/s": c.copy_GBps},
        ),
        "copy-sweep",
    )
    series = {d: (ns, [r["TFLOPs"] for r in mm.rows if r["dtype"] == d]) for d in dtypes}
    ctx.figure(
        line_chart(
            series,
            title=f"torch.mm throughput vs size, {c.device_name}",
            xlabel="n (M = N = K)",
            ylabel="TFLOP/s",
            logx=True,
            logy=True,
        ),
        "matmul-sweep",
    )
    elem = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}
    points = [
        (f"bf16 n={r['n']}", 2 * r["n"] ** 3 / (3 * r["n"] ** 2 * elem["bf16"]), r["TFLOPs"])
        for r in mm.rows
        if r["dtype"] == "bf16"
    ]
    ctx.figure(roofline_chart(c, points, dtype="bf16", title=f"Roofline, bf16, {c.device_name}"), "roofline")


def headline(results: ResultSet) -> list[str]:
    rec = results.get("ceilings")
    if rec is None:
        return []
    row = rec.rows[0]
    return [
        f"copy {row['copy_GBps'] / 1e3:.2f} TB/s",
        f"bf16 matmul {row['bf16_TFLOPs']:.0f} TFLOP/s",
        f"fp32 matmul {row['fp32_TFLOPs']:.1f} TFLOP/s",
    ]


PROJECT = Project(
    name="mlsys-bench",
    title="Measuring the machine: the two ceilings every result is judged against",
    summary="The shared harness: timing, environment capture, ceilings, records, plots, generated docs",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    publish=("h100-80gb-hbm3",),
)
