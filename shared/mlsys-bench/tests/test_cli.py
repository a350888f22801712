import pytest
import torch
from mlsys_bench import machine
from mlsys_bench.cli import main
from mlsys_bench.project import BenchContext
from mlsys_bench.record import read_record


def test_unknown_project_is_named():
    with pytest.raises(SystemExit, match="unknown project 'nope'; registered: .*mlsys-bench"):
        main(["blog", "nope", "--check"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_gpu_scale_without_gpu_is_refused():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["bench", "all", "--scale", "gpu"])


def test_env_prints_without_probe(capsys):
    assert main(["env", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "hardware" in out


def test_machine_benchmark_at_cpu_scale_writes_valid_records(tmp_path, monkeypatch):
    from mlsys_bench import ceilings as C
    from mlsys_bench.timing import TimingConfig

    tiny = C.ProbeSizes(copy_bytes=2**20, matmul_n={"fp32": 64, "bf16": 64}, timing=TimingConfig(warmup=0, repeats=2))
    monkeypatch.setenv("MLSYS_CACHE_DIR", str(tmp_path / "cache"))  # the tiny probe must not replace the real cache
    monkeypatch.setattr(C.ProbeSizes, "for_device", staticmethod(lambda device: tiny))
    monkeypatch.setattr(machine, "_sizes", lambda ctx: ([2**16, 2**18], [32, 64], ["fp32", "bf16"]))
    cpu = torch.device("cpu")
    ctx = BenchContext(
        project="mlsys-bench",
        device=cpu,
        scale="cpu",
        hardware="cpu-test",
        results_dir=tmp_path / "cpu-test",
        repo=tmp_path,
        ceilings=C.probe_ceilings(cpu, tiny),
        show_progress=False,
    )
    machine.bench(ctx)
    names = sorted(p.name for p in ctx.written)
    assert names == [
        "ceilings.json",
        "copy-sweep.json",
        "copy-sweep.png",
        "matmul-sweep.json",
        "matmul-sweep.png",
        "roofline.png",
    ]
    mm = read_record(tmp_path / "cpu-test" / "matmul-sweep.json")
    assert mm.scale == "cpu" and len(mm.rows) == 4 and all(r["TFLOPs"] > 0 for r in mm.rows)
    assert mm.environment["command"] and mm.ceilings["copy_GBps"] > 0
    from mlsys_bench.results import ResultSet

    headline = machine.headline(ResultSet.load("mlsys-bench", tmp_path, ("cpu-test",)))
    copy = read_record(tmp_path / "cpu-test" / "ceilings.json").rows[0]["copy_GBps"]
    assert headline[0] == f"copy {copy / 1e3:.2f} TB/s" and len(headline) == 3


def test_project_main_build_and_bench_dispatch(capsys):
    from mlsys_bench.cli import project_main

    assert project_main("demo", lambda: "built demo", ["build"]) == 0
    assert capsys.readouterr().out.strip() == "built demo"
    with pytest.raises(SystemExit, match="unknown project 'demo'"):
        project_main("demo", lambda: "", ["bench", "--scale", "cpu"])
