"""The engine against the definition: greedy output under every scheduling feature must be token-identical
to generating each request alone with the shared model (fp32, CPU, a small random model)."""

import asyncio

import pytest
import torch
from mini_llm_server import EngineConfig, LLMEngine
from mini_llm_server.async_engine import AsyncEngine
from tinyllm.config import ModelConfig
from tinyllm.generate import generate
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)
    m = Transformer(cfg).eval()
    m.reset_parameters(std=0.2)  # larger weights than init: sharper logits, so greedy ties are unlikely
    return m


def _prompts(n, seed=0, shared_prefix=0):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 128, (shared_prefix,), generator=g).tolist()
    lengths = torch.randint(1, 40, (n,), generator=g).tolist()
    return [prefix + torch.randint(0, 128, (k,), generator=g).tolist() for k in lengths]


def _alone(model, prompts, params=GREEDY):
    return [generate(model, [p], params).tokens[0] for p in prompts]


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(num_blocks=256, block_size=4, max_num_batched_tokens=512),  # continuous, whole prompts
        EngineConfig(num_blocks=256, block_size=4, max_num_batched_tokens=7),  # chunked prefill every step
        EngineConfig(num_blocks=256, block_size=8, policy="static", max_num_seqs=4, max_num_batched_tokens=16),
        EngineConfig(num_blocks=256, block_size=8, policy="fifo"),
        EngineConfig(num_blocks=256, block_size=4, enable_prefix_caching=False),
        EngineConfig(num_blocks=256, block_size=4, max_num_batched_tokens=7, attention_backend="triton"),
        EngineConfig(num_blocks=256, block_size=4, max_num_seqs=4, min_admission=3),
        EngineConfig(num_blocks=256, block_size=4, max_num_batched_tokens=16, max_prefill_tokens=5),
    ],
    ids=["continuous", "chunked", "static", "fifo", "no-prefix-cache", "paged-kernel", "admission", "prefill-cap"],
)
def test_greedy_output_matches_one_request_at_a_time(model, config):
    prompts = _prompts(9, seed=1)
    engine = LLMEngine(model, config)
    assert engine.generate(prompts, GREEDY) == _alone(model, prompts)
    assert engine.metrics()["kv_blocks_used"] == 0  # everything freed at the end


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_step_time_is_split_four_ways(model, backend):
    import time

    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4, attention_backend=backend))
    t0 = time.perf_counter()
    engine.generate(_prompts(3, seed=14), GREEDY)
    wall = time.perf_counter() - t0
    parts = {k: engine.metrics()[f"{k}_seconds"] for k in ("schedule", "prepare", "forward", "sample")}
    assert all(v > 0 for v in parts.values()), parts
    assert sum(parts.values()) <= wall
    m = engine.metrics()
    # by kind: steps the host saw done; the last can be one whose rows were all dropped (every sequence in it
    # ended on the token read late), never waited for
    seen = m["decode_steps"] + m["mixed_steps"]
    assert m["decode_steps"] > 0 and m["mixed_steps"] > 0 and m["steps"] - 1 <= seen <= m["steps"]
    assert 0 < m["decode_step_seconds"] + m["mixed_step_seconds"] <= wall


def test_engine_counts_one_inter_token_gap_per_token_after_the_first(model):
    import time

    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    prompts = _prompts(4, seed=15)
    t0 = time.perf_counter()
    outputs = engine.generate(prompts, GREEDY)
    wall_ms = 1e3 * (time.perf_counter() - t0)
    assert sum(engine.itl_counts) == sum(len(o) for o in outputs) - len(prompts)
    m = engine.metrics()
    assert 0 < m["itl_p50_ms"] <= m["itl_p95_ms"] <= m["itl_p99_ms"] <= wall_ms


def test_each_token_carries_when_the_engine_read_it(model):
    """read_at, where delivery's delay starts: set by the step that read the token, with the overlapped steps'
    tokens read one call late; an output that carries no token has none."""
    import time

    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    for prompt in _prompts(3, seed=16):
        engine.add_request(prompt, GREEDY)
    engine.add_request([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=0))  # ends with no token
    seen = 0
    while engine.has_unfinished():
        t0 = time.perf_counter()
        outs = engine.step()
        t1 = time.perf_counter()
        for out in outs:
            assert (t0 <= out.read_at <= t1) if out.new_tokens else out.read_at == 0.0, out
            seen += len(out.new_tokens)
    assert seen == 3 * GREEDY.max_new_tokens


