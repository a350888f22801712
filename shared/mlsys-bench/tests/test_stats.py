import math
import random

import numpy as np
import pytest
from mlsys_bench.stats import gbps, latency_percentiles, percentile, rate, summarize, tflops


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy(n):
    rng = random.Random(n)
    values = sorted(rng.expovariate(1.0) for _ in range(n))
    for q in (0, 5, 25, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


def test_summarize_orders_and_moments():
    values = [3.0, 1.0, 2.0, 10.0, 4.0]
    s = summarize(values)
    assert (s.n, s.median, s.min, s.max) == (5, 3.0, 1.0, 10.0)
    assert s.mean == pytest.approx(4.0)
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert s.p05 <= s.median <= s.p95
    assert s.spread == pytest.approx((s.p95 - s.p05) / 3.0)


def test_summarize_single_sample_has_zero_std():
    s = summarize([0.5])
    assert s.std == 0.0 and s.median == 0.5


@pytest.mark.parametrize("bad, msg", [([], "empty"), ([1.0, math.nan], "NaN")])
def test_summarize_rejects_bad_samples(bad, msg):
    with pytest.raises(ValueError, match=msg):
        summarize(bad)


def test_percentile_rejects_out_of_range_q():
    with pytest.raises(ValueError, match="0, 100"):
        percentile([1.0], 101)


def test_latency_percentiles_keys_and_values():
    lat = list(range(1, 101))
    p = latency_percentiles(lat)
    assert list(p) == ["p50", "p95", "p99"]
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    with pytest.raises(ValueError, match="no latencies"):
        latency_percentiles([])


def test_rates():
    assert rate(100, 2.0) == 50.0
    assert tflops(4e12, 2.0) == 2.0
    assert gbps(3e9, 1.5) == 2.0
    with pytest.raises(ValueError, match="positive"):
        rate(1, 0.0)
