"""Every rung against float64 on fresh random inputs, at full and odd shapes (GPU only)."""

import pytest
import torch
from cuda_matmul.ladder import RUNGS
from cuda_matmul.ops import gemm
from cuda_matmul.report import check

pytestmark = pytest.mark.gpu
SHAPES = [(1, 1, 1), (7, 3, 5), (127, 129, 131), (128, 128, 128), (256, 64, 1024), (1000, 1000, 8), (333, 4100, 97),
          (2048, 2048, 2048), (4096, 8, 4096), (17, 4096, 33), (200, 260, 1000)]  # fmt: skip


@pytest.mark.parametrize("rung", RUNGS, ids=lambda r: r.label)
def test_rung_matches_float64(rung):
    assert check(rung) <= 1e-5


@pytest.mark.parametrize("rung", RUNGS, ids=lambda r: r.label)
@pytest.mark.parametrize("M, N, K", SHAPES)
def test_rung_every_shape_every_element(rung, M, N, K):
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N * 3 + K)
    dtype = torch.bfloat16 if rung.dtype == "bf16" else torch.float32
    a = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    b = torch.randn(K, N, device="cuda", generator=g).to(dtype)
    c = torch.full((M, N), float("nan"), device="cuda")  # poisoned: every element must be written
    gemm(a, b, rung=rung.number, c=c)
    ref = a.double() @ b.double()
    assert torch.isfinite(c).all(), "some outputs were never written"
    err = ((c.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, f"relative error {err:.2e}"


def test_misaligned_views_take_the_scalar_path():
    base = torch.randn(1 + 64 * 64, device="cuda")
    a = base[1:].view(64, 64)  # contiguous but 4 bytes off a 16-byte boundary
    b = torch.randn(64, 64, device="cuda")
    for rung in (6, 7, 8):
        torch.testing.assert_close(gemm(a, b, rung=rung), (a.double() @ b.double()).float(), atol=1e-4, rtol=1e-4)


def test_device_errors():
    with pytest.raises(ValueError, match="one CUDA device"):
        gemm(torch.randn(4, 4, device="cuda"), torch.randn(4, 4), rung=1)


def _kernels_launched(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_wgmma_rung_runs_its_kernel_where_tma_allows_and_rung_9_elsewhere():
    """Rung 10 must not silently be rung 9: aligned shapes launch the TMA/wgmma kernel, odd ones WMMA."""
    a, b = torch.randn(256, 512, device="cuda").bfloat16(), torch.randn(512, 384, device="cuda").bfloat16()
    names = _kernels_launched(lambda: gemm(a, b, rung="wgmma"))
    assert any("wgmma" in n for n in names) and not any("wmma_kernel" in n for n in names), names
    odd = torch.randn(512, 383, device="cuda").bfloat16()  # N % 8 != 0: rows are not 16-byte strided
    names = _kernels_launched(lambda: gemm(a, odd, rung="wgmma"))
    assert any("wmma_kernel" in n for n in names), names
