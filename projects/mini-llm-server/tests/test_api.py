"""The service on a real uvicorn server on loopback, driven by the official openai client and by httpx."""

import asyncio
import time

import pytest

# the service's own dependencies; a machine without them (a bare GPU box) skips this module
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import torch  # noqa: E402
from mini_llm_server import EngineConfig, LLMEngine  # noqa: E402
from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread  # noqa: E402
from mini_llm_server.async_engine import AsyncEngine  # noqa: E402
from mini_llm_server.chat_template import load_chat_template, render_chat  # noqa: E402
from tinyllm.sampling import SamplingParams  # noqa: E402


def test_openai_client_completions_plain_and_streamed(stack, reference_text):
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused")
    expected = reference_text(stack["tok"].encode("hello world"), 12)
    r = client.completions.create(model="test", prompt="hello world", max_tokens=12, temperature=0)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(stack["tok"].encode("hello world")) and r.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="test", prompt="hello world", max_tokens=12, temperature=0,
                                            stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    # stream_options.include_usage: one more chunk, with no choices, carries the token counts
    chunks = list(client.completions.create(model="test", prompt="hello world", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks[:-1]) == expected and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert [m.id for m in client.models.list().data] == ["test"]


def test_openai_client_chat_plain_and_streamed(stack, reference_text):
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "say hello"}]
    expected = reference_text(stack["tok"].encode(render_chat(messages, None)), 10)
    r = client.chat.completions.create(model="test", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="test", messages=messages, max_tokens=10, temperature=0,
                                            stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "test", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": "test", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "test"}, 400, "prompt"),
        ({"model": "test", "prompt": "x " * 2000}, 400, "prompt"),
        ({"model": "test", "prompt": [99999]}, 400, "prompt"),
        ({"model": "test", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ],
)
def test_bad_requests_name_the_field(stack, body, status, field):
    r = httpx.post(stack["url"] + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_malformed_json_is_a_400(stack):
    r = httpx.post(stack["url"] + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_stop_string_cuts_the_text(stack):
    # the text as the service streams it: where the seeded model's bytes are not valid UTF-8, a whole decode
    # may render them with other replacement characters than the piece-by-piece one streams give
    body = {"model": "test", "prompt": "hello", "max_tokens": 16, "temperature": 0}
    full = httpx.post(stack["url"] + "/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[4:6]
    r = httpx.post(stack["url"] + "/v1/completions", json={**body, "stop": stop})
    choice = r.json()["choices"][0]
    assert choice["text"] == full[: full.find(stop)] and choice["finish_reason"] == "stop"


def test_disconnect_mid_stream_frees_blocks(stack):
    before = stack["engine"].tokens_generated
    with httpx.stream("POST", stack["url"] + "/v1/completions",
                      json={"model": "test", "prompt": "hello", "max_tokens": 1000, "temperature": 0.8,
                            "stream": True}) as r:  # fmt: skip
        for i, _ in enumerate(r.iter_lines()):
            if i == 3:
                break  # closing the response drops the connection
    deadline = time.time() + 60
    while stack["engine"].has_unfinished() and time.time() < deadline:
        time.sleep(0.02)
    assert not stack["engine"].has_unfinished() and stack["engine"].metrics()["kv_blocks_used"] == 0
    assert stack["engine"].tokens_generated - before < 500  # aborted early, not run to its 1000 tokens


def test_overload_gets_429_and_every_accepted_request_completes(stack, reference_text):
    async def main():
        async with httpx.AsyncClient(base_url=stack["url"], timeout=60) as client:
            body = {"model": "test", "prompt": "the quick brown fox", "max_tokens": 24, "temperature": 0}
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(24)))

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    expected = reference_text(stack["tok"].encode("the quick brown fox"), 24)
    assert all(r.json()["choices"][0]["text"] == expected for r in responses if r.status_code == 200)
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
    metrics = httpx.get(stack["url"] + "/metrics").text
    assert "mini_llm_rejected_requests_total" in metrics and "mini_llm_kv_blocks_used 0.0" in metrics
    assert "mini_llm_kv_fragmentation 0.0" in metrics


def test_health(stack):
    assert httpx.get(stack["url"] + "/health").json() == {"status": "ok"}


def test_a_full_kv_cache_gets_429_and_shutdown_drains_open_streams(parts):
    model, tok = parts
    engine = LLMEngine(model, EngineConfig(num_blocks=12, block_size=8, max_num_seqs=64))  # 96 KV slots
    server, thread, url = serve_in_thread(
        create_app(AsyncEngine(engine), tok, ServiceConfig(model_name="t", max_queue=100))
    )
    body = {"model": "t", "prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 40, "temperature": 0}

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(12)))

    responses = asyncio.run(burst())
    rejected = [r for r in responses if r.status_code == 429]
    assert rejected and all("KV cache" in r.json()["error"]["message"] for r in rejected)
    assert all(r.status_code in (200, 429) for r in responses)

    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        lines = r.iter_lines()
        next(lines)
        server.should_exit = True  # SIGTERM's effect: stop accepting, finish what is open
        events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"finish_reason": "length"' in events[-2]
    thread.join(timeout=30)
    assert not thread.is_alive() and not engine.has_unfinished()


@pytest.mark.parametrize("mode", [{"concurrency": 3}, {"rate": 40.0}], ids=["closed", "open"])
def test_load_generator_reports_latencies_and_writes_a_record(stack, tmp_path, mode):
    from mini_llm_server.load import LoadConfig, run, summarize
    from mini_llm_server.load_record import write_load_record
    from mlsys_bench.record import read_record

    cfg = LoadConfig(url=stack["url"], model="test", num_requests=6, output_tokens=(4, 12), **mode)
    results, wall = asyncio.run(run(cfg))
    summary = summarize(results, wall)
    assert summary["requests"] == 6 and summary["ok"] + summary["rejected_429"] == 6 and summary["errors"] == 0
    assert summary["ok"] > 0 and summary["ttft_p50_ms"] > 0
    assert summary["itl_p50_ms"] <= summary["itl_p99_ms"] <= summary["itl_max_ms"]
    assert summary["e2e_p95_ms"] >= summary["ttft_p95_ms"] and summary["tokens_per_s"] > 0
    # tokens come from each stream's usage chunk: at least one per chunk that carried text
    assert all(4 <= r.tokens <= 12 and r.tokens >= len(r.itl) + 1 for r in results if r.status == 200)
    assert 0 < summary["tpot_p50_ms"] <= summary["tpot_p99_ms"] < summary["e2e_p99_ms"]
    rec = read_record(write_load_record(cfg, summary, "cpu-test", root=tmp_path))
    assert rec.rows[0]["ok"] == summary["ok"] and rec.benchmark.startswith("load-")


def test_a_split_load_runs_in_client_processes(stack):
    from mini_llm_server.load import LoadConfig, client_pool, run_split, summarize

    cfg = LoadConfig(url=stack["url"], model="test", num_requests=6, concurrency=2, output_tokens=(4, 8))
    with client_pool(2) as pool:
        summary = summarize(*run_split(cfg, pool, 2))
    assert summary["requests"] == 6 and summary["errors"] == 0, summary
    assert summary["ok"] + summary["rejected_429"] == 6 and summary["ok"] > 0
    assert 0 < summary["client_cpu_share"] < 1.5  # the busiest client process's CPU seconds over its wall time


def test_load_command_needs_a_client_process():
    from mini_llm_server.cli import main

    with pytest.raises(SystemExit, match="--processes must be >= 1"):
        main(["load", "--concurrency", "1", "--processes", "0"])


def test_load_config_needs_exactly_one_mode():
    from mini_llm_server.load import LoadConfig

    with pytest.raises(ValueError, match="exactly one"):
        LoadConfig(url="http://x", model="m", concurrency=None)
    with pytest.raises(ValueError, match="exactly one"):
        LoadConfig(url="http://x", model="m", concurrency=2, rate=1.0)


TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}"
            "{% endif %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")  # fmt: skip