def test_histogram_percentiles_read_the_upper_edge_of_their_bin():
    from mini_llm_server.engine import histogram_percentile_ms

    counts = [0, 90, 0, 9, 1]  # 10-us bins: 90 gaps in [10, 20) us, 9 in [30, 40), 1 in [40, 50)
    assert histogram_percentile_ms(counts, 50) == pytest.approx(0.02)
    assert histogram_percentile_ms(counts, 90) == pytest.approx(0.02)
    assert histogram_percentile_ms(counts, 95) == pytest.approx(0.04)
    assert histogram_percentile_ms(counts, 99.5) == pytest.approx(0.05)
    assert histogram_percentile_ms([0, 0], 95) == 0.0


def test_admission_waits_for_a_group_while_others_decode(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=256, block_size=4, max_num_seqs=4, min_admission=3))
    prompts = _prompts(9, seed=13)
    for i, p in enumerate(prompts):
        engine.add_request(p, SamplingParams(temperature=0.0, max_new_tokens=3 + 5 * (i % 4)))
    groups = []
    while engine.has_unfinished():
        before = {s.seq_id for s in engine.scheduler.running}
        engine.step()
        waiting = len(engine.scheduler.waiting)
        admitted = {s.seq_id for s in engine.scheduler.running} | {s for s in before if s not in engine.seqs}
        new = len(admitted - before)
        if new and before:
            groups.append((new, waiting))
    assert groups, "no admission happened while others were running"
    assert all(n >= 3 or w == 0 for n, w in groups), groups  # a group of 3, or the last of the queue


def test_prefill_cap_bounds_prompt_work_while_every_stream_decodes(model):
    # a budget that counts decodes leaves prompts what the streams do not take; the prefill cap bounds prompt
    # work per step however many decode, and never holds a decode back
    config = EngineConfig(num_blocks=256, block_size=4, max_num_seqs=6, max_num_batched_tokens=20, max_prefill_tokens=6)
    engine = LLMEngine(model, config)
    schedules = []
    schedule = engine.scheduler.schedule

    def recorded(now):
        s = schedule(now)
        decoding = [q for q in engine.scheduler.running if q.num_tokens - q.num_computed == 1]
        schedules.append((s, {q.seq_id for q in decoding}))
        return s

    engine.scheduler.schedule = recorded
    prompts = _prompts(14, seed=16)
    assert engine.generate(prompts, GREEDY) == _alone(model, prompts)
    prompt_work = [sum(i.num_tokens for i in s.seqs if i.num_tokens > 1) for s, _ in schedules]
    assert max(prompt_work) == 6 and all(s.num_tokens <= 20 for s, _ in schedules), prompt_work
    for s, decoding in schedules:  # every stream with one token to compute was in the step
        assert decoding <= {i.seq.seq_id for i in s.seqs}


def test_prefill_cap_must_be_positive():
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        EngineConfig(max_prefill_tokens=0)


def test_prefix_caching_reuses_blocks_and_stays_identical(model):
    prompts = _prompts(6, seed=2, shared_prefix=24)
    prompts.append(list(prompts[0]))  # an exact repeat: a whole-prompt hit that must copy-on-write
    engine = LLMEngine(model, EngineConfig(num_blocks=256, block_size=4, max_num_batched_tokens=64))
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert first + rest == _alone(model, prompts)
    m = engine.metrics()
    assert m["prefix_cache_hit_rate"] > 0.4, m


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_preemption_under_a_small_pool_stays_identical(model, backend):
    prompts = _prompts(8, seed=3)
    # 24 blocks of 4 = 96 slots for 8 requests of up to ~51 tokens: the pool runs out and running
    # sequences are preempted and recomputed
    config = EngineConfig(num_blocks=24, block_size=4, max_num_batched_tokens=64, attention_backend=backend)
    engine = LLMEngine(model, config)
    assert engine.generate(prompts, GREEDY) == _alone(model, prompts)
    assert engine.metrics()["preemptions"] > 0
    engine.blocks.check_invariants([])
    assert engine.runner.block_tables.num_held == 0  # every finished or preempted sequence gave its row back


