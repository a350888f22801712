"""The tuning sweep behind rung 8: compile one standalone probe per warp-tile shape and pipeline depth,
check and time each at n^3, and report them all. The winner is what 08_double_buffer.cu instantiates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cuda_matmul.build import CSRC, default_arch

# (BM, BN, BK, WM, WN, WNITER, TM, TN, STAGES). TM = 4 with two sub-tiles down a warp tile (WMITER = 2) gives
# each thread two groups of 4 rows a sub-tile apart instead of 8 adjacent rows, so a warp's 16-byte A reads
# fall in different banks.
CONFIGS = [
    (128, 128, 16, 64, 32, 2, 8, 4, 3),  # the first sweep's winner: 8 adjacent rows per thread
    (128, 128, 16, 64, 64, 4, 8, 4, 2),
    (128, 128, 16, 64, 32, 2, 4, 4, 2),
    (128, 128, 16, 64, 32, 2, 4, 4, 3),
    (128, 128, 16, 32, 64, 2, 4, 4, 3),
    (128, 128, 32, 64, 32, 2, 4, 4, 2),
    (64, 128, 16, 32, 64, 2, 4, 4, 3),
    (128, 64, 16, 64, 32, 2, 4, 4, 3),
    # 8 x 16 outputs per thread, one 256-thread block per SM (cuBLAS's own FP32 kernel is 256 x 128 x 8)
    (256, 128, 8, 64, 64, 4, 4, 4, 3),
    (256, 128, 16, 64, 64, 4, 4, 4, 3),
    (256, 128, 16, 128, 32, 2, 4, 4, 3),
    (128, 256, 8, 64, 64, 4, 4, 4, 3),
    (128, 256, 16, 64, 64, 4, 4, 4, 2),
    (128, 256, 16, 64, 64, 4, 4, 4, 3),
    (128, 256, 16, 64, 64, 2, 4, 8, 3),
    (128, 256, 16, 128, 32, 2, 4, 4, 3),
    (128, 256, 8, 32, 128, 4, 4, 4, 3),
    (128, 256, 8, 32, 128, 4, 4, 4, 4),
    (128, 256, 16, 32, 128, 4, 4, 4, 2),
    (128, 256, 16, 32, 128, 4, 4, 4, 3),
    (128, 256, 16, 32, 128, 4, 4, 4, 4),
    (128, 256, 32, 32, 128, 4, 4, 4, 2),
]
NAMES = ("BM", "BN", "BK", "WM", "WN", "WNITER", "TM", "TN", "STAGES")
# What 08_double_buffer.cu instantiates (a test keeps the two in step): the fastest of the H100 sweep.
TUNED = (128, 256, 16, 32, 128, 4, 4, 4, 3)


def _compile(cfg: tuple, workdir: Path, nvcc: str) -> Path:
    exe = workdir / ("probe_" + "_".join(map(str, cfg)))
    defines = [f"-DT{n}={v}" for n, v in zip(NAMES, cfg, strict=True)]
    arch = default_arch().replace(".", "")
    subprocess.run(
        [
            nvcc,
            "-O3",
            "-std=c++17",
            f"-gencode=arch=compute_{arch},code=sm_{arch}",
            *defines,
            str(CSRC / "tune" / "tune_main.cu"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return exe


def sweep(n: int = 4096, nvcc: str | None = None) -> list[dict]:
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        return []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(8) as pool:
        exes = list(pool.map(lambda c: _compile(c, Path(tmp), nvcc), CONFIGS))
        rows = []
        for cfg, exe in zip(CONFIGS, exes, strict=True):  # run one at a time: they share the GPU
            out = subprocess.run([str(exe), str(n)], capture_output=True, text=True, timeout=120)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if "error" in result:
                raise RuntimeError(f"tuning probe {cfg} failed: {result['error']}")
            result["TFLOPs"] = result.pop("tflops")
            rows.append({**dict(zip(NAMES, cfg, strict=True)), **result})
    return rows


if __name__ == "__main__":
    for row in sweep():
        print(json.dumps(row))
