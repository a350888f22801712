"""The kernel inside the shared reference transformer (its pluggable attention_fn), and the benchmark's
code path at CPU scale."""

import pytest
import torch
from flashattention_triton import attention
from mlsys_bench.project import BenchContext
from mlsys_bench.record import read_record
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def model_pair():
    cfg = ModelConfig(vocab_size=96, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=64)
    torch.manual_seed(0)
    ref = Transformer(cfg).to(device=DEVICE, dtype=torch.float16)
    fused = Transformer(cfg).to(device=DEVICE, dtype=torch.float16)
    fused.load_state_dict(ref.state_dict())
    fused.attention_fn = attention
    return ref, fused


def test_drop_in_for_the_shared_model_forward_and_backward(model_pair):
    ref, fused = model_pair
    tokens = torch.randint(0, 96, (2, 33), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits_ref, logits = ref(tokens), fused(tokens)
    torch.testing.assert_close(logits, logits_ref, atol=2e-2, rtol=2e-2)
    logits_ref.float().logsumexp(-1).mean().backward()
    logits.float().logsumexp(-1).mean().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=2e-2, rtol=2e-2, msg=name)


def test_drop_in_for_cached_decode(model_pair):
    # prefill then one-token decode steps: T_q < T_k, the bottom-right causal alignment a KV cache needs
    ref, fused = model_pair
    tokens = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with torch.no_grad():
        steps = []
        for model in (ref, fused):
            cache = model.new_cache(2, 32)
            out = [model.prefill(tokens[:, :16], cache)]
            out += [model.decode(tokens[:, t], cache) for t in range(16, 24)]
            steps.append(torch.stack(out))
    torch.testing.assert_close(steps[1], steps[0], atol=2e-2, rtol=2e-2)


@pytest.mark.slow
def test_bench_at_cpu_scale_writes_a_valid_record(tmp_path):
    from flashattention_triton import report

    ctx = BenchContext(
        project="flashattention-triton",
        device=torch.device("cpu"),
        scale="cpu",
        hardware="cpu-test",
        results_dir=tmp_path,
        repo=tmp_path,
        ceilings=None,
        show_progress=False,
    )
    if torch.cuda.is_available():
        pytest.skip("the CPU-scale run needs the interpreter, which this session did not enable")
    report.bench(ctx)
    rec = read_record(tmp_path / "attention.json")
    shape = report.sweep_shape("cpu")
    impls = {r["impl"] for r in rec.rows}
    assert impls == {"triton", "sdpa-math", "naive"}
    assert len(rec.rows) == len(impls) * 2 * 2 * len(shape["seqlens"]) * len(shape["head_dims"])
    assert all(r["TFLOPs"] > 0 for r in rec.rows)
    assert set(rec.config["max_error_vs_naive"]) == {"out", "dq", "dk", "dv"}
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"{d}-d64-{m}.png" for d in ("fwd", "bwd") for m in ("full", "causal")
    )


def test_flop_count_matches_the_papers():
    from flashattention_triton.report import flops

    assert flops(16, 16, 1024, 128, False, "fwd") == 4 * 16 * 16 * 1024**2 * 128
    assert flops(16, 16, 1024, 128, True, "bwd") == 2.5 * 2 * 16 * 16 * 1024**2 * 128