def test_block_table_rows_are_reused_across_many_sequences(model):
    """Two rows, a small pool: once a sequence is preempted, more important requests arrive and run while it
    waits. A row not given back on finishing or preemption would leave one of them without."""
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 128, (36,), generator=g).tolist() for _ in range(2)] + _prompts(4, seed=3)
    # 16 blocks of 4: the first two requests (48 tokens each at the end) cannot both finish without a preemption
    config = EngineConfig(num_blocks=16, block_size=4, max_num_seqs=2, max_num_batched_tokens=64)
    engine = LLMEngine(model, config)
    ids = [engine.add_request(p, GREEDY, priority=5) for p in prompts[:2]]
    outs: dict[int, list[int]] = {}

    def step() -> None:
        for o in engine.step():
            outs.setdefault(o.request_id, []).extend(o.new_tokens)

    while engine.metrics()["preemptions"] == 0 and engine.has_unfinished():
        step()
    assert engine.metrics()["preemptions"] > 0
    ids += [engine.add_request(p, GREEDY, priority=0) for p in prompts[2:]]
    while engine.has_unfinished():
        step()
    assert [outs[i] for i in ids] == _alone(model, prompts)
    assert engine.runner.block_tables.num_held == 0


def test_seeded_sampling_is_reproducible_under_batching(model):
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=7, max_new_tokens=10)
    prompts = _prompts(5, seed=4)
    solo = [LLMEngine(model, EngineConfig(num_blocks=64)).generate([p], params)[0] for p in prompts]
    batched = LLMEngine(model, EngineConfig(num_blocks=256, max_num_batched_tokens=9)).generate(prompts, params)
    assert batched == solo


def test_stop_tokens_and_limits(model):
    prompt = _prompts(1, seed=5)[0]
    free_run = _alone(model, [prompt])[0]
    stop = free_run[3]
    engine = LLMEngine(model, EngineConfig(num_blocks=64))
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=(stop,)))[0]
    assert out == free_run[: free_run.index(stop) + 1]
    assert engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=0)) == [[]]
    long = list(range(120))  # context 128: stops at the model's limit
    rid = engine.add_request(long, SamplingParams(temperature=0.0, max_new_tokens=50))
    reasons = [o.finish_reason for _ in range(30) for o in engine.step() if o.request_id == rid and o.finished]
    assert reasons == ["context"]


def test_stop_strings_end_a_request_in_the_step_that_completes_them(model):
    prompt = _prompts(1, seed=5)[0]
    free_run = _alone(model, [prompt])[0]

    def detokenize(ids):  # a stand-in tokenizer: every token id as "<id>"
        return "".join(f"<{i}>" for i in ids)

    stop = f"{free_run[3]}><{free_run[4]}"  # spans two tokens
    engine = LLMEngine(model, EngineConfig(num_blocks=64))
    rid = engine.add_request(prompt, GREEDY, stop=[stop], detokenize=detokenize)
    outs = [o for _ in range(20) for o in engine.step() if o.request_id == rid]
    first = detokenize(free_run).index(stop)
    want = next(n for n in range(1, len(free_run) + 1) if len(detokenize(free_run[:n])) >= first + len(stop))
    assert outs[-1].finished and outs[-1].finish_reason == "stop" and outs[-1].output == free_run[:want]
    assert engine.metrics()["kv_blocks_used"] == 0
    with pytest.raises(ValueError, match="stop: stop strings need a detokenize"):
        engine.add_request(prompt, GREEDY, stop=["x"])


def test_the_pool_budget_counts_the_runners_weight_copies(model):
    from mini_llm_server.model_runner import fused_weight_bytes

    runner = LLMEngine(model, EngineConfig(num_blocks=8)).runner
    copies = sum(w.numel() * w.element_size() for w in runner.qkv_weight + runner.gate_up_weight)
    assert fused_weight_bytes(model) == copies > 0


