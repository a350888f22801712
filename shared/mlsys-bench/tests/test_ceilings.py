import json

import pytest
import torch
from mlsys_bench import ceilings as C
from mlsys_bench.environment import hardware_label
from mlsys_bench.timing import TimingConfig

TINY = C.ProbeSizes(copy_bytes=2**20, matmul_n={"fp32": 64, "bf16": 64}, timing=TimingConfig(warmup=0, repeats=2))


def fake(copy=3000.0, fp32=50.0, bf16=750.0):
    return C.Ceilings(
        hardware=hardware_label(torch.device("cpu")),
        device_name="d",
        torch_version=torch.__version__,
        copy_GBps=copy,
        matmul_TFLOPs={"fp32": fp32, "bf16": bf16},
    )


def test_probe_on_cpu_gives_positive_numbers():
    c = C.probe_ceilings(torch.device("cpu"), TINY)
    assert c.copy_GBps > 0 and c.matmul_TFLOPs["fp32"] > 0 and c.matmul_TFLOPs["bf16"] > 0
    assert c.hardware.startswith("cpu-") and c.probe["copy_bytes"] == 2**20


def test_roofline_math():
    c = fake()
    assert c.ridge_point("bf16") == pytest.approx(250.0)  # 750e12 / 3000e9
    assert c.attainable_TFLOPs(1.0, "bf16") == pytest.approx(3.0)
    assert c.attainable_TFLOPs(1e4, "bf16") == 750.0
    assert c.bandwidth_fraction(1500.0) == 0.5
    assert c.compute_fraction(25.0, "fp32") == 0.5


def test_cache_is_used_then_refreshed(tmp_path, monkeypatch):
    calls = []

    def probe(device, sizes=None):
        calls.append(1)
        return fake(copy=float(len(calls)))

    monkeypatch.setattr(C, "probe_ceilings", probe)
    cpu = torch.device("cpu")
    assert C.load_or_probe(cpu, directory=tmp_path).copy_GBps == 1.0
    assert C.load_or_probe(cpu, directory=tmp_path).copy_GBps == 1.0  # from the cache
    assert C.load_or_probe(cpu, directory=tmp_path, reprobe=True).copy_GBps == 2.0
    (path,) = tmp_path.glob("ceilings-*.json")
    path.write_text("{broken")
    assert C.load_or_probe(cpu, directory=tmp_path).copy_GBps == 3.0  # corrupt cache: measured again
    data = json.loads(path.read_text())
    data["torch_version"] = "0.0.1"
    path.write_text(json.dumps(data))
    assert C.load_or_probe(cpu, directory=tmp_path).copy_GBps == 4.0  # other torch: measured again
    assert len(calls) == 4


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLSYS_CACHE_DIR", str(tmp_path))
    assert C.cache_dir() == tmp_path


def test_tf32_switch_restores():
    before = torch.backends.cuda.matmul.allow_tf32
    with C.tf32_matmul(not before):
        assert torch.backends.cuda.matmul.allow_tf32 == (not before)
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.gpu
def test_gpu_probe_is_plausible():
    c = C.probe_ceilings(torch.device("cuda"))
    # Any datacenter GPU of this decade: HBM between 0.5 and 10 TB/s, bf16 at least 8x fp32 on tensor cores.
    assert 500 < c.copy_GBps < 10_000
    assert c.matmul_TFLOPs["bf16"] > 8 * c.matmul_TFLOPs["fp32"]
