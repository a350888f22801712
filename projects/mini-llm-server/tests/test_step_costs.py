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


def test_step_timeline_pairs_each_steps_start_with_its_sampling():
    """On a fake clock: busy from a step's input upload to its sampling, idle from the last step's end to the
    next upload; a step that samples nothing (a prompt chunk short of its end) has no busy time and breaks the
    chain."""
    from types import SimpleNamespace

    from mini_llm_server.step_costs import StepTimeline

    clock = [0.0]

    class Event:  # records the fake clock, in ms
        def record(self):
            self.t = clock[0]

        def elapsed_time(self, later):
            return later.t - self.t

        def synchronize(self):
            pass

    def graphs():
        return SimpleNamespace(inputs=SimpleNamespace(upload=lambda: None))

    def run(graphs, host, work):  # the host builds the inputs (not the GPU's time), uploads, then the graph works
        clock[0] += host
        graphs.inputs.upload()
        clock[0] += work

    runner = SimpleNamespace(decode_graphs=graphs(), mixed_graphs=graphs(),
                             sample_greedy=lambda logits: clock.__setitem__(0, clock[0] + 0.5))  # fmt: skip
    timeline = StepTimeline(runner, event=Event)
    for kind, host, work in [("decode", 9.0, 1.0), ("decode", 4.0, 2.0), ("mixed", 2.0, 3.0), ("decode", 6.0, 1.0)]:
        run(getattr(runner, f"{kind}_graphs"), host, work)
        runner.sample_greedy(None)
    run(runner.mixed_graphs, 1.0, 2.0)  # a chunk that samples nothing
    run(runner.decode_graphs, 7.0, 1.0)
    runner.sample_greedy(None)
    summary = timeline.summary()
    # decode: busy 1.5, 2.5, 1.5, 1.5; idle 4 and 6 before the second and third, none known after the chunk
    assert summary["decode"] == {"gpu_busy_ms": 1.75, "gpu_idle_before_ms": 5.0, "gpu_idle_max_ms": 6.0}
    assert summary["mixed"] == {"gpu_busy_ms": 3.5, "gpu_idle_before_ms": 2.0, "gpu_idle_max_ms": 2.0}
    timeline.clear()
    assert timeline.summary() == {}
