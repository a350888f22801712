"""The runner's fused Triton kernels against the same math in torch (TRITON_INTERPRET=1 on a CPU; bf16 on GPU)."""

import pytest
import torch
from mini_llm_server.fused_ops import add_rmsnorm, embed, rope_and_cache, silu_mul


def _check(device, dtype, atol):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, 96, generator=g).to(device, dtype) for _ in range(2))
    w = torch.rand(96, generator=g).to(device, dtype) + 0.5
    for residual in (None, r):
        got = add_rmsnorm(x, residual, w, 1e-5, use_triton=True)
        want = add_rmsnorm(x, residual, w, 1e-5, use_triton=False)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=atol)
    gate_up = torch.randn(3, 2 * 1500, generator=g).to(device, dtype) * 4  # F = 1500: two column blocks
    torch.testing.assert_close(silu_mul(gate_up, True), silu_mul(gate_up, False), atol=atol, rtol=atol)
    # H + KV = 6 and 9 heads, KV = 2 and 3: both padded to the kernel's power-of-two head counts
    for H, KV in ((4, 2), (6, 3)):
        D, N = 32, 6
        qkv = torch.randn(N, (H + 2 * KV) * D, generator=g).to(device, dtype)
        angles = torch.rand(20, D // 2, generator=g) * 50  # a table of 20 positions, read at each token's
        cos, sin = (f(torch.cat([angles, angles], -1)).to(device, dtype) for f in (torch.cos, torch.sin))
        positions = torch.tensor([19, 3, 0, 3, 11, 7], device=device)
        slots = torch.tensor([7, 0, 3, 12, 5, 9], device=device)
        caches = []
        for use_triton in (True, False):
            k_cache, v_cache = (torch.full((16, KV, D), float("nan"), device=device, dtype=dtype) for _ in range(2))
            q = rope_and_cache(qkv, cos, sin, positions, slots, k_cache, v_cache, H, use_triton)
            caches.append((q, k_cache, v_cache))
        for a, b in zip(*caches, strict=True):  # the same Q, and the same slots written (NaN elsewhere in both)
            torch.testing.assert_close(a, b, atol=atol, rtol=atol, equal_nan=True)
    table = torch.randn(50, 96, generator=g).to(device, dtype)
    tokens = torch.tensor([4, 0, 49, 7], device=device)
    feeds, sampled = torch.tensor([-1, 2, -1, 0], device=device), torch.tensor([31, 9, 12], device=device)
    want = table[torch.tensor([4, 12, 49, 31], device=device)]  # rows 1 and 3 read the sampled tokens
    for use_triton in (True, False):
        assert torch.equal(embed(tokens, feeds, sampled, table, use_triton), want)
        assert torch.equal(embed(tokens, None, sampled, table, use_triton), table[tokens])


def test_fused_kernels_match_torch_on_cpu():
    _check("cpu", torch.float32, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_kernels_match_torch_on_gpu(dtype):
    _check("cuda", dtype, 1e-2)
