"""The paged decode and varlen kernels against attention over contiguous K/V (on the CPU through Triton's
interpreter, set up by the root conftest; on a GPU compiled)."""

import pytest
import torch
from mini_llm_server.fused_ops import rope_and_cache
from mini_llm_server.paged_attention import (
    max_varlen_tiles,
    paged_decode_attention,
    paged_decode_attention_rope,
    paged_varlen_attention,
    tokens_per_tile,
)
from mini_llm_server.step_inputs import varlen_tiles
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


@pytest.mark.parametrize("splits", [0, 3], ids=["finished", "partials"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_decode_with_rope_equals_rope_then_decode(splits, dtype):
    """The decode kernel that rotates q/k and writes the new K/V itself against rope_and_cache then the plain
    decode kernel: the same output and the same cache, for new tokens at positions 0 (nothing cached), 4
    and 16 of sequences over scattered blocks, from a finished projection or its split-K partials."""
    g = torch.Generator().manual_seed(splits + 7)
    H, K, D, bs, num_blocks, lens = 6, 2, 32, 4, 24, [1, 5, 17]
    tables = torch.randperm(num_blocks, generator=g)[:15].view(3, 5).to(torch.int32)
    positions = torch.tensor([n - 1 for n in lens])
    slots = torch.stack([tables[i, p // bs].long() * bs + p % bs for i, p in enumerate(positions.tolist())])
    width = (H + 2 * K) * D
    qkv = torch.randn(splits, 3, width, generator=g) if splits else torch.randn(3, width, generator=g).to(dtype)
    angles = torch.rand(32, D // 2, generator=g) * 30
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    base = [torch.randn(num_blocks, bs, K, D, generator=g).to(dtype) for _ in range(2)]
    to = dict(device=DEVICE)
    results = []
    for fused in (True, False):
        k_cache, v_cache = (c.clone().to(**to) for c in base)
        args = [t.to(**to) for t in (qkv, cos, sin, positions, slots)]
        lengths = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        if fused:
            out = paged_decode_attention_rope(*args, k_cache, v_cache, tables.to(**to), lengths, H, 0.3)
        else:
            q = rope_and_cache(*args, k_cache.view(-1, K, D), v_cache.view(-1, K, D), H, True)
            out = paged_decode_attention(q, k_cache, v_cache, tables.to(**to), lengths, 0.3)
        results.append((out, k_cache, v_cache))
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="not \\(6 \\+ 2 x 2\\) heads"):
        paged_decode_attention_rope(qkv[..., :-1], cos, sin, positions, slots, *base, tables, lengths.cpu(), H, 0.3)


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


def _scattered_cache(ctx_lens, K, D, block_size, g, extra_blocks=3):
    """A cache holding each sequence's positions in randomly placed blocks, and the block tables."""
    nb = [-(-L // block_size) for L in ctx_lens]
    k_cache = torch.randn(sum(nb) + extra_blocks, block_size, K, D, generator=g)
    v_cache = torch.randn(sum(nb) + extra_blocks, block_size, K, D, generator=g)
    perm = torch.randperm(k_cache.shape[0], generator=g)
    tables = torch.full((len(ctx_lens), max(nb) + 1), k_cache.shape[0] - 1, dtype=torch.int32)  # stale tails
    used = 0
    for n, b in enumerate(nb):
        tables[n, :b] = perm[used : used + b].to(torch.int32)
        used += b
    return k_cache, v_cache, tables


def _causal_reference(q, k, v, scale):
    """float64 attention of q (T, H, D), the last T of k/v's (S, K, D) positions, each row seeing positions up
    to its own."""
    T, H, D = q.shape
    S, K, _ = k.shape
    k, v = k.double().repeat_interleave(H // K, dim=1), v.double().repeat_interleave(H // K, dim=1)
    scores = torch.einsum("thd,shd->hts", q.double(), k) * scale
    pos_q = torch.arange(S - T, S)[:, None]
    scores = scores.masked_fill(torch.arange(S)[None, :] > pos_q, float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


def _run_varlen(q_lens, ctx_lens, H, K, D, block_size, dtype, seed, pad_tiles=0):
    g = torch.Generator().manual_seed(seed)
    k_cache, v_cache, tables = _scattered_cache(ctx_lens, K, D, block_size, g)
    q = torch.randn(sum(q_lens), H, D, generator=g)
    seqs, firsts = varlen_tiles(q_lens, tokens_per_tile(H, K))
    seqs, firsts = [*seqs, *[-1] * pad_tiles], [*firsts, *[0] * pad_tiles]  # a graph's grid: more programs than tiles
    starts = [sum(q_lens[:n]) for n in range(len(q_lens))]
    i32 = dict(dtype=torch.int32, device=DEVICE)
    got = paged_varlen_attention(
        q.to(DEVICE, dtype), k_cache.to(DEVICE, dtype), v_cache.to(DEVICE, dtype), tables.to(DEVICE),
        torch.tensor(starts, **i32), torch.tensor(q_lens, **i32), torch.tensor(ctx_lens, **i32),
        torch.tensor(seqs, **i32), torch.tensor(firsts, **i32), D**-0.5,
    )  # fmt: skip
    for n, (T, S) in enumerate(zip(q_lens, ctx_lens, strict=True)):
        blocks = tables[n, : -(-S // block_size)].long()
        k = k_cache[blocks].reshape(-1, K, D)[:S].to(dtype)
        v = v_cache[blocks].reshape(-1, K, D)[:S].to(dtype)
        ref = _causal_reference(q[starts[n] : starts[n] + T].to(dtype), k, v, D**-0.5)
        yield got[starts[n] : starts[n] + T].double().cpu(), ref


# a decode token, a whole prompt, a chunk after cached positions, a one-token prompt, a chunk spanning tiles
VARLEN_CASES = ([1, 23, 9, 1, 40], [17, 23, 30, 1, 75])


@pytest.mark.parametrize("H, K", [(4, 4), (4, 2), (8, 1), (6, 2)])  # MHA, GQA, MQA, a group of 3 (padded)
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_varlen_matches_causal_attention(H, K, block_size):
    for got, ref in _run_varlen(*VARLEN_CASES, H, K, 32, block_size, torch.float32, seed=H * 10 + K + block_size,
                                pad_tiles=3):  # fmt: skip
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_varlen_tile_table_covers_every_token_once():
    q_lens, per_tile = [1, 23, 9, 1, 40], 8
    seqs, firsts = varlen_tiles(q_lens, per_tile)
    covered = [(n, f + i) for n, f in zip(seqs, firsts, strict=True) for i in range(per_tile) if f + i < q_lens[n]]
    assert sorted(covered) == [(n, t) for n, L in enumerate(q_lens) for t in range(L)]
    assert len(seqs) <= max_varlen_tiles(sum(q_lens), len(q_lens), per_tile)
    assert tokens_per_tile(32, 4) == 8 and tokens_per_tile(6, 2) == 16 and tokens_per_tile(128, 1) == 1


def test_varlen_bad_metadata_is_named():
    q, cache = torch.randn(3, 4, 32), torch.randn(8, 4, 2, 32)
    i32 = dict(dtype=torch.int32)
    with pytest.raises(ValueError, match="2 block tables"):
        paged_varlen_attention(q, cache, cache, torch.zeros(2, 1, **i32), torch.zeros(3, **i32),
                               torch.ones(3, **i32), torch.ones(3, **i32), torch.zeros(3, **i32),
                               torch.zeros(3, **i32), 1.0)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_paged_varlen_low_precision_on_gpu(dtype):
    q_lens, ctx_lens = [1, 1000, 300, 1, 64], [2047, 1000, 700, 1, 64]
    for got, ref in _run_varlen(q_lens, ctx_lens, 32, 4, 64, 16, dtype, seed=0, pad_tiles=10):
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
