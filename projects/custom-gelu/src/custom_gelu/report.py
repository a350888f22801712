"""custom-gelu's benchmark: forward, backward and fused bias+GELU against torch's GELU, torch.compile's
generated kernel and the unfused bias-add + GELU, in GB/s and as a fraction of the copy ceiling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mlsys_bench.plots import bar_chart, line_chart
from mlsys_bench.project import BenchContext, Project, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.results import ResultSet
from mlsys_bench.timing import TimingConfig, time_fn

from custom_gelu.functional import APPROXIMATE
from custom_gelu.ops import NS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOAL_N = 1 << 26
COLS = 4096  # the bias length of the fused kernel: an MLP hidden width


def _check(device: torch.device) -> dict[str, float]:
    """Worst relative error of every op against float64, per dtype, on fresh inputs."""
    errs = {}
    for name, dtype in DTYPES.items():
        x = torch.randn(257, COLS // 8, device=device).to(dtype)
        b, g = torch.randn(COLS // 8, device=device).to(dtype), torch.randn_like(x)
        worst = 0.0
        for mode in APPROXIMATE:
            m = APPROXIMATE[mode]
            pairs = [
                (NS.gelu_fwd(x, m), F.gelu(x.double(), approximate=mode)),
                (NS.gelu_bwd(g, x, m), torch.ops.aten.gelu_backward(g.double(), x.double(), approximate=mode)),
                (NS.bias_gelu_fwd(x, b, m), F.gelu(x.double() + b.double(), approximate=mode)),
            ]
            for got, ref in pairs:
                worst = max(worst, ((got.double() - ref).norm() / ref.norm()).item())
        limit = 1e-6 if dtype == torch.float32 else 1e-2
        if worst > limit:
            raise AssertionError(f"{name}: relative error {worst:.2e} over {limit}")
        errs[name] = worst
    return errs


def _variants(mode: str):
    m = APPROXIMATE[mode]
    aten_bwd = torch.ops.aten.gelu_backward
    # dynamic=False: inductor specialises a kernel per shape, its best case, rather than one generic kernel
    compiled_fwd = torch.compile(lambda x: F.gelu(x, approximate=mode), dynamic=False)
    compiled_bwd = torch.compile(lambda g, x: aten_bwd(g, x, approximate=mode), dynamic=False)

    def unfused(x, b, g):
        z = x + b
        F.gelu(z, approximate=mode)
        dz = aten_bwd(g, z, approximate=mode)
        return dz, dz.sum(0)

    return {
        "forward": {
            "custom": lambda x, b, g: NS.gelu_fwd(x, m),
            "torch": lambda x, b, g: F.gelu(x, approximate=mode),
            "compiled": lambda x, b, g: compiled_fwd(x),
            # the same traffic as the forward (read x, allocate and write y): the ceiling at this size
            "copy": lambda x, b, g: x.clone(),
        },
        "backward": {
            "custom": lambda x, b, g: NS.gelu_bwd(g, x, m),
            "torch": lambda x, b, g: aten_bwd(g, x, approximate=mode),
            "compiled": lambda x, b, g: compiled_bwd(g, x),
        },
        "bias_fwd_bwd": {
            "custom": lambda x, b, g: (NS.bias_gelu_fwd(x, b, m), NS.bias_gelu_bwd(g, x, b, m)),
            "torch": unfused,
            "compiled": torch.compile(unfused),
        },
    }


BYTES_PER_ELEMENT = {"forward": 2, "backward": 3, "bias_fwd_bwd": 5}  # tensors read + written, at least


def bench(ctx: BenchContext) -> None:
    gpu = ctx.scale == "gpu"
    errors = _check(ctx.device)
    sizes = [1 << k for k in range(16, 29, 2)] if gpu else [1 << 16, 1 << 18]
    modes = list(APPROXIMATE)
    timing = TimingConfig(warmup=10, repeats=50, flush_l2=gpu) if gpu else TimingConfig(warmup=2, repeats=10)
    rows = []
    # every (size, dtype, mode) is its own specialised graph: allow them all instead of falling back to eager
    limits = {"recompile_limit": 256, "accumulated_recompile_limit": 4096}
    with torch._dynamo.config.patch(**{k: v for k, v in limits.items() if hasattr(torch._dynamo.config, k)}):
        rows = _measure(ctx, modes, sizes, timing)
    _record(ctx, rows, sizes, errors, timing, gpu)


def _measure(ctx: BenchContext, modes, sizes, timing) -> list[dict]:
    gpu = ctx.scale == "gpu"
    rows = []
    for mode in ctx.progress(modes, "modes"):
        for dname, dtype in DTYPES.items():
            variants = _variants(mode)  # fresh compiled functions per dtype: 7 shapes stay under the recompile limit
            for n in sizes:
                if mode == "tanh" and n != (GOAL_N if gpu else sizes[-1]):
                    continue  # the size sweep is for the exact form; tanh at the goal size only
                x = torch.randn(n // COLS if n >= COLS else 1, min(n, COLS), device=ctx.device).to(dtype)
                b, g = torch.randn(x.shape[-1], device=ctx.device).to(dtype), torch.randn_like(x)
                for op, impls in variants.items():
                    nbytes = BYTES_PER_ELEMENT[op] * x.numel() * x.element_size()
                    for impl, fn in impls.items():
                        t = time_fn(lambda fn=fn, x=x, b=b, g=g: fn(x, b, g), device=ctx.device, config=timing).median
                        gbps = nbytes / t / 1e9
                        rows.append(
                            {
                                "op": op,
                                "impl": impl,
                                "mode": mode,
                                "dtype": dname,
                                "n": x.numel(),
                                "us": t * 1e6,
                                "GBps": gbps,
                                "of_copy": gbps / ctx.ceilings.copy_GBps,
                            }
                        )
    return rows


def _record(ctx: BenchContext, rows, sizes, errors, timing, gpu: bool) -> None:
    rec = ctx.record(
        benchmark="gelu",
        columns=[
            param("op"),
            param("impl"),
            param("mode"),
            param("dtype"),
            param("n", "elements"),
            metric("us", "us"),
            metric("GBps", "GB/s", "minimum bytes (read + write) / time"),
            metric("of_copy", "fraction", "of the probed copy bandwidth"),
        ],
        rows=rows,
        config={
            "sizes": sizes,
            "bias_cols": COLS,
            "bytes_per_element": BYTES_PER_ELEMENT,
            "max_rel_error": errors,
            "custom": "this extension",
            "torch": "F.gelu / aten.gelu_backward (unfused add + GELU + sum for bias)",
            "compiled": "torch.compile (inductor) of the same torch code",
            "copy": "x.clone(), forward only: a plain copy of the same size",
        },
        timing=timing,
        method="cuda-events" if gpu else "perf-counter",
        notes="GB/s counts the least traffic each op must make, the same for every implementation: x in, y out "
        "(forward); grad and x in, dx out (backward); forward then backward for the bias form.",
    )
    if gpu:
        for dname in DTYPES:
            series = {}
            for op in ("forward", "backward"):
                for impl in ("custom", "torch", "compiled"):
                    pts = [
                        r for r in rec.rows if (r["op"], r["impl"], r["mode"], r["dtype"]) == (op, impl, "none", dname)
                    ]
                    series[f"{op} {impl}"] = ([r["n"] for r in pts], [r["GBps"] for r in pts])
            pts = [
                r for r in rec.rows if (r["op"], r["impl"], r["mode"], r["dtype"]) == ("forward", "copy", "none", dname)
            ]
            series["copy, same size"] = ([r["n"] for r in pts], [r["GBps"] for r in pts])
            ctx.figure(
                line_chart(
                    series,
                    title=f"GELU {dname}: GB/s by size",
                    xlabel="elements",
                    ylabel="GB/s",
                    logx=True,
                    hlines={f"copy {ctx.ceilings.copy_GBps:.0f} GB/s": ctx.ceilings.copy_GBps},
                ),
                f"sweep-{dname}",
            )
        at = {(r["op"], r["impl"], r["dtype"]): r for r in rec.rows if r["n"] == GOAL_N and r["mode"] == "none"}
        fused = {
            f"{impl} {d}": at[("bias_fwd_bwd", impl, d)]["us"]
            for d in DTYPES
            for impl in ("custom", "torch", "compiled")
        }
        ctx.figure(
            bar_chart(fused, title=f"bias + GELU forward and backward, {GOAL_N:,} elements", ylabel="us"), "fused"
        )


def headline(results: ResultSet) -> list[str]:
    rec = results.get("gelu")
    if rec is None:
        return []
    at = {(r["op"], r["impl"], r["dtype"]): r for r in rec.rows if r["n"] == GOAL_N and r["mode"] == "none"}
    fwd = at[("forward", "custom", "bf16")]
    speed = at[("bias_fwd_bwd", "torch", "bf16")]["us"] / at[("bias_fwd_bwd", "custom", "bf16")]["us"]
    return [f"bf16 forward {100 * fwd['of_copy']:.0f}% of copy", f"fused bias+GELU {speed:.2f}x unfused"]


PROJECT = Project(
    name="custom-gelu",
    title="Writing a custom PyTorch extension from scratch: GELU",
    summary="GELU forward and backward in CUDA and C++, a torch.library op that compiles",
    root=project_root(__file__),
    bench=bench,
    headline=headline,
    publish=("h100-80gb-hbm3",),
)
