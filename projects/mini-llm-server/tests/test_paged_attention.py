"""The paged decode kernel against attention over contiguous K/V (on the CPU through Triton's interpreter,
set up by the root conftest; on a GPU compiled)."""

import pytest
import torch
from mini_llm_server.paged_attention import paged_decode_attention
from tinyllm.model import sdpa_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("H, K", [(4, 4), (4, 2), (8, 1), (6, 2)])  # MHA, GQA, MQA, a group of 3 (padded)
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_decode_matches_contiguous_attention(H, K, block_size):
    g = torch.Generator().manual_seed(H * 10 + K + block_size)
    D, num_blocks, lens = 32, 64, [1, 5, 17, 33]
    k_cache = torch.randn(num_blocks, block_size, K, D, generator=g)
    v_cache = torch.randn(num_blocks, block_size, K, D, generator=g)
    perm = torch.randperm(num_blocks, generator=g)  # scattered, non-contiguous blocks
    max_blocks = -(-max(lens) // block_size)
    tables = torch.zeros(len(lens), max_blocks, dtype=torch.int32)
    used = 0
    for n, L in enumerate(lens):
        nb = -(-L // block_size)
        tables[n, :nb] = perm[used : used + nb].to(torch.int32)
        used += nb
    q = torch.randn(len(lens), H, D, generator=g)
    to = dict(device=DEVICE)
    got = paged_decode_attention(q.to(**to), k_cache.to(**to), v_cache.to(**to), tables.to(**to),
                                 torch.tensor(lens, dtype=torch.int32, device=DEVICE), 0.2)  # fmt: skip
    for n, L in enumerate(lens):
        blocks = tables[n, : -(-L // block_size)].long()
        k = k_cache[blocks].reshape(-1, K, D)[:L].transpose(0, 1)[None]
        v = v_cache[blocks].reshape(-1, K, D)[:L].transpose(0, 1)[None]
        ref = sdpa_attention(q[n][None, :, None], k, v, causal=True, scale=0.2)[0, :, 0]
        torch.testing.assert_close(got[n].cpu(), ref, atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_named():
    q = torch.randn(2, 4, 32)
    cache = torch.randn(8, 4, 3, 32)
    with pytest.raises(ValueError, match="not a multiple"):
        paged_decode_attention(
            q, cache, cache, torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 1.0
        )
    cache = torch.randn(8, 3, 2, 32)
    with pytest.raises(ValueError, match="block_size 3 must be a power of two"):
        paged_decode_attention(
            q, cache, cache, torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 1.0
        )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_paged_decode_low_precision_on_gpu(dtype):
    g = torch.Generator().manual_seed(0)
    H, K, D, bs, lens = 32, 4, 64, 16, [1, 100, 1000, 2047]
    nb = [-(-L // bs) for L in lens]
    k_cache = torch.randn(sum(nb) + 3, bs, K, D, generator=g)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(k_cache.shape[0], generator=g)
    tables = torch.zeros(len(lens), max(nb), dtype=torch.int32)
    used = 0
    for n, b in enumerate(nb):
        tables[n, :b] = perm[used : used + b].to(torch.int32)
        used += b
    q = torch.randn(len(lens), H, D, generator=g)
    got = paged_decode_attention(q.cuda().to(dtype), k_cache.cuda().to(dtype), v_cache.cuda().to(dtype),
                                 tables.cuda(), torch.tensor(lens, dtype=torch.int32).cuda(), D**-0.5)  # fmt: skip
    for n, L in enumerate(lens):
        blocks = tables[n, : nb[n]].long()
        k = k_cache[blocks].reshape(-1, K, D)[:L].to(dtype).double().transpose(0, 1)[None]
        v = v_cache[blocks].reshape(-1, K, D)[:L].to(dtype).double().transpose(0, 1)[None]
        qd = q[n].to(dtype).double()[None, :, None]
        ref = sdpa_attention(qd, k, v, causal=True, scale=D**-0.5)[0, :, 0]
        torch.testing.assert_close(got[n].double().cpu(), ref, atol=2e-2, rtol=2e-2)