def test_kv_fragmentation_is_the_unfilled_tail_of_each_sequence(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=8, enable_prefix_caching=False))
    engine.add_request(list(range(1, 11)), GREEDY)  # 10 prompt tokens
    engine.add_request(list(range(20, 23)), GREEDY)  # 3
    engine.step()  # both prompts computed: 13 tokens in 2 + 1 blocks of 8
    assert engine.metrics()["kv_fragmentation"] == pytest.approx(1 - 13 / 24)


def test_abort_frees_blocks_at_once(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    ids = [engine.add_request(p, GREEDY) for p in _prompts(3, seed=6)]
    engine.step()
    assert engine.metrics()["kv_blocks_used"] > 0
    for i in ids:
        assert engine.abort(i)
    assert not engine.abort(ids[0])  # already finished
    assert engine.metrics()["kv_blocks_used"] == 0 and not engine.has_unfinished()
    engine.blocks.check_invariants([])
    assert engine.runner.block_tables.num_held == 0


def test_deadline_ends_a_request(model):
    now = [0.0]
    engine = LLMEngine(model, EngineConfig(num_blocks=64), clock=lambda: now[0])
    rid = engine.add_request([1, 2, 3], GREEDY, timeout=5.0)
    engine.step()
    now[0] = 6.0
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [(rid, "timeout")]
    assert engine.metrics()["kv_blocks_used"] == 0 and engine.runner.block_tables.num_held == 0


def test_priorities_order_admission(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=64, policy="fifo"))
    low = engine.add_request([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=2), priority=5)
    high = engine.add_request([4, 5, 6], SamplingParams(temperature=0.0, max_new_tokens=2), priority=0)
    order = [o.request_id for _ in range(10) for o in engine.step() if o.finished]
    assert order == [high, low]


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], GREEDY, "at least one token"),
        ([500], GREEDY, r"token ids must be in \[0, 128\)"),
        (list(range(128)), GREEDY, "no room"),
        ([1] * 60, SamplingParams(max_new_tokens=60), "more than the whole pool"),
    ],
)
def test_bad_requests_are_refused_by_name(model, prompt, params, message):
    engine = LLMEngine(model, EngineConfig(num_blocks=16, block_size=4))
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)


def test_overlapped_steps_read_greedy_tokens_one_call_late(model):
    """With overlap_steps a greedy step's tokens stay on the device: the next step's forward reads its input
    token from there, and the host reads the tokens only after launching that step."""
    prompt = _prompts(1, seed=16)[0]
    expected = _alone(model, [prompt])[0]
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    rid = engine.add_request(prompt, GREEDY)
    assert engine.step() == []  # the prefill's token is still in flight
    seq = engine.seqs[rid]
    assert seq.num_pending == 1 and seq.output == [] and engine.has_unfinished()
    got = []
    while engine.has_unfinished():
        outs = engine.step()
        got += [t for o in outs for t in o.new_tokens]
        if not seq.finished:  # the step just launched was fed the token read in this call
            assert seq.num_pending == 1 and engine.in_flight is not None
    assert got == expected
    # the step launched after the last token was one row too many: dropped, its blocks freed
    assert engine.metrics()["steps"] == len(expected) + 1 and engine.metrics()["kv_blocks_used"] == 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_overlap_keeps_greedy_and_sampled_requests_exact(model, backend):
    """Greedy and seeded-sampling requests in one batch, with stop tokens, an abort and preemption: a step that
    samples on the host reads the step in flight first. Every request gets what it gets without overlap
    (greedy ones: what generating it alone gives), and no block is leaked."""
    prompts = _prompts(8, seed=17)
    stops = [_alone(model, [p])[0][2] for p in prompts[:2]]
    params = [SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=(stops[i],)) if i < 2 else
              SamplingParams(temperature=0.9, top_k=30, seed=i, max_new_tokens=10) if i % 2 else GREEDY
              for i in range(len(prompts))]  # fmt: skip
    results = []
    for overlap in (True, False):
        config = EngineConfig(num_blocks=24, block_size=4, max_num_batched_tokens=24, attention_backend=backend,
                              overlap_steps=overlap)  # fmt: skip
        engine = LLMEngine(model, config)
        ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        outs: dict[int, list[int]] = {}
        steps = 0
        while engine.has_unfinished():
            for o in engine.step():
                outs.setdefault(o.request_id, []).extend(o.new_tokens)
            steps += 1
            if steps == 6:
                engine.abort(ids[7])
        results.append([outs.get(i, []) for i in ids])
        assert engine.metrics()["preemptions"] > 0 and engine.metrics()["kv_blocks_used"] == 0
        engine.blocks.check_invariants([])
        assert engine.runner.block_tables.num_held == 0
    overlapped, plain = results
    assert overlapped[:7] == plain[:7]
    for i in (0, 1):
        assert overlapped[i] == _alone(model, [prompts[i]], params[i])[0] and overlapped[i][-1] == stops[i]
    for i in (2, 4, 6):
        assert overlapped[i] == _alone(model, [prompts[i]])[0]


