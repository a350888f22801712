import pytest
import torch
from mlsys_bench.ceilings import Ceilings
from mlsys_bench.memory import PeakMemory
from mlsys_bench.plots import bar_chart, grouped_bar_chart, line_chart, roofline_chart, save_figure


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_charts_render_deterministically(tmp_path):
    c = Ceilings(
        hardware="h",
        device_name="GPU",
        torch_version="x",
        copy_GBps=3000.0,
        matmul_TFLOPs={"fp32": 50.0, "bf16": 750.0},
    )
    figs = {
        "line": lambda: line_chart(
            {"a": ([1, 2, 4], [1.0, None, 3.0])},
            title="t",
            xlabel="x",
            ylabel="y",
            logx=True,
            hlines={"ceiling": 3.5},
        ),
        "bar": lambda: bar_chart(
            {"naive": 1.0, "tiled": None, "best": 40.0},
            title="t",
            ylabel="TFLOP/s",
            reference=("cuBLAS", 50.0),
        ),
        "grouped": lambda: grouped_bar_chart(
            ["512", "1k"], {"ours": [300.0, 350.0], "oom": [None, 10.0]}, title="t", xlabel="x", ylabel="y"
        ),
        "roof": lambda: roofline_chart(c, [("k", 10.0, 20.0), ("mm", 1000.0, 700.0)], dtype="bf16", title="r"),
    }
    for name, make in figs.items():
        a, b = save_figure(make(), tmp_path / f"{name}1.png"), save_figure(make(), tmp_path / f"{name}2.png")
        assert _png_ok(a)
        assert a.read_bytes() == b.read_bytes(), f"{name} chart is not reproducible"


def test_grouped_bar_chart_rejects_a_series_of_the_wrong_length():
    with pytest.raises(ValueError, match="series 'a' has 1 values for 2 groups"):
        grouped_bar_chart(["x", "y"], {"a": [1.0]}, title="t", xlabel="x", ylabel="y")


def test_peak_memory_cpu():
    with PeakMemory("cpu") as pm:
        x = torch.ones(2**22)  # 16 MiB, touched
        del x
    assert pm.result.cuda_allocated_bytes is None
    assert pm.result.rss_bytes > 0 and pm.result.max_rss_bytes >= pm.result.rss_bytes


@pytest.mark.gpu
def test_peak_memory_cuda_sees_a_transient_allocation():
    with PeakMemory("cuda") as pm:
        x = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB
        del x
    assert pm.result.cuda_allocated_bytes >= 2**28
    assert pm.result.cuda_reserved_bytes >= pm.result.cuda_allocated_bytes
