"""GpuTimeline on a fake clock: busy from a step's start to its sampling, idle from the last step's end to the
next start, a chain broken by a step that samples nothing or an idle engine; steps folded only once their end
has passed. And the engine's hooks: every graph step it runs starts and ends once."""

import pytest
import torch
from mini_llm_server import EngineConfig, LLMEngine
from mini_llm_server.gpu_timeline import GpuTimeline
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams


class Clock:
    """A fake GPU clock in ms, and events that record it; an event has passed once the GPU reaches it."""

    def __init__(self) -> None:
        self.now, self.gpu_done_until = 0.0, float("inf")

    def event(self):
        clock = self

        class Event:
            def record(self):
                self.t = clock.now

            def elapsed_time(self, later):
                return later.t - self.t

            def query(self):
                return self.t <= clock.gpu_done_until

            def synchronize(self):
                clock.gpu_done_until = max(clock.gpu_done_until, self.t)

        return Event()


def _run(timeline: GpuTimeline, clock: Clock, kind: str, host: float, work: float, samples: bool = True) -> None:
    clock.now += host  # the host builds the inputs: not the GPU's time
    timeline.start(kind)
    clock.now += work
    if samples:
        timeline.end()


def test_busy_and_idle_per_kind_and_broken_chains():
    clock = Clock()
    timeline = GpuTimeline(event=clock.event)
    for kind, host, work in [("decode", 9.0, 1.5), ("decode", 4.0, 2.5), ("mixed", 2.0, 3.5), ("decode", 6.0, 1.5)]:
        _run(timeline, clock, kind, host, work)
    _run(timeline, clock, "mixed", 1.0, 2.0, samples=False)  # a chunk that samples nothing: no end, chain broken
    _run(timeline, clock, "decode", 7.0, 1.5)
    timeline.pause()  # nothing to run: the wait before the next step is not the host's
    _run(timeline, clock, "decode", 50.0, 1.5)
    s = timeline.summary()
    # decode: busy 1.5, 2.5, 1.5, 1.5, 1.5; idle known before the second (4) and the fourth (6, after the mixed
    # step) only: the fifth follows the chunk, the sixth the pause
    assert s["decode"] == {"steps": 5, "gpu_busy_ms": 1.7, "gpu_idle_before_ms": 5.0, "gpu_idle_max_ms": 6.0,
                           "gpu_busy_total_ms": 8.5, "gpu_idle_total_ms": 10.0}  # fmt: skip
    assert s["mixed"] == {"steps": 1, "gpu_busy_ms": 3.5, "gpu_idle_before_ms": 2.0, "gpu_idle_max_ms": 2.0,
                          "gpu_busy_total_ms": 3.5, "gpu_idle_total_ms": 2.0}  # fmt: skip
    timeline.reset()
    assert timeline.summary() == {}
    _run(timeline, clock, "decode", 3.0, 1.0)  # every step had passed: the reset waited for none, the chain goes on
    assert timeline.summary()["decode"]["gpu_idle_before_ms"] == 3.0


def test_steps_are_folded_only_once_their_end_has_passed_unless_asked_to_wait():
    clock = Clock()
    clock.gpu_done_until = 0.0
    timeline = GpuTimeline(event=clock.event)
    _run(timeline, clock, "decode", 1.0, 2.0)
    _run(timeline, clock, "decode", 1.0, 2.0)
    assert timeline.summary() == {}  # the GPU has reached neither end: nothing waited for
    clock.gpu_done_until = 3.0  # the first step's end
    assert timeline.summary()["decode"]["steps"] == 1
    assert timeline.summary(wait=True)["decode"]["steps"] == 2
    assert timeline.summary()["decode"]["gpu_idle_before_ms"] == 1.0
    _run(timeline, clock, "decode", 5.0, 2.0)  # after the wait: its idle is not the host's, and not counted
    assert timeline.summary(wait=True)["decode"]["gpu_idle_max_ms"] == 1.0


