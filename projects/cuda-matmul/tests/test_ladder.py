import re
import shutil
import subprocess
import sys

import pytest
import torch
from cuda_matmul import build
from cuda_matmul.ladder import RUNGS, get
from cuda_matmul.ops import check_inputs


def test_registry_matches_the_sources():
    numbered = sorted(p.name for p in build.CSRC.glob("[0-9][0-9]_*.cu"))
    assert numbered == [r.source for r in RUNGS], "every numbered .cu file is a rung, in order"
    assert [r.number for r in RUNGS] == list(range(1, len(RUNGS) + 1))
    for r in RUNGS:
        assert r.source.startswith(f"{r.number:02d}_{r.name}")
        launcher = f"_{r.number:02d}_{r.name}("
        assert launcher in (build.CSRC / r.source).read_text(), f"{r.source} defines no {launcher}"
    assert get(4) is get("blocktile_1d") is get("04_blocktile_1d")
    with pytest.raises(ValueError, match="unknown rung"):
        get(99)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: the build cannot be checked")
def test_extension_compiles(tmp_path):
    """A build break is caught without a GPU: compile every rung and the binding for sm_90, then load the op."""
    code = "import torch; from cuda_matmul import build; build.load(); print(torch.ops.cuda_matmul.gemm)"
    env = {**__import__("os").environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cuda_matmul.gemm" in out.stdout
    assert list(tmp_path.rglob("cuda_matmul_ext*.so"))


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize(
    "a, b, c, rung, beta, error, message",
    [
        (_t(4), _t(4, 4), None, 1, 0.0, ValueError, "A must be a 2-D matrix"),
        (_t(4, 4), _t(4, 4, dtype=torch.float64), None, 1, 0.0, TypeError, "B is torch.float64"),
        (_t(4, 4), _t(4, 4), None, 9, 0.0, TypeError, "takes torch.bfloat16"),
        (_t(4, 8).t(), _t(4, 4), None, 1, 0.0, ValueError, "A must be contiguous"),
        (_t(4, 5), _t(4, 3), None, 1, 0.0, ValueError, "inner dimensions 5 != 4"),
        (_t(4, 4), _t(4, 4), None, 1, 1.0, ValueError, "beta != 0 needs a C"),
        (_t(4, 4), _t(4, 4), _t(4, 4, dtype=torch.bfloat16), 1, 0.0, TypeError, "C must be float32"),
        (_t(4, 4), _t(4, 3), _t(4, 4), 1, 0.0, ValueError, r"A @ B is \(4, 3\)"),
        (_t(4, 4), _t(4, 4), None, 1, 0.0, ValueError, "one CUDA device"),
        (_t(4, 4), _t(4, 4), None, 42, 0.0, ValueError, "unknown rung 42"),
    ],
)
def test_bad_inputs_are_named(a, b, c, rung, beta, error, message):
    with pytest.raises(error, match=message):
        check_inputs(a, b, c, rung, beta)


def test_resource_report_parses_ptxas():
    from cuda_matmul.profile import resource_usage

    if shutil.which("nvcc") is None:
        assert resource_usage() == {}
        return
    usage = resource_usage()
    assert list(usage) == [r.label for r in RUNGS]
    assert all(u["registers"] > 0 for u in usage.values())
    assert usage["03_smem_tiling"]["smem_bytes"] == 2 * 32 * 32 * 4
    assert all(u["spill_stores"] == 0 for u in usage.values()), "a rung spills registers to local memory"
    assert re.match(r"\d\.\d", build.default_arch())


def test_rung8_compiles_the_tuned_configuration():
    from cuda_matmul.tune import CONFIGS, TUNED

    src = (build.CSRC / "08_double_buffer.cu").read_text()
    shape = re.search(r"using Tuned = WarpTile<([\d, ]+)>;", src).group(1)
    stages = int(re.search(r"TUNED_STAGES = (\d+);", src).group(1))
    assert (*map(int, shape.split(",")), stages) == TUNED
    assert TUNED in CONFIGS


def test_hopper_is_built_as_the_arch_specific_target():
    """wgmma and setmaxnreg exist only in sm_90a; every other entry of the arch list is left as given."""
    assert build.arch_specific("9.0") == "9.0a"
    assert build.arch_specific("8.0;9.0") == "8.0;9.0a"
    assert build.arch_specific("8.6 9.0+PTX") == "8.6;9.0+PTX"