def test_stream_yields_tokens_and_cancelling_aborts(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    streamer = AsyncEngine(engine)
    prompts = _prompts(2, seed=8)

    async def consume(prompt, stop_after=None):
        got = []
        async for out in streamer.stream(prompt, GREEDY):
            got += out.new_tokens
            if stop_after is not None and len(got) == stop_after:
                break  # the client goes away mid-stream
        return got

    async def main():
        return await asyncio.gather(consume(prompts[0]), consume(prompts[1], stop_after=3))

    full, cut = asyncio.run(main())
    expected = _alone(model, prompts)
    assert full == expected[0] and cut == expected[1][:3]
    assert engine.metrics()["kv_blocks_used"] == 0 and not engine.has_unfinished()


def test_prefix_cache_keys_a_block_by_everything_before_it(model):
    # the same 4 tokens at a different position are a different block: their K/V carry other positions
    a, b = [5, 6, 7, 8], [9, 10, 11, 12]
    prompts = [a + b + [1], b + a + [2], a + a + [3]]
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=4))
    got = [engine.generate([p], GREEDY)[0] for p in prompts]
    assert got == _alone(model, prompts)


def test_bench_at_cpu_scale_writes_valid_records(tmp_path):
    from mini_llm_server import report
    from mlsys_bench.project import BenchContext
    from mlsys_bench.record import read_record

    ctx = BenchContext(project="mini-llm-server", device=torch.device("cpu"), scale="cpu", hardware="cpu-test",
                       results_dir=tmp_path, repo=tmp_path, ceilings=None, show_progress=False)  # fmt: skip
    report.bench(ctx)
    rec = read_record(tmp_path / "throughput.json")
    s = report.scale_settings("cpu")
    cfg = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=256)
    assert {r["system"] for r in rec.rows} == {"continuous", "static", "fifo", "hf-generate"}
    assert len(rec.rows) == 4 * len(s["batch_sizes"])
    for r in rec.rows:  # every system generated exactly the requested output lengths
        reqs = report.workload(r["requests"], s, cfg, seed=1 if r["system"] == "fifo" else r["batch"])
        assert r["tokens"] == sum(o for _, o in reqs) and r["tok_per_s"] > 0
        if r["system"] != "hf-generate":
            assert 0 < r["kv_util"] <= 1
    assert read_record(tmp_path / "decode.json").rows[0]["tok_per_s"] > 0


def test_padded_decode_batches_write_only_the_scratch_block(model):
    """The CUDA-graph path's padding, run eagerly on the CPU: decode steps of 1..5 sequences padded to 2, 4
    or 8 rows must leave every sequence's output and cache exactly as the unpadded path does."""
    from mini_llm_server.cuda_graphs import DecodeGraphs, graph_batch_sizes

    assert graph_batch_sizes(8) == [1, 2, 4, 8] and graph_batch_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    prompts = _prompts(5, seed=12)
    engine = LLMEngine(model, EngineConfig(num_blocks=96, block_size=4, attention_backend="triton", max_num_seqs=8))
    engine.runner.decode_graphs = DecodeGraphs(engine.runner, 8)
    assert engine.generate(prompts, GREEDY) == _alone(model, prompts)
    assert engine.runner.decode_graphs.replays > 0