def test_the_engine_starts_and_ends_every_graph_step():
    """The CUDA-graph paths run eagerly on the CPU (padded), with a fake clock in the timeline: every decode
    step is one decode start and end, every mixed step that samples one mixed pair, and steps that sample
    nothing are not counted."""
    from mini_llm_server.cuda_graphs import DecodeGraphs, MixedGraphs

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                    max_seq_len=128)).eval()  # fmt: skip
    config = EngineConfig(num_blocks=128, block_size=4, attention_backend="triton", max_num_seqs=4,
                          max_num_batched_tokens=16)  # fmt: skip
    engine = LLMEngine(model, config)
    runner = engine.runner
    runner.decode_graphs, runner.mixed_graphs = DecodeGraphs(runner, 4), MixedGraphs(runner, 16, 4)
    clock = Clock()
    runner.timeline = GpuTimeline(event=clock.event)

    def tick(*_):
        clock.now += 1.0

    runner.model.lm_head.register_forward_pre_hook(tick)  # GPU time passes in each forward, at its LM head
    prompts = [torch.randint(0, 128, (n,)).tolist() for n in (40, 3, 30, 9, 5, 12)]  # 40 alone first: chunks
    engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=6))
    s = runner.timeline.summary()
    assert s["decode"]["steps"] == runner.decode_graphs.replays > 0
    assert 0 < s["mixed"]["steps"] < runner.mixed_graphs.replays  # the chunks short of a prompt's end: no end
    assert "eager" not in s
    metrics = engine.metrics()
    assert metrics["gpu_decode_steps"] == s["decode"]["steps"]
    assert metrics["gpu_decode_busy_ms"] == metrics["gpu_mixed_busy_ms"] == 1.0  # one tick a forward


def test_the_engine_refuses_a_timeline_off_the_gpu():
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                    max_seq_len=64)).eval()  # fmt: skip
    with pytest.raises(ValueError, match="gpu_timeline.*CUDA"):
        LLMEngine(model, EngineConfig(num_blocks=8, gpu_timeline=True))


def test_serving_bench_turns_the_engines_timeline_into_its_columns():
    from mini_llm_server.serving import _gpu_figures

    m = {"gpu_decode_steps": 3, "gpu_decode_busy_ms": 1.0, "gpu_decode_idle_max_ms": 0.5,
         "gpu_decode_busy_total_ms": 3.0, "gpu_decode_idle_total_ms": 0.6,
         "gpu_mixed_steps": 1, "gpu_mixed_busy_ms": 2.0, "gpu_mixed_idle_max_ms": 0.4,
         "gpu_mixed_busy_total_ms": 2.0, "gpu_mixed_idle_total_ms": 0.4}  # fmt: skip
    assert _gpu_figures(m) == {"gpu_busy_share": 5.0 / 6.0, "decode_gpu_ms": 1.0, "mixed_gpu_ms": 2.0,
                               "gpu_idle_ms": 0.25, "gpu_idle_max_ms": 0.5, "eager_steps": 0}  # fmt: skip
    assert set(_gpu_figures({}).values()) == {None}


@pytest.mark.gpu
def test_an_engine_on_the_gpu_times_its_steps_on_the_gpus_clock():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq_len=512)
    model = Transformer(cfg).cuda().bfloat16().eval()
    engine = LLMEngine(model, EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, gpu_timeline=True))
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (100, 7, 30, 9, 50, 12, 3, 80, 20)]
    engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=24))
    s = engine.runner.timeline.summary(wait=True)
    assert s["decode"]["steps"] > 10 and s["mixed"]["steps"] > 2 and "eager" not in s, s
    for kind in ("decode", "mixed"):
        assert 0 < s[kind]["gpu_busy_ms"] < 50 and 0 <= s[kind]["gpu_idle_before_ms"] <= s[kind]["gpu_idle_max_ms"]
    m = engine.metrics()
    assert m["gpu_decode_steps"] == s["decode"]["steps"] and m["gpu_mixed_busy_ms"] == s["mixed"]["gpu_busy_ms"]
