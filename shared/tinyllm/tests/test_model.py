import pytest
import torch
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer, sdpa_attention


def naive_attention(q, k, v, *, causal, scale):
    """Scores materialised, mask built by hand, K/V heads repeated: the definition, in fp64."""
    H, K = q.shape[1], k.shape[1]
    k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    T, S = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
        s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v.double()).to(q.dtype)


@pytest.mark.parametrize("T, S", [(7, 7), (1, 9), (4, 11)])
@pytest.mark.parametrize("H, K", [(4, 4), (4, 2), (4, 1)])
def test_sdpa_attention_matches_definition(T, S, H, K):
    g = torch.Generator().manual_seed(T * 100 + S)
    q = torch.randn(2, H, T, 16, generator=g)
    k, v = torch.randn(2, K, S, 16, generator=g), torch.randn(2, K, S, 16, generator=g)
    got = sdpa_attention(q, k, v, causal=True, scale=0.25)
    torch.testing.assert_close(got, naive_attention(q, k, v, causal=True, scale=0.25), atol=1e-5, rtol=1e-5)


def test_kv_cache_decode_equals_full_recompute(small_model):
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(0, small_model.cfg.vocab_size, (2, 20), generator=g)
    with torch.no_grad():
        full = small_model(seq)  # (B, T, V) with no cache
        cache = small_model.new_cache(2, 32)
        step_logits = [small_model.prefill(seq[:, :8], cache)]
        for t in range(8, 20):
            step_logits.append(small_model.decode(seq[:, t], cache))
    got = torch.stack(step_logits[:-1], dim=1)  # predictions for positions 8..19
    torch.testing.assert_close(got, full[:, 7:19], atol=1e-5, rtol=1e-5)
    assert cache.length == 20


def test_chunked_prefill_equals_one_prefill(small_model):
    seq = torch.randint(0, small_model.cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = small_model(seq)
        cache = small_model.new_cache(1)
        parts = [small_model(seq[:, a:b], cache) for a, b in [(0, 5), (5, 13), (13, 24)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, atol=1e-5, rtol=1e-5)


def test_param_count_formula(small_cfg):
    from dataclasses import replace

    for cfg in (small_cfg, replace(small_cfg, tie_embeddings=True), replace(small_cfg, head_dim=8)):
        model = Transformer(cfg)
        assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_kv_bytes_formula(small_model):
    cache = small_model.new_cache(3, 16)
    assert cache.bytes_per_token == small_model.cfg.kv_bytes_per_token(4)
    assert cache.nbytes == 3 * 16 * small_model.cfg.kv_bytes_per_token(4)


def test_dtypes_run(small_model):
    x = torch.randint(0, 320, (1, 9))
    ref = small_model(x)
    for dtype in (torch.bfloat16, torch.float16):
        m = Transformer(small_model.cfg)
        m.load_state_dict(small_model.state_dict())
        out = m.to(dtype).eval()(x)
        assert out.dtype == dtype
        assert (out.float() - ref).abs().max() < 0.2 * ref.abs().max()


def test_pluggable_attention_is_called(small_model):
    calls = []

    def spy(q, k, v, *, causal, scale):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        return sdpa_attention(q, k, v, causal=causal, scale=scale)

    small_model.attention_fn = spy
    small_model(torch.zeros(2, 5, dtype=torch.long))
    assert calls == [((2, 4, 5, 16), (2, 2, 5, 16), True)] * 2


def test_errors(small_model):
    cfg = small_model.cfg
    with pytest.raises(ValueError, match="exceeds the model's maximum context of 64"):
        small_model(torch.zeros(1, 65, dtype=torch.long))
    cache = small_model.new_cache(1, 8)
    small_model.prefill(torch.zeros(1, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="prefill needs an empty cache"):
        small_model.prefill(torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="do not fit"):
        small_model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="does not match the cache"):
        small_model.decode(torch.zeros(2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="decode needs a prefilled cache"):
        small_model.decode(torch.zeros(1, dtype=torch.long), small_model.new_cache(1, 8))
    with pytest.raises(ValueError, match="exceeds the model's maximum context"):
        small_model.new_cache(1, cfg.max_seq_len + 1)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(dim=30, n_heads=4, n_kv_heads=2), "divisible"),
        (dict(n_layers=0), "n_layers must be >= 1"),
    ],
)
def test_config_validation(kw, msg):
    base = dict(vocab_size=10, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=8)
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**{**base, **kw})


@pytest.mark.gpu
def test_gpu_bf16_decode_matches_recompute(small_cfg):
    torch.manual_seed(0)
    model = Transformer(small_cfg).cuda().to(torch.bfloat16).eval()
    seq = torch.randint(0, small_cfg.vocab_size, (4, 40), device="cuda")
    with torch.no_grad():
        full = model(seq).float()
        cache = model.new_cache(4, 40)
        logits = [model.prefill(seq[:, :16], cache)] + [model.decode(seq[:, t], cache) for t in range(16, 39)]
    got = torch.stack(logits, dim=1).float()
    assert (got - full[:, 15:39]).abs().max() < 0.05 * full.abs().max()