def test_padded_mixed_steps_write_only_the_scratch_block(model):
    """The mixed-step CUDA-graph path, run eagerly on the CPU: steps with prompt chunks (7 tokens a step, so
    prompts are chunked and share steps with decodes) padded to 8 tokens, the tile table's unused programs
    exiting, must give exactly the tokens of generating each request alone."""
    from mini_llm_server.cuda_graphs import MixedGraphs, token_buckets

    assert token_buckets(7) == [7] and token_buckets(2048) == [16, 32, 64, 128, 256, *range(384, 2049, 128)]
    prompts = _prompts(6, seed=15)
    config = EngineConfig(num_blocks=128, block_size=4, attention_backend="triton", max_num_seqs=4,
                          max_num_batched_tokens=7)  # fmt: skip
    engine = LLMEngine(model, config)
    engine.runner.mixed_graphs = MixedGraphs(engine.runner, 8, 4)
    assert engine.generate(prompts, GREEDY) == _alone(model, prompts)
    assert engine.runner.mixed_graphs.replays > 0


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["cuda-graphs", "eager"])
def test_engine_on_gpu_with_the_paged_kernel_matches_one_at_a_time(model, cuda_graphs):
    gpu_model = Transformer(model.cfg).cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    prompts = _prompts(9, seed=11)
    config = EngineConfig(num_blocks=24, block_size=4, max_num_batched_tokens=64, cuda_graphs=cuda_graphs)
    engine = LLMEngine(gpu_model, config)
    assert engine.runner.paged_kernel  # "auto" picks the Triton kernel on CUDA
    assert engine.generate(prompts, GREEDY) == _alone(gpu_model, prompts)
    assert engine.metrics()["preemptions"] > 0 and engine.metrics()["kv_blocks_used"] == 0
    graphs, mixed = engine.runner.decode_graphs, engine.runner.mixed_graphs
    if cuda_graphs:
        assert graphs.graphs and graphs.replays > 0, "no decode step replayed a CUDA graph"
        assert mixed.graphs and mixed.replays > 0, "no step with a prompt replayed a CUDA graph"
    else:
        assert graphs is None and mixed is None


@pytest.mark.gpu
def test_bf16_fast_path_follows_the_fp32_model(monkeypatch):
    """The GPU fast path in bf16 (split-K GEMVs, the TMA GEMM, the SwiGLU epilogues, fused kernels, CUDA graphs,
    overlapped steps) against the fp32 model: the logits of every step, at every sampled position, no further from it
    than the model itself run in bf16 by torch is (twice that, at most). ffn_dim 4224: the gate/up projection is
    wide enough to run unsplit, through its SwiGLU epilogue, and down's K is long enough for the TMA GEMM, which
    the first step's 92 tokens run (65-128 rows, on Hopper)."""
    import copy

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=4224, max_seq_len=256)
    ref = Transformer(cfg).cuda().eval()
    ref.reset_parameters(std=0.1)
    half = copy.deepcopy(ref).bfloat16()
    from mini_llm_server import projections

    tma_calls = []
    for name in ("tma_swiglu", "tma_partials"):
        kernel = getattr(projections.tma_gemm, name)
        monkeypatch.setattr(projections.tma_gemm, name, lambda *a, k=kernel, n=name: tma_calls.append(n) or k(*a))
    engine = LLMEngine(half, EngineConfig(num_blocks=64, block_size=16, max_num_seqs=4))
    assert engine.runner.decode_graphs.graphs
    recorded, execute = [], engine.runner.execute

    def recording(batch):
        logits = execute(batch)
        rows = [(it.seq.seq_id, it.start + it.num_tokens - 1) for it in batch if it.samples]
        recorded.append((rows, logits.float().clone()))
        return logits

    engine.runner.execute = recording
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (5, 17, 40, 30)]
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=24))
    assert engine.runner.decode_graphs.replays > 0
    if torch.cuda.get_device_capability()[0] >= 9:
        assert {"tma_swiglu", "tma_partials"} <= set(tma_calls)
    with torch.no_grad():
        sequences = [torch.tensor([p + o], device="cuda") for p, o in zip(prompts, outputs, strict=True)]
        want = [ref(s)[0] for s in sequences]
        torch_bf16 = max((half(s)[0].float() - w).abs().max().item() for s, w in zip(sequences, want, strict=True))
    worst = max((got - want[sid][pos]).abs().max().item() for rows, logits in recorded
                for (sid, pos), got in zip(rows, logits, strict=True) if pos < want[sid].shape[0])  # fmt: skip
    assert worst <= 2 * torch_bf16, (worst, torch_bf16)