def test_the_checkpoints_chat_template_is_used_where_present(parts, tmp_path):
    import json

    model, tok = parts
    assert load_chat_template(tmp_path) is None  # no tokenizer_config.json: the plain format
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "bos_token": "<s>",
                                                                "eos_token": {"content": "</s>"}}))  # fmt: skip
    template = load_chat_template(tmp_path)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render_chat(messages, template) == "<s><user>hi</s><assistant>yo</s><assistant>"
    engine = LLMEngine(model, EngineConfig(num_blocks=64, block_size=8))
    app = create_app(AsyncEngine(engine), tok, ServiceConfig(model_name="t", chat_template=template))
    server, thread, url = serve_in_thread(app)
    try:
        body = {"model": "t", "messages": messages, "max_tokens": 6, "temperature": 0}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        ref = LLMEngine(model, EngineConfig(num_blocks=64, block_size=8))
        ids = tok.encode(render_chat(messages, template))
        want = tok.decode(ref.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=6))[0])
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want
        assert r.json()["usage"]["prompt_tokens"] == len(ids)
        body["messages"] = [{"role": "system", "content": "be brief"}]  # the template raises: a 400 naming it
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def test_short_overload_soak_loses_nothing_and_leaks_no_block(parts):
    """The soak of `mini-llm-server soak`, for seconds instead of minutes: overload (429s), hang-ups
    mid-stream, and every other request with its exact greedy text; the engine drains with no block held."""
    from mini_llm_server.soak import SoakConfig, run_soak

    model, tok = parts
    cfg = SoakConfig(duration_s=4, rate=60, max_queue=2, disconnect_fraction=0.3, num_prompts=6, output_tokens=(4, 24))
    s = run_soak(model, tok, cfg, EngineConfig(num_blocks=256, block_size=8, max_num_seqs=4))
    assert s["lost"] == 0 and s["corrupted"] == 0, s
    assert s["ok"] > 0 and s["rejected"] > 0 and s["disconnected"] > 0, s
    assert s["ok"] + s["rejected"] + s["disconnected"] == s["sent"]
    assert s["running_at_end"] == s["waiting_at_end"] == s["kv_blocks_used_at_end"] == 0, s


