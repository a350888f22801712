"""Several API server processes in front of one engine process: the same answers from whichever process
takes a connection, /metrics for the whole service from any of them, disconnects and dead processes free
their blocks, and stop drains open streams."""

import asyncio
import functools
import json
import os
import signal
import threading

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from mini_llm_server import EngineConfig, LLMEngine  # noqa: E402
from mini_llm_server.api import ServiceConfig  # noqa: E402
from mini_llm_server.api_servers import ApiServers, process_cpu_seconds  # noqa: E402
from mini_llm_server.engine_process import copy_of  # noqa: E402
from mini_llm_server.metrics import ITL, ROW, TAKEN, TTFT, WRITTEN, StreamStats, shared_cells  # noqa: E402
from tinyllm.sampling import SamplingParams  # noqa: E402

CONFIG = EngineConfig(num_blocks=256, block_size=8)


def _start(parts, count=2) -> ApiServers:
    model, tok = parts
    return ApiServers(functools.partial(copy_of, model, tok), tok, CONFIG, ServiceConfig(model_name="p"), count)


@pytest.fixture(scope="module")
def servers(parts):
    servers = _start(parts)
    yield servers
    servers.stop()
    assert not any(p.is_alive() for p in (*servers.api_procs, servers.engine_proc))


def _greedy(parts, prompt: str, n: int) -> str:
    model, tok = parts
    ref = LLMEngine(model, EngineConfig(num_blocks=64, block_size=8))
    return tok.decode(ref.generate([tok.encode(prompt)], SamplingParams(temperature=0.0, max_new_tokens=n))[0])


def _generated_tokens(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    return families["mini_llm_generated_tokens"].samples[0].value


def test_every_connection_gets_the_engines_greedy_text_and_metrics_count_them_all(servers, parts):
    prompts = [f"hello world {i}" for i in range(12)]
    want = {p: _greedy(parts, p, 10) for p in prompts}
    client = openai.OpenAI(base_url=servers.url + "/v1", api_key="unused")
    r = client.completions.create(model="p", prompt=prompts[0], max_tokens=10, temperature=0)
    assert r.choices[0].text == want[prompts[0]]
    before = _generated_tokens(servers.url)

    async def one(prompt: str) -> tuple[str, int]:
        body = {"model": "p", "prompt": prompt, "max_tokens": 10, "temperature": 0, "stream": True}
        async with httpx.AsyncClient(base_url=servers.url, timeout=60) as c, c.stream("POST", "/v1/completions",
                                                                                    json=body) as s:  # fmt: skip
            text = [json.loads(line[6:])["choices"][0]["text"] async for line in s.aiter_lines()
                    if line.startswith("data: {")]  # fmt: skip
        return "".join(text), s.status_code

    async def burst():
        return await asyncio.gather(*(one(p) for p in prompts))

    got = asyncio.run(burst())
    assert [g for g, _ in got] == [want[p] for p in prompts] and {s for _, s in got} == {200}
    for _ in range(4):  # whichever process takes the scrape answers for all of them
        assert _generated_tokens(servers.url) - before == 10 * len(prompts)


def test_a_disconnect_in_an_api_process_frees_its_blocks(servers, hang_up_mid_stream):
    before = asyncio.run(servers.engine.metrics())["tokens_generated"]
    hang_up_mid_stream(servers.url, "p", lambda: asyncio.run(servers.engine.metrics())["kv_blocks_used"] == 0)
    m = asyncio.run(servers.engine.metrics())
    assert m["kv_blocks_used"] == 0 and m["running"] == 0
    assert m["tokens_generated"] - before < 240
    assert servers.cpu_seconds() > 0 and process_cpu_seconds(os.getpid()) > 0


def test_a_dead_api_process_leaves_the_rest_serving_and_stop_drains_open_streams(parts):
    servers = _start(parts)
    try:
        os.kill(servers.api_procs[0].pid, signal.SIGKILL)
        servers.api_procs[0].join(10)
        want = _greedy(parts, "hello model", 200)
        chunks, first = [], threading.Event()

        def stream():
            with httpx.stream("POST", servers.url + "/v1/completions", timeout=120,
                              json={"model": "p", "prompt": "hello model", "max_tokens": 200, "temperature": 0,
                                    "stream": True}) as r:  # fmt: skip
                for line in r.iter_lines():
                    chunks.append(line)
                    first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        servers.stop()  # while the stream runs: it must finish, not be cut
        reader.join(30)
        text = "".join(json.loads(c[6:])["choices"][0]["text"] for c in chunks if c.startswith("data: {"))
        assert text == want and [c for c in chunks if c][-1] == "data: [DONE]"
        assert not any(p.is_alive() for p in (*servers.api_procs, servers.engine_proc))
        with pytest.raises(httpx.ConnectError):
            httpx.get(servers.url + "/health")
    finally:
        servers.stop()


def test_stream_stats_rows_add_up_across_processes():
    cells = shared_cells(3)
    rows = [StreamStats(cells, i) for i in range(3)]
    for i, stats in enumerate(rows):
        stats.add_tokens(i + 1)
        stats.observe(TTFT, 0.02)
        stats.observe(ITL, 0.003 * (i + 1))
    rows[2].reject()
    assert len(cells) == 3 * ROW and rows[1].totals()[:2] == [6, 1]
    fams = {f.name: f for f in rows[0].collect()}
    itl = {(s.name, s.labels.get("le")): s.value for s in fams[ITL.name].samples}
    assert itl[(ITL.name + "_bucket", "0.005")] == 1 and itl[(ITL.name + "_count", None)] == 3
    assert itl[(ITL.name + "_sum", None)] == pytest.approx(0.018)
    # the fine gaps inside the API processes: 10-us bins, read at a bin's upper edge, summed across rows
    for i, stats in enumerate(rows):
        for _ in range(30):
            stats.count(TAKEN, 0.001 + 0.0001 * i)  # 1.0, 1.1, 1.2 ms
    rows[2].count(WRITTEN, 0.0123)
    assert [rows[0].percentile_ms(TAKEN, q) for q in (30, 50, 99)] == pytest.approx([1.01, 1.11, 1.21])
    assert rows[1].percentile_ms(WRITTEN, 50) == pytest.approx(12.31)
    # over a window: only the gaps counted since a snapshot (a run on a service already serving)
    before = rows[0].snapshot()
    for _ in range(10):
        rows[1].count(TAKEN, 0.005)
    assert rows[0].percentile_ms(TAKEN, 50, since=before) == pytest.approx(5.0, abs=0.011)  # a bin's edge
    assert rows[0].percentile_ms(TAKEN, 50) == pytest.approx(1.11)  # 90 of the 100 gaps are the earlier ones
    assert [f.name for f in rows[0].collect()] == [  # not exported
        "mini_llm_generated_tokens", "mini_llm_rejected_requests", TTFT.name, ITL.name]  # fmt: skip


def test_api_servers_need_one_process_at_least(parts):
    with pytest.raises(ValueError, match="count"):
        _start(parts, count=0)


def test_serve_refuses_a_count_of_api_servers_below_one():
    from mini_llm_server.cli import main

    with pytest.raises(SystemExit, match="--api-servers must be >= 1"):
        main(["serve", "--api-servers", "0"])
