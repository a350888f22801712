import time

import pytest
import torch
from mlsys_bench.timing import TimingConfig, num_rotations, time_cpu, time_fn, time_gpu


def test_time_cpu_measures_the_call():
    t = time_cpu(lambda: time.sleep(0.003), config=TimingConfig(warmup=1, repeats=5))
    assert 0.003 <= t.median < 0.05
    assert t.method == "perf-counter" and t.seconds.n == 5


def test_warmup_and_repeats_call_counts():
    calls = []
    time_cpu(lambda: calls.append(1), config=TimingConfig(warmup=3, repeats=7))
    assert len(calls) == 10


def test_rotation_cycles_through_input_sets():
    seen = []
    t = time_cpu(seen.append, config=TimingConfig(warmup=0, repeats=7), rotate=[("a",), ("b",), ("c",)])
    assert seen == list("abcabca")
    assert t.num_rotations == 3


def test_num_rotations_covers_twice_the_cache():
    assert num_rotations(10, 50) == 10
    assert num_rotations(200, 50) == 1
    assert num_rotations(1, 10**9) == 64  # capped
    with pytest.raises(ValueError):
        num_rotations(0, 50)


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"repeats": 0}, {"prime_cycles_per_call": -1}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        TimingConfig(**kwargs)


def test_cpu_timing_refuses_l2_flush():
    with pytest.raises(ValueError, match="flush_l2"):
        time_cpu(lambda: None, config=TimingConfig(flush_l2=True))


def test_time_fn_on_cpu_drops_flush():
    t = time_fn(lambda: None, device=torch.device("cpu"), config=TimingConfig(warmup=0, repeats=2, flush_l2=True))
    assert t.method == "perf-counter"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_time_gpu_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        time_gpu(lambda: None)


@pytest.mark.gpu
def test_time_gpu_tracks_work_size():
    x = torch.randn(2**26, device="cuda")  # 256 MiB, far beyond L2
    y = torch.empty_like(x)
    small, big = x[: 2**24], y[: 2**24]
    cfg = TimingConfig(warmup=5, repeats=30, flush_l2=True)
    t_big = time_gpu(lambda: y.copy_(x), config=cfg)
    t_small = time_gpu(lambda: big.copy_(small), config=cfg)
    assert t_big.method == "cuda-events"
    assert 2.5 < t_big.median / t_small.median < 5.5  # 4x the bytes: about 4x the time


@pytest.mark.gpu
def test_time_gpu_rotation():
    sets = [(torch.randn(1024, device="cuda"),) for _ in range(4)]
    seen = []
    time_gpu(lambda t: seen.append(t.data_ptr()), config=TimingConfig(warmup=0, repeats=8), rotate=sets)
    assert seen == [s[0].data_ptr() for s in sets] * 2


@pytest.mark.gpu
def test_time_gpu_measures_the_kernel_not_the_launch():
    # A 4 KiB copy runs in a couple of microseconds; the host needs longer than that to launch it
    # through PyTorch, so an unprimed queue would report the launch latency instead.
    x = torch.randn(1024, device="cuda")
    y = torch.empty_like(x)
    t = time_gpu(lambda: y.copy_(x), config=TimingConfig(warmup=10, repeats=200))
    assert t.median < 6e-6, f"median {t.median * 1e6:.1f} us: launch latency leaked into the timing"