def test_a_load_splits_into_parts_that_add_up():
    from mini_llm_server.load import LoadConfig, bodies, split

    closed = split(LoadConfig(url="u", model="m", num_requests=10, concurrency=5), 3)
    assert [(p.num_requests, p.concurrency) for p in closed] == [(4, 2), (3, 2), (3, 1)]
    assert len({bodies(p)[0]["prompt"] for p in closed}) == 3  # no part repeats another's prompts
    assert len(split(LoadConfig(url="u", model="m", num_requests=10, concurrency=2), 4)) == 2  # a client each
    opened = split(LoadConfig(url="u", model="m", num_requests=9, rate=6.0), 2)
    assert [(p.num_requests, p.rate, p.concurrency) for p in opened] == [(5, 3.0, None), (4, 3.0, None)]
    assert split(LoadConfig(url="u", model="m", num_requests=9, rate=6.0), 1)[0].seed == 0


def test_serving_bench_at_toy_scale_measures_every_policy(parts, tmp_path):
    from mini_llm_server.serving import (
        POLICIES,
        PROCESS_POLICY,
        SCALED_POLICY,
        ServingConfig,
        measure,
        write_serving_record,
    )
    from mlsys_bench.record import read_record

    model, tok = parts
    cfg = ServingConfig(concurrencies=(1, 3), requests_per_client=2, min_requests=3, prompt_words=(2, 6),
                        output_tokens=(3, 6), max_num_seqs=4, overload_seconds=1.0, max_num_batched_tokens=16,
                        step_token_sweep=(4,), sweep_concurrency=3, top_step_tokens=(8,), client_processes=2,
                        api_servers=2, api_server_sweep=(3,))  # fmt: skip
    rows = measure(model, tok, cfg)
    expected = [(p, c, 16, 2 if p == SCALED_POLICY else 0) for p in POLICIES for c in (1, 3)]
    expected += [(PROCESS_POLICY, 3, 16, 0), (SCALED_POLICY, 3, 4, 2), (SCALED_POLICY, 3, 8, 2)]
    expected += [(SCALED_POLICY, 3, 16, 3)]  # the API process sweep
    assert [(r["policy"], r["concurrency"], r["step_tokens"], r["api_servers"]) for r in rows[:-1]] == expected
    for r in rows[:-1]:  # closed loop under the queue bound: everything answered, in order of percentiles
        assert r["ok"] == r["requests"] and r["errors"] == 0 and r["rejected_429"] == 0, r
        assert r["ttft_p50_ms"] <= r["ttft_p99_ms"] and r["kv_MB_per_request"] > 0
        assert r["mixed_step_ms"] > 0 and 0 < r["mixed_step_share"] <= 1 and r["decode_step_ms"] >= 0
        assert r["server_cpu_share"] > 0, r  # the HTTP side's CPU, wherever it runs
        assert r["gpu_busy_share"] is None and r["eager_steps"] is None  # the GPU's clock: on a GPU only
        assert 0 < r["engine_host_ms"] <= r["engine_step_ms"], r
        in_process = r["policy"] in ("continuous", "static", "fifo")
        assert (r["loop_commands_ms"] is None) == in_process and (r["loop_fan_out_ms"] is None) == in_process, r
        if not in_process:  # the engine process's loop: commands read and tokens handed out while it had work
            assert r["loop_commands_ms"] > 0 and r["loop_fan_out_ms"] > 0, r
        # the streams' gaps inside the API process(es), wherever it runs, and each token's delay there since the
        # engine read it (in the engine's thread or across the pipe)
        for hop in ("taken_itl", "written_itl", "taken_delay", "written_delay"):
            assert 0 < r[f"{hop}_p50_ms"] <= r[f"{hop}_p99_ms"], r
    assert rows[-1]["load"].startswith("open") and rows[-1]["errors"] == 0
    path = write_serving_record(rows, cfg, "toy", torch.device("cpu"), root=tmp_path)
    assert len(read_record(path).rows) == len(rows)


