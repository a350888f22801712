"""Statistics over repeated measurements: summaries of timing samples, latency percentiles, rates.

Medians, not means, are what every table in this repo reports: a GPU timing distribution has a long
right tail (clock ramp, a preempting kernel, a page fault) that a mean lets leak into the number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Order statistics of a sample, in the sample's own unit (seconds for timings)."""

    n: int
    median: float
    mean: float
    std: float
    min: float
    max: float
    p05: float
    p95: float

    @property
    def spread(self) -> float:
        """(p95 - p05) / median: the relative width of the middle 90% of the sample."""
        return (self.p95 - self.p05) / self.median if self.median else math.inf

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of an already sorted sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples: Iterable[float]) -> Summary:
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("cannot summarize an empty sample")
    if any(math.isnan(v) for v in values):
        raise ValueError("sample contains NaN")
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Summary(
        n=n,
        median=percentile(values, 50),
        mean=mean,
        std=math.sqrt(var),
        min=values[0],
        max=values[-1],
        p05=percentile(values, 5),
        p95=percentile(values, 95),
    )


def latency_percentiles(latencies: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Request-level latency percentiles, keyed 'p50', 'p95', 'p99' (same unit as the input)."""
    values = sorted(float(v) for v in latencies)
    if not values:
        raise ValueError("no latencies to summarize")
    return {f"p{q:g}": percentile(values, q) for q in qs}


def rate(count: float, seconds: float) -> float:
    """Items per second (tokens/s, requests/s); refuses a zero or negative duration."""
    if seconds <= 0.0:
        raise ValueError(f"duration must be positive, got {seconds} s")
    return count / seconds


def tflops(flops: float, seconds: float) -> float:
    return rate(flops, seconds) / 1e12


def gbps(num_bytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (10^9 bytes per second, as vendors quote it)."""
    return rate(num_bytes, seconds) / 1e9
