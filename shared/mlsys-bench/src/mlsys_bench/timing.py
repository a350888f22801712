"""Timing: CUDA events on the GPU, perf_counter on the CPU, with warm-up, repeats and cache control.

GPU rules this module enforces (see METHOD in the repo README): every call is bracketed by its own
pair of events so one slow call does not hide in an average; warm-up calls run first so compilation,
autotuning and handle creation stay out of the sample; between calls the L2 cache can be flushed by
writing a buffer twice its size, or the inputs rotated among several copies, so a small problem is
not timed from cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mlsys_bench.stats import Summary, summarize

# About 100 us per call (0.5 s at most) of spinning at a ~2 GHz SM clock: covers the host's time per call,
# including the guard checks of a torch.compile'd function, so the GPU never waits on the host mid-sample.
PRIME_CYCLES_PER_CALL = 200_000
PRIME_CYCLES_MAX = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingConfig:
    """How a measurement is taken; stored in every record so a reader knows how a number was made."""

    warmup: int = 10
    repeats: int = 100
    flush_l2: bool = False
    # GPU spin queued ahead of the timed calls, per call: must exceed the host's time per call, or a short
    # kernel is timed partly as host overhead (raise it for functions with Python-level dispatch)
    prime_cycles_per_call: int = PRIME_CYCLES_PER_CALL

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.prime_cycles_per_call < 0:
            raise ValueError(f"prime_cycles_per_call must be >= 0, got {self.prime_cycles_per_call}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """A timing sample's summary plus how it was taken."""

    seconds: Summary
    method: str  # "cuda-events" or "perf-counter"
    config: TimingConfig
    num_rotations: int = 1

    @property
    def median(self) -> float:
        return self.seconds.median


def num_rotations(bytes_per_set: int, cache_bytes: int, *, limit: int = 64) -> int:
    """How many copies of the inputs make one pass over them at least 2x the cache, so no call hits it."""
    if bytes_per_set <= 0:
        raise ValueError(f"bytes_per_set must be positive, got {bytes_per_set}")
    return max(1, min(limit, -(-2 * cache_bytes // bytes_per_set)))


def _call(fn: Callable[..., Any], rotate: Sequence[tuple] | None, i: int) -> Any:
    return fn(*rotate[i % len(rotate)]) if rotate else fn()


def time_gpu(
    fn: Callable[..., Any],
    *,
    config: TimingConfig = TimingConfig(),
    rotate: Sequence[tuple] | None = None,
    device: torch.device | str | None = None,
) -> Timing:
    """Median-of-repeats time of `fn()` (or `fn(*rotate[i])`, cycling) on the current CUDA stream."""
    if not torch.cuda.is_available():
        raise RuntimeError("time_gpu needs a CUDA device; use time_cpu on a CPU-only machine")
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    flush = None
    if config.flush_l2:
        l2 = torch.cuda.get_device_properties(dev).L2_cache_size
        flush = torch.empty(2 * l2 // 4, dtype=torch.int32, device=dev)
    # excerpt: time-gpu
    for i in range(config.warmup):
        _call(fn, rotate, i)
    torch.cuda.synchronize(dev)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(config.repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(config.repeats)]
    # Park the GPU on a spin kernel while the host enqueues every repeat: otherwise a short kernel's
    # start event fires at once and the interval measures the host's launch latency, not the kernel.
    torch.cuda._sleep(min(config.prime_cycles_per_call * config.repeats, PRIME_CYCLES_MAX))
    for i in range(config.repeats):
        if flush is not None:
            flush.fill_(i)  # a write of 2x L2 evicts whatever the last call left there
        starts[i].record()
        _call(fn, rotate, i)
        ends[i].record()
    torch.cuda.synchronize(dev)
    samples = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
    # end-excerpt
    return Timing(seconds=summarize(samples), method="cuda-events", config=config, num_rotations=len(rotate or [0]))


def time_cpu(
    fn: Callable[..., Any],
    *,
    config: TimingConfig = TimingConfig(),
    rotate: Sequence[tuple] | None = None,
) -> Timing:
    """Median-of-repeats wall time of `fn()` on the host, timed call by call with perf_counter."""
    if config.flush_l2:
        raise ValueError("flush_l2 applies to GPU timing; rotate inputs to defeat CPU caches")
    for i in range(config.warmup):
        _call(fn, rotate, i)
    samples = []
    for i in range(config.repeats):
        t0 = time.perf_counter()
        _call(fn, rotate, i)
        samples.append(time.perf_counter() - t0)
    return Timing(seconds=summarize(samples), method="perf-counter", config=config, num_rotations=len(rotate or [0]))


def time_fn(
    fn: Callable[..., Any],
    *,
    device: torch.device,
    config: TimingConfig = TimingConfig(),
    rotate: Sequence[tuple] | None = None,
) -> Timing:
    """time_gpu for a CUDA device, time_cpu otherwise (L2 flushing is dropped on the CPU)."""
    if device.type == "cuda":
        return time_gpu(fn, config=config, rotate=rotate, device=device)
    cpu_config = TimingConfig(warmup=config.warmup, repeats=config.repeats, flush_l2=False, prime_cycles_per_call=0)
    return time_cpu(fn, config=cpu_config, rotate=rotate)