def test_closing_a_stopped_servers_engine_frees_its_kv_pool(parts):
    # FastAPI keeps endpoint functions (and what they close over) for the life of the process: without
    # close() a benchmark serving one engine after another would run out of device memory
    import gc
    import weakref

    model, tok = parts
    engine = LLMEngine(model, EngineConfig(num_blocks=16, block_size=8))
    async_engine = AsyncEngine(engine)
    server, thread, url = serve_in_thread(create_app(async_engine, tok, ServiceConfig(model_name="t")))
    body = {"model": "t", "prompt": "the quick brown fox", "max_tokens": 4, "temperature": 0}
    assert httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200
    server.should_exit = True
    thread.join(timeout=30)
    pool = weakref.ref(engine.runner.k_cache)
    async_engine.close()
    del engine, async_engine, server, thread
    gc.collect()
    assert pool() is None


def test_a_stream_left_open_past_close_ends_quietly(parts):
    # a server stopped with a stream still open: closing the generator afterwards must not try to abort
    # through the shut-down worker
    model, _ = parts
    async_engine = AsyncEngine(LLMEngine(model, EngineConfig(num_blocks=16, block_size=8)))

    async def go():
        gen = async_engine.stream([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=50))
        await anext(gen)
        async_engine.close()
        await gen.aclose()

    asyncio.run(go())
    assert async_engine.engine.runner is None


def test_metrics_count_every_streamed_token(parts):
    """The per-token series (a lock-free collector) against what three streamed requests produced."""
    from mini_llm_server.engine import ITL_BINS
    from mini_llm_server.metrics import TAKEN, TAKEN_DELAY, WRITTEN, WRITTEN_DELAY, StreamStats
    from prometheus_client.parser import text_string_to_metric_families

    model, tok = parts
    stats = StreamStats()
    server, thread, url = serve_in_thread(
        create_app(
            AsyncEngine(LLMEngine(model, EngineConfig(num_blocks=64, block_size=8))),
            tok,
            ServiceConfig(model_name="test"),
            stats,
        )  # fmt: skip
    )
    try:
        body = {"model": "test", "prompt": "hello world", "max_tokens": 12, "temperature": 0, "stream": True}
        for _ in range(3):
            with httpx.stream("POST", url + "/v1/completions", json=body) as r:
                assert r.status_code == 200 and r.read().endswith(b"data: [DONE]\n\n")
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    finally:
        server.should_exit = True
        thread.join(timeout=5)
    assert families["mini_llm_generated_tokens"].samples[0].value == 36
    for name, count in (("mini_llm_time_to_first_token_seconds", 3), ("mini_llm_inter_token_latency_seconds", 33)):
        samples = {(s.name, s.labels.get("le")): s.value for s in families[name].samples}
        assert samples[(name + "_count", None)] == samples[(name + "_bucket", "+Inf")] == count
        buckets = [v for (n, le), v in samples.items() if n.endswith("_bucket")]
        assert buckets == sorted(buckets) and samples[(name + "_sum", None)] > 0
    # the gaps inside the API process: one per token after each stream's first as it is taken; as written, one
    # per event after the first (a token whose text is not yet whole is written with the next)
    taken, written = (sum(stats.totals(at, at + ITL_BINS)) for at in (TAKEN, WRITTEN))
    assert taken == 33 and 0 < written <= 33
    # each token's delay since the engine read it: every token as taken, the newest of each event as written;
    # none in the last bin (50 ms or more here would be a stamp from another clock)
    delays = {at: stats.totals(at, at + ITL_BINS) for at in (TAKEN_DELAY, WRITTEN_DELAY)}
    assert sum(delays[TAKEN_DELAY]) == 36 and sum(delays[WRITTEN_DELAY]) == written + 3
    assert delays[TAKEN_DELAY][-1] == delays[WRITTEN_DELAY][-1] == 0
    for at in (TAKEN, WRITTEN, TAKEN_DELAY, WRITTEN_DELAY):
        assert 0 < stats.percentile_ms(at, 50) <= stats.percentile_ms(at, 99)
