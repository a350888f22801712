"""step-bench: refuses without a GPU; on one, a row per prompt length whose graph fits the step."""

import pytest
import torch
from mini_llm_server.step_costs import StepCostConfig, main, measure
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer


def test_step_bench_says_it_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="GPU"):
        main()


def test_step_costs_need_the_graph_path():
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                    max_seq_len=256)).eval()  # fmt: skip
    with pytest.raises(RuntimeError, match="CUDA-graph"):
        measure(model, StepCostConfig(decodes=2, context=8, prompt_tokens=(4,), max_num_batched_tokens=32))


@pytest.mark.gpu
def test_step_costs_on_gpu_time_each_steps_own_graph():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq_len=1024)
    model = Transformer(cfg).cuda().bfloat16().eval()
    step = StepCostConfig(decodes=7, context=20, prompt_tokens=(8, 40), max_num_batched_tokens=64,
                          prompts_per_length=2, decode_steps_between=4, replays=3, profile_prompt=40)  # fmt: skip
    rows, kernels = measure(model, step)
    kinds = [("decode", 0), ("decode between prompts", 0), ("mixed", 8), ("mixed", 40)]
    assert [(r["kind"], r["prompt_tokens"]) for r in rows] == kinds
    for r in rows[2:]:
        assert r["step_tokens"] == 7 + r["prompt_tokens"] <= r["graph_tokens"], r
    assert all(r["graph_ms"] > 0 and r["engine_interval_ms"] > 0 for r in rows), rows
    assert all(r["gpu_busy_ms"] > 0 and 0 <= r["gpu_idle_before_ms"] <= r["gpu_idle_max_ms"] for r in rows), rows
    assert "varlen attention" in {k["kernel"] for k in kernels} and all(k["us_per_step"] > 0 for k in kernels)
