"""The machine's two ceilings: device-memory copy bandwidth and dense matmul throughput.

Every result in the repo is placed against these: a memory-bound kernel as a fraction of the copy
bandwidth, a compute-bound one as a fraction of the library matmul rate for its dtype. They are
probed once per device (hardware label + torch version) and cached as JSON, because a probe costs a
few seconds of GPU time and the numbers do not change between runs.

Copy bandwidth counts bytes read plus bytes written, so a kernel that reads x and writes y of the
same size is at 100% when it runs as fast as `y.copy_(x)`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlsys_bench.environment import hardware_label, utc_now
from mlsys_bench.stats import gbps, tflops
from mlsys_bench.timing import TimingConfig, time_fn

MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSizes:
    """Problem sizes for the probe: large enough to leave every cache on a GPU, small enough for a CPU."""

    copy_bytes: int
    matmul_n: dict[str, int]
    timing: TimingConfig

    @staticmethod
    def for_device(device: torch.device) -> ProbeSizes:
        if device.type == "cuda":
            return ProbeSizes(
                copy_bytes=2**30,
                matmul_n={"fp32": 8192, "bf16": 8192},
                timing=TimingConfig(warmup=5, repeats=30),
            )
        return ProbeSizes(
            copy_bytes=2**28, matmul_n={"fp32": 2048, "bf16": 1024}, timing=TimingConfig(warmup=1, repeats=5)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Ceilings:
    hardware: str
    device_name: str
    torch_version: str
    copy_GBps: float  # bytes read + written per second, 1e9 bytes
    matmul_TFLOPs: dict[str, float]  # dtype name -> dense matmul rate through the library (TF32 off)
    probe: dict[str, Any] = field(default_factory=dict)
    measured_utc: str = ""

    def bandwidth_fraction(self, GBps: float) -> float:
        return GBps / self.copy_GBps

    def compute_fraction(self, TFLOPs: float, dtype: str) -> float:
        return TFLOPs / self.matmul_TFLOPs[dtype]

    def ridge_point(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/byte) above which the matmul rate, not bandwidth, bounds a kernel."""
        return self.matmul_TFLOPs[dtype] * 1e12 / (self.copy_GBps * 1e9)

    def attainable_TFLOPs(self, intensity: float, dtype: str) -> float:
        """The roofline: min(peak compute, bandwidth x intensity)."""
        return min(self.matmul_TFLOPs[dtype], self.copy_GBps * 1e9 * intensity / 1e12)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Ceilings:
        return Ceilings(**d)


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Allow (or forbid: IEEE fp32) TF32 tensor cores for fp32 matmuls inside the block, then restore."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# excerpt: probe
def measure_copy_GBps(device: torch.device, num_bytes: int, timing: TimingConfig) -> float:
    n = num_bytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, config=timing)
    return gbps(2 * n * 4, t.median)


def measure_matmul_TFLOPs(device: torch.device, n: int, dtype: torch.dtype, timing: TimingConfig) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)  # random, never zeros: zeros run faster
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    with tf32_matmul(False):
        t = time_fn(lambda: torch.mm(a, b), device=device, config=timing)
    return tflops(2 * n**3, t.median)


# end-excerpt


def probe_ceilings(device: torch.device, sizes: ProbeSizes | None = None) -> Ceilings:
    sizes = sizes or ProbeSizes.for_device(device)
    name = torch.cuda.get_device_properties(device).name if device.type == "cuda" else hardware_label(device)
    return Ceilings(
        hardware=hardware_label(device),
        device_name=name,
        torch_version=torch.__version__,
        copy_GBps=measure_copy_GBps(device, sizes.copy_bytes, sizes.timing),
        matmul_TFLOPs={
            k: measure_matmul_TFLOPs(device, sizes.matmul_n[k], MATMUL_DTYPES[k], sizes.timing) for k in MATMUL_DTYPES
        },
        probe={"copy_bytes": sizes.copy_bytes, "matmul_n": sizes.matmul_n, "timing": sizes.timing.to_dict()},
        measured_utc=utc_now(),
    )


def cache_dir() -> Path:
    """MLSYS_CACHE_DIR, else $XDG_CACHE_HOME/mlsys-bench, else ~/.cache/mlsys-bench."""
    if env := os.environ.get("MLSYS_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlsys-bench"


def load_or_probe(device: torch.device, *, reprobe: bool = False, directory: Path | None = None) -> Ceilings:
    """The cached ceilings for this device and torch version, probing (and caching) them if absent."""
    path = (directory or cache_dir()) / f"ceilings-{hardware_label(device)}.json"
    if path.exists() and not reprobe:
        try:
            cached = Ceilings.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError):
            cached = None  # a corrupt or old-format cache is re-measured, never trusted
        if cached is not None and cached.torch_version == torch.__version__:
            return cached
    return save_to_cache(probe_ceilings(device), directory)


def save_to_cache(ceilings: Ceilings, directory: Path | None = None) -> Ceilings:
    path = (directory or cache_dir()) / f"ceilings-{ceilings.hardware}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ceilings.to_dict(), indent=1))
    tmp.replace(path)
    return ceilings
