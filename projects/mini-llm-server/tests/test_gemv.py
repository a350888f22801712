"""Split-K GEMV partials and the fused kernels that sum them (TRITON_INTERPRET=1 on a CPU; bf16 on a GPU)."""

import pytest
import torch
from mini_llm_server.fused_ops import add_rmsnorm, finished, rope_and_cache, silu_mul
from mini_llm_server.gemv import MAX_ROWS, gemv_partials, gemv_swiglu, num_splits
from mini_llm_server.projections import project_swiglu

TILE_16 = [(1, 48, 300, None), (3, 70, 256, 2), (16, 64, 512, 4), (5, 33, 130, 1)]  # (M, N, K, splits)
TILE_32 = [(17, 40, 256, 2), (32, 64, 130, None), (24, 36, 384, 3), (32, 32, 256, 1)]
TILE_64 = [(33, 70, 256, None), (64, 64, 384, 2), (48, 130, 200, 1)]


@pytest.mark.parametrize("M, N, K, splits", TILE_16 + TILE_32 + TILE_64)
def test_partials_sum_to_the_product(M, N, K, splits):
    g = torch.Generator().manual_seed(M * 100 + N + K)
    x, w = torch.randn(M, K, generator=g).half(), torch.randn(N, K, generator=g).half()
    partials = gemv_partials(x, w, splits)
    assert partials.dtype == torch.float32 and partials.shape[1:] == (M, N)
    assert splits is None or partials.shape[0] == splits
    ref = x.double() @ w.double().T
    torch.testing.assert_close(partials.double().sum(0), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)
    assert finished(partials, torch.float16).dtype == torch.float16


def test_splits_fill_the_gpu_but_keep_a_tile_each():
    cpu = torch.device("cpu")  # 132 SMs assumed off a GPU: 2 programs per SM wanted
    assert num_splits(2048, 2048, cpu) == 4 and num_splits(11264, 2048, cpu) == 1
    assert num_splits(2048, 5632, cpu) == 4 and num_splits(64, 256, cpu) == 2  # K = 2 tiles: at most 2 splits
    # 64-row tiles of 64 columns: at most one program per SM
    assert num_splits(2560, 2048, cpu, 64) == 2 and num_splits(2048, 2048, cpu, 48) == 4
    assert num_splits(11264, 2048, cpu, 64) == 1 and num_splits(2048, 2048, cpu, 32) == 4


def test_gemv_rejects_what_it_cannot_take():
    with pytest.raises(ValueError, match="up to 64 rows"):
        gemv_partials(torch.randn(MAX_ROWS + 1, 8).half(), torch.randn(4, 8).half())
    with pytest.raises(ValueError, match="its dtype"):
        gemv_partials(torch.randn(2, 8).half(), torch.randn(4, 8))
    with pytest.raises(ValueError, match="odd 5 rows"):
        gemv_swiglu(torch.randn(40, 8).half(), torch.randn(5, 8).half())


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_consumers_sum_partials_like_a_finished_projection(dtype, atol):
    g = torch.Generator().manual_seed(1)
    S, N = 3, 4
    x = torch.randn(N, 96, generator=g).to(dtype)
    w = (torch.rand(96, generator=g) + 0.5).to(dtype)
    res = torch.randn(S, N, 96, generator=g)  # fp32 partial sums, as gemv_partials writes them
    for a, b in zip(add_rmsnorm(x, res, w, 1e-5, True), add_rmsnorm(x, finished(res, dtype), w, 1e-5, True),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=atol, rtol=atol)
    gate_up = torch.randn(S, N, 2 * 1500, generator=g) * 2
    torch.testing.assert_close(silu_mul(gate_up, True, dtype), silu_mul(finished(gate_up, dtype), True),
                               atol=atol, rtol=atol)  # fmt: skip
    H, KV, D = 4, 2, 32
    qkv = torch.randn(S, N, (H + 2 * KV) * D, generator=g)
    angles = torch.rand(N, D // 2, generator=g) * 50
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    slots = torch.tensor([7, 0, 3, 12])
    outs = []
    for projection in (qkv, finished(qkv, dtype)):
        k_cache, v_cache = (torch.full((16, KV, D), float("nan"), dtype=dtype) for _ in range(2))
        q = rope_and_cache(projection, cos, sin, torch.arange(N), slots, k_cache, v_cache, H, True)
        outs.append((q, k_cache, v_cache))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, equal_nan=True)


@pytest.mark.parametrize("M, F", [(1, 48), (5, 80), (16, 64), (32, 48), (25, 16), (64, 64), (40, 100)])
def test_swiglu_epilogue_matches_projection_then_silu_mul(M, F):
    """The gate/up GEMV that writes silu(gate) * up itself, against the finished projection fed to silu_mul
    (the same rounding steps: only the sum order of the dot products differs)."""
    g = torch.Generator().manual_seed(M + F)
    x = torch.randn(M, 256, generator=g).half()
    gate, up = torch.randn(F, 256, generator=g).half() * 0.1, torch.randn(F, 256, generator=g).half() * 0.1
    gate_up = torch.stack([gate, up], 1).flatten(0, 1)  # interleaved by rows, as the runner keeps it
    got = gemv_swiglu(x, gate_up)
    assert got.shape == (M, F) and got.dtype == torch.float16
    want = silu_mul(torch.nn.functional.linear(x.float(), gate_up.float()).half(), False)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(project_swiglu(x, gate_up, True), got)  # few columns: split, summed by silu_mul
    torch.testing.assert_close(project_swiglu(x.float(), gate_up.float(), True), want.float(), atol=2e-3, rtol=1e-2)
