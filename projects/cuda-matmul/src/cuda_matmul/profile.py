"""What the compiler and the profiler say about each rung: ptxas resource usage and an Nsight Compute
summary (achieved occupancy, DRAM bytes and throughput, SM throughput, issue-slot use, shared-memory
stalls and bank conflicts) at one size.

`python -m cuda_matmul.profile N` is the target ncu runs: every rung, then cuBLAS fp32 and bf16, once
each at N x N x N, in that order.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys

import torch

from cuda_matmul import build
from cuda_matmul.ladder import RUNGS

NCU_METRICS = {
    "occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "dram_bytes": "dram__bytes.sum",
    "dram_pct": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "sm_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "duration_ns": "gpu__time_duration.sum",
    # Why an FP32 kernel falls short of the FMA pipe: how often a scheduler issues at all, and how long its
    # warps wait on shared-memory loads (cycles per issued instruction), and bank conflicts.
    "issue_pct": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "short_scoreboard": "smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio",
    "smem_conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",
}


def resource_usage(nvcc: str | None = None) -> dict[str, dict[str, int]]:
    """Per rung: registers, static shared memory, stack and spill bytes of its largest kernel, from ptxas."""
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        return {}
    out = {}
    arch = build.default_arch().replace(".", "")
    for r in RUNGS:
        proc = subprocess.run(
            [
                nvcc,
                "-O3",
                f"-gencode=arch=compute_{arch},code=sm_{arch}",
                "--resource-usage",
                "-c",
                "-o",
                "/dev/null",
                f"-I{build.CSRC}",
                str(build.CSRC / r.source),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        kernels = []
        for block in re.split(r"ptxas info\s+: Compiling entry function", proc.stderr)[1:]:
            nums = {
                k: int(v)
                for k, v in [
                    ("registers", (re.search(r"Used (\d+) registers", block) or [0, 0])[1]),
                    ("smem_bytes", (re.search(r"(\d+) bytes smem", block) or [0, 0])[1]),
                    ("stack_bytes", (re.search(r"(\d+) bytes stack frame", block) or [0, 0])[1]),
                    ("spill_stores", (re.search(r"(\d+) bytes spill stores", block) or [0, 0])[1]),
                    ("spill_loads", (re.search(r"(\d+) bytes spill loads", block) or [0, 0])[1]),
                ]
            }
            kernels.append(nums)
        if kernels:  # templated rungs have a vector and a scalar variant: report the heavier (the fast path)
            out[r.label] = max(kernels, key=lambda k: (k["registers"], k["smem_bytes"]))
    return out


def ncu_summary(n: int, ncu: str | None = None, timeout: float = 600) -> list[dict[str, float]] | None:
    """Profile `python -m cuda_matmul.profile n` under ncu; one dict per GEMM kernel in launch order."""
    ncu = ncu or shutil.which("ncu")
    if ncu is None:
        return None
    kernels = "regex:gemm|nvjet|cutlass|xmma"  # ours are *gemm*; cuBLAS names vary by version
    cmd = [
        ncu,
        "--csv",
        "--clock-control",
        "none",
        "--kernel-name",
        kernels,
        "--metrics",
        ",".join(NCU_METRICS.values()),
        sys.executable,
        "-m",
        "cuda_matmul.profile",
        str(n),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ncu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    text = proc.stdout[proc.stdout.find('"ID"') :]
    rows: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO(text)):
        k = rows.setdefault(row["ID"], {"kernel": row["Kernel Name"]})
        for key, metric in NCU_METRICS.items():
            if row["Metric Name"] == metric:
                k[key] = float(row["Metric Value"].replace(",", ""))
    return [rows[i] for i in sorted(rows, key=int)]


def main() -> None:
    n = int(sys.argv[1])
    build.load()
    g = torch.Generator(device="cuda").manual_seed(0)
    a32, b32 = (torch.randn(n, n, device="cuda", generator=g) for _ in range(2))
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    c = torch.empty(n, n, device="cuda")
    for r in RUNGS:
        a, b = (a16, b16) if r.dtype == "bf16" else (a32, b32)
        torch.ops.cuda_matmul.gemm(r.number, a, b, c, 1.0, 0.0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.mm(a32, b32)
    torch.mm(a16, b16)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
