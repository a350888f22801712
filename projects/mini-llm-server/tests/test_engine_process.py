"""The service with its engine in a child process: same answers, same errors, disconnects still free blocks."""

import asyncio
import functools
import json
import re
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from mini_llm_server import EngineConfig, LLMEngine  # noqa: E402
from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread  # noqa: E402
from mini_llm_server.engine_process import EngineProcess, copy_of  # noqa: E402
from tinyllm.sampling import SamplingParams  # noqa: E402

CONFIG = EngineConfig(num_blocks=256, block_size=8)


@pytest.fixture(scope="module")
def served(parts):
    model, tok = parts
    engine = EngineProcess(functools.partial(copy_of, model, tok), CONFIG)
    server, thread, url = serve_in_thread(create_app(engine, tok, ServiceConfig(model_name="p", max_queue=8)))
    yield {"url": url, "engine": engine, "model": model, "tok": tok}
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()
    assert not engine._proc.is_alive()


def _kv_blocks_used(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"^mini_llm_kv_blocks_used (\S+)$", text, re.M).group(1))


def test_same_greedy_text_as_the_engine_in_process(served):
    tok = served["tok"]
    ref = LLMEngine(served["model"], EngineConfig(num_blocks=64, block_size=8))
    want = tok.decode(ref.generate([tok.encode("hello world")], SamplingParams(temperature=0.0, max_new_tokens=16))[0])
    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="unused")
    r = client.completions.create(model="p", prompt="hello world", max_tokens=16, temperature=0)
    assert r.choices[0].text == want and r.usage.completion_tokens == 16
    chunks = client.completions.create(model="p", prompt="hello world", max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == want
    # n choices: as many requests through the pipe, their tokens merged into one stream
    chunks = client.completions.create(model="p", prompt="hello world", max_tokens=16, temperature=0, stream=True,
                                       n=3)  # fmt: skip
    texts = ["", "", ""]
    for chunk in chunks:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == [want] * 3


def test_engine_errors_come_back_as_400_naming_the_field(served):
    body = {"model": "p", "prompt": list(range(5)) * 210, "max_tokens": 4}  # 1050 tokens: past the context
    r = httpx.post(served["url"] + "/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


def _engine_metrics(served) -> dict:
    return asyncio.run(served["engine"].metrics())  # from this thread's own loop, beside the server's


def test_disconnect_mid_stream_aborts_in_the_child_and_frees_its_blocks(served, hang_up_mid_stream):
    before = _engine_metrics(served)["tokens_generated"]
    hang_up_mid_stream(served["url"], "p", lambda: _kv_blocks_used(served["url"]) == 0)
    m = _engine_metrics(served)
    assert m["kv_blocks_used"] == 0 and m["running"] == 0
    assert m["tokens_generated"] - before < 240  # aborted, not run to its end


def test_an_engine_that_dies_ends_its_requests_instead_of_hanging(parts):
    model, tok = parts
    engine = EngineProcess(functools.partial(copy_of, model, tok), CONFIG)
    server, thread, url = serve_in_thread(create_app(engine, tok, ServiceConfig(model_name="p")))
    try:
        with httpx.stream("POST", url + "/v1/completions", timeout=15,
                          json={"model": "p", "prompt": "hello", "max_tokens": 240, "temperature": 0.8,
                                "stream": True}) as r:  # fmt: skip
            lines = r.iter_lines()
            next(lines)
            engine._proc.kill()
            t0 = time.time()
            events = [line for line in lines if line.startswith("data: ")]
            assert time.time() - t0 < 5  # the stream ends at once, not after the client's read timeout...
        # ...with an error event that says why (and [DONE]), not a text cut short without a word
        error = json.loads(events[-2][6:])["error"]
        assert events[-1] == "data: [DONE]" and error["code"] == 500 and "engine-exited" in error["message"]
        with pytest.raises((RuntimeError, BrokenPipeError)):  # a question to the dead engine fails, never hangs
            asyncio.run(asyncio.wait_for(engine.metrics(), 10))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def test_a_client_whose_pipe_breaks_loses_its_requests_and_their_blocks(parts):
    """An API process that dies mid-stream: the engine sees its pipe end and aborts what it had added."""
    from mini_llm_server.engine_process import EngineClient, start_engine

    model, tok = parts
    proc, (raw, conn) = start_engine(functools.partial(copy_of, model, tok), CONFIG, clients=2)
    other = EngineClient(conn, CONFIG.block_size)
    try:
        assert raw.recv()[0] == "ready"
        raw.send(("add", 0, tok.encode("hello"), SamplingParams(temperature=0.8, max_new_tokens=400), 0, None, ()))
        while (msg := raw.recv())[0] != "outputs" or not msg[1]:  # added, then running
            pass
        assert asyncio.run(other.metrics())["kv_blocks_used"] > 0
        raw.close()  # no goodbye: as when the process holding it is killed
        deadline = time.time() + 30
        while (m := asyncio.run(other.metrics()))["running"] and time.time() < deadline:
            time.sleep(0.02)
        assert m["running"] == 0 and m["kv_blocks_used"] == 0 and m["tokens_generated"] < 400
    finally:
        other.close()
        proc.join(30)
    assert proc.exitcode == 0  # it ended with its last client


def test_a_client_reading_on_its_event_loop_streams_and_learns_of_the_engines_death(parts):
    """An on_loop client (as in each API server process): the loop reads the pipe itself; when the engine
    dies, an open stream ends and a question fails instead of hanging."""
    from mini_llm_server.engine_process import EngineClient, start_engine

    model, tok = parts
    proc, (conn,) = start_engine(functools.partial(copy_of, model, tok), CONFIG)
    client = EngineClient(conn, CONFIG.block_size, on_loop=True)
    prompt = tok.encode("hello")
    want = LLMEngine(model, CONFIG).generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=6))[0]

    async def run():
        client.attach()
        t0 = time.perf_counter()
        outs = [o async for o in client.stream(prompt, SamplingParams(temperature=0.0, max_new_tokens=6))]
        assert outs[-1].finished and outs[-1].output == want
        # when the engine process read each token: one clock for every process on the host
        assert all(t0 < o.read_at < time.perf_counter() for o in outs), outs
        assert [o.read_at for o in outs] == sorted(o.read_at for o in outs)
        m = await asyncio.wait_for(client.metrics(), 10)
        assert m["kv_blocks_used"] == 0
        assert m["gc_frozen_objects"] > 10_000  # the engine process froze its startup heap (torch, the model)
        stream = client.stream(prompt, SamplingParams(temperature=0.8, max_new_tokens=400))
        await anext(stream)
        proc.kill()
        outs = [o async for o in stream]  # ends at once, not after 400 tokens that will never come
        assert outs[-1].finished and outs[-1].finish_reason == "engine-exited"
        with pytest.raises((RuntimeError, BrokenPipeError, ConnectionResetError)):
            await asyncio.wait_for(client.metrics(), 10)

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        client.close()
        proc.join(10)
