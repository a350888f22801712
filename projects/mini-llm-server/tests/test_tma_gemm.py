"""The TMA GEMM for 65-128 rows and the routing of projections between it, the GEMV and cuBLAS
(TRITON_INTERPRET=1 on a CPU; bf16 on a GPU)."""

import pytest
import torch
from mini_llm_server.fused_ops import add_rmsnorm, finished, silu_mul
from mini_llm_server.projections import kernel_for, project, project_swiglu
from mini_llm_server.tma_gemm import MAX_ROWS, tma_partials, tma_swiglu


def _interleaved(F: int, K: int, g: torch.Generator, dtype=torch.float16) -> torch.Tensor:
    gate, up = torch.randn(F, K, generator=g) * 0.1, torch.randn(F, K, generator=g) * 0.1
    return torch.stack([gate, up], 1).flatten(0, 1).to(dtype)  # gate j in row 2j, up j in 2j + 1, as the runner


@pytest.mark.parametrize("M, N, K, splits", [(65, 70, 264, 4), (128, 128, 512, 4), (100, 40, 200, 1), (8, 136, 384, 2)])
def test_partials_sum_to_the_product(M, N, K, splits):
    """Partial row, column and K tiles included: the descriptors read zeros past each edge."""
    g = torch.Generator().manual_seed(M + N + K)
    x, w = torch.randn(M, K, generator=g).half(), torch.randn(N, K, generator=g).half()
    partials = tma_partials(x, w, splits)
    assert partials.dtype == torch.float32 and partials.shape == (min(splits, -(-K // 128)), M, N)
    ref = x.double() @ w.double().T
    torch.testing.assert_close(partials.double().sum(0), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("M, F", [(65, 32), (128, 64), (97, 40), (3, 8)])
def test_swiglu_epilogue_matches_projection_then_silu_mul(M, F):
    g = torch.Generator().manual_seed(M * F)
    x, gate_up = torch.randn(M, 264, generator=g).half(), _interleaved(F, 264, g)
    got = tma_swiglu(x, gate_up)
    assert got.shape == (M, F) and got.dtype == torch.float16
    want = silu_mul(torch.nn.functional.linear(x.float(), gate_up.float()).half(), False)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-2)


def test_tma_gemm_rejects_what_it_cannot_take():
    with pytest.raises(ValueError, match="up to 128 rows"):
        tma_partials(torch.randn(MAX_ROWS + 1, 64).half(), torch.randn(4, 64).half())
    with pytest.raises(ValueError, match="16-byte aligned rows"):  # K 60: rows of 120 bytes
        tma_partials(torch.randn(70, 60).half(), torch.randn(4, 60).half())
    with pytest.raises(ValueError, match="its dtype"):
        tma_swiglu(torch.randn(70, 64).half(), torch.randn(4, 64))
    with pytest.raises(ValueError, match="odd 5 rows"):
        tma_swiglu(torch.randn(70, 64).half(), torch.randn(5, 64).half())


def test_each_projection_goes_where_the_probe_found_it_fastest():
    # TinyLlama's layer: Q/K/V and O have K 2048, gate/up K 2048 (swiglu), down K 5632
    assert [kernel_for(m, 2048, False, True) for m in (1, 64, 65, 128, 129)] == ["gemv"] * 2 + ["cublas"] * 3
    assert [kernel_for(m, 2048, True, True) for m in (64, 65, 128, 129)] == ["gemv", "tma", "tma", "cublas"]
    assert [kernel_for(m, 5632, False, True) for m in (64, 65, 128, 129)] == ["gemv", "tma", "tma", "cublas"]
    assert kernel_for(100, 5632, False, False) == kernel_for(100, 2048, True, False) == "cublas"  # no TMA here


def test_off_a_hopper_gpu_the_projections_past_64_rows_are_cublas():
    """On a CPU (no TMA) 100 rows go to F.linear (a finished output, not partials), then silu_mul."""
    g = torch.Generator().manual_seed(3)
    x, gate_up, down = torch.randn(100, 64, generator=g).half(), _interleaved(48, 64, g), torch.randn(32, 48).half()
    assert project(x, gate_up, True).shape == (100, 96)
    act = project_swiglu(x, gate_up, True)
    torch.testing.assert_close(act, silu_mul(torch.nn.functional.linear(x, gate_up), True))
    assert project(act, down, True).shape == (100, 32)
    assert project(x[:64], gate_up, True).dim() == 3  # up to 64 rows: the GEMV's partials


@pytest.mark.gpu
def test_tma_gemm_in_bf16_on_gpu_feeds_the_fused_kernels():
    """bf16 at TinyLlama's widths, 65-128 rows, against fp32 math: the SwiGLU epilogue, and down's partials summed
    by the residual add + RMSNorm kernel as if they were F.linear's output."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need compute capability 9.0")
    g = torch.Generator(device="cuda").manual_seed(0)
    for M in (65, 96, 128):
        x = torch.randn(M, 2048, device="cuda", generator=g).bfloat16()
        gate_up = (torch.randn(11264, 2048, device="cuda", generator=g) * 0.02).bfloat16()
        down = (torch.randn(2048, 5632, device="cuda", generator=g) * 0.02).bfloat16()
        assert kernel_for(M, 5632, False, True) == kernel_for(M, 2048, True, True) == "tma"
        act = project_swiglu(x, gate_up, True)
        want = silu_mul(torch.nn.functional.linear(x.float(), gate_up.float()), False)
        torch.testing.assert_close(act.float(), want, atol=0.02 * want.abs().max().item(), rtol=0.02)
        partials = project(act, down, True)
        assert partials.dim() == 3 and partials.shape[1:] == (M, 2048)
        ref = torch.nn.functional.linear(act.float(), down.float())
        torch.testing.assert_close(partials.sum(0), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)
        res, w = torch.randn(M, 2048, device="cuda").bfloat16(), torch.rand(2048, device="cuda").bfloat16() + 0.5
        summed = add_rmsnorm(res, partials, w, 1e-5, True)
        for a, b in zip(summed, add_rmsnorm(res, finished(partials, torch.bfloat16), w, 1e-5, True), strict=True):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
