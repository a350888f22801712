"""The OpenAI surface past the basics, on a real uvicorn server: every field sent is honoured or refused by
name (n choices, batches of prompts, the newer chat fields and content parts; penalties, log probabilities,
tools and unknown fields refused), admission counting every choice, a stop string never given out in part,
a deadline that passes mid-stream ending it with an error event, a client that gives up before its answer
having its request aborted, and the server's own time to first token counting from the request."""

import asyncio
import json
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from mini_llm_server import EngineConfig, LLMEngine  # noqa: E402
from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread  # noqa: E402
from mini_llm_server.async_engine import AsyncEngine  # noqa: E402
from mini_llm_server.chat_template import render_chat  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

USER = [{"role": "user", "content": "hi"}]


def _refusal(url: str, path: str, body: dict) -> dict:
    r = httpx.post(url + path, json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize(
    "extra, field, words",
    [
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"n": 5}, "n", "more than this server queues"),  # the stack's queue holds 4
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"frequency_penalty": -1}, "frequency_penalty", "not supported"),
        ({"logit_bias": {"5": 10}}, "logit_bias", "not supported"),
        ({"logprobs": 0}, "logprobs", "not supported"),
        ({"echo": True}, "echo", "not supported"),
        ({"suffix": "}"}, "suffix", "not supported"),
        ({"best_of": 3}, "best_of", "only equal to n"),
        ({"frobnicate": 1}, "frobnicate", "unrecognized request argument"),
        ({"prompt": 5}, "prompt", "a prompt is a string or a list of token ids"),
        ({"prompt": []}, "prompt", "a prompt is a string or a list of token ids"),
        ({"prompt": ["a", [1, "b"]]}, "prompt", "a batch a non-empty list of either"),
        ({"prompt": ["a", "b", "c"], "n": 2}, "prompt", "6 choices (3 prompts x n=2)"),
        ({"stop": 3}, "stop", "valid list"),
        ({"stop": ["a", 3]}, "stop.1", "valid string"),
        ({"stream_options": {"include_usage": True, "x": 1}, "stream": True}, "stream_options.x", "unrecognized"),
    ],
)
def test_completions_refuse_by_name_what_they_would_otherwise_ignore(stack, extra, field, words):
    error = _refusal(stack["url"], "/v1/completions", {"model": "test", "prompt": "x", **extra})
    assert error["param"] == field and error["message"].startswith(field) and words in error["message"], error


@pytest.mark.parametrize(
    "extra, field, words",
    [
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"top_logprobs": 3}, "top_logprobs", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({"tool_choice": "required"}, "tool_choice", "not supported"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "contradicts max_tokens 5"),
        ({"prompt": "x"}, "prompt", "unrecognized request argument"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "Input should be"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
         "messages.0.content", "part 0 is 'image_url'"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name", "unrecognized"),
    ],
)  # fmt: skip
def test_chat_refuses_by_name_what_it_would_otherwise_ignore(stack, extra, field, words):
    error = _refusal(stack["url"], "/v1/chat/completions", {"model": "test", "messages": USER, **extra})
    assert error["param"] == field and error["message"].startswith(field) and words in error["message"], error


def test_the_values_that_ask_for_nothing_are_taken(stack):
    body = {"model": "test", "prompt": "x", "max_tokens": 2, "n": 2, "best_of": 2, "echo": False, "suffix": None,
            "logprobs": None, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
            "user": "u"}  # fmt: skip
    r = httpx.post(stack["url"] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    body = {"model": "test", "messages": USER, "max_tokens": 2, "logprobs": False, "top_logprobs": 0, "tools": [],
            "tool_choice": "none", "response_format": {"type": "text"}, "user": "u"}  # fmt: skip
    assert httpx.post(stack["url"] + "/v1/chat/completions", json=body, timeout=30).status_code == 200


def test_a_body_that_is_not_a_json_object_gets_a_400_that_says_so(stack):
    url = stack["url"] + "/v1/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid JSON body: ")
    assert r.json()["error"]["param"] is None
    r = httpx.post(url, json=["x"])
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("request body: "), r.text


def test_n_choices_are_requests_of_their_own(stack, reference_text):
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused")
    ids = stack["tok"].encode("hello world")
    r = client.completions.create(model="test", prompt="hello world", max_tokens=8, temperature=0, n=3)
    greedy = reference_text(ids, 8)
    assert [c.index for c in r.choices] == [0, 1, 2] and all(c.text == greedy for c in r.choices)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 24
    # sampled with a seed, choice i is the lone request with seed + i; streamed, the choices' chunks interleave
    want = [reference_text(ids, 8, temperature=1.0, seed=11 + i) for i in range(2)]
    assert want[0] != want[1]
    chunks = list(client.completions.create(model="test", prompt="hello world", max_tokens=8, temperature=1.0,
                                            seed=11, n=2, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    texts, reasons = ["", ""], [None, None]
    for chunk in chunks[:-1]:
        (c,) = chunk.choices
        texts[c.index] += c.text
        reasons[c.index] = c.finish_reason or reasons[c.index]
    assert texts == want and reasons == ["length", "length"] and chunks[-1].usage.completion_tokens == 16
    messages = [{"role": "user", "content": "say hello"}]
    r = client.chat.completions.create(model="test", messages=messages, max_tokens=6, temperature=0, n=2)
    expected = reference_text(stack["tok"].encode(render_chat(messages, None)), 6)
    assert [c.message.content for c in r.choices] == [expected, expected]


def test_a_batch_of_prompts_gets_n_choices_each(stack, reference_text):
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused")
    prompts = [stack["tok"].encode("hello world"), stack["tok"].encode("the quick")]
    want = [reference_text(ids, 6) for ids in prompts]
    for prompt in (["hello world", "the quick"], prompts):  # as text, and as token ids
        r = client.completions.create(model="test", prompt=prompt, max_tokens=6, temperature=0, n=2)
        assert [(c.index, c.text) for c in r.choices] == [(0, want[0]), (1, want[0]), (2, want[1]), (3, want[1])]
        assert r.usage.prompt_tokens == sum(map(len, prompts)) and r.usage.completion_tokens == 24
    texts = [""] * 2
    for chunk in client.completions.create(model="test", prompt=["hello world", "the quick"], max_tokens=6,
                                           temperature=0, stream=True):  # fmt: skip
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == want


def test_a_stop_string_completed_over_two_tokens_is_never_given_out_in_part(stack):
    """The text before a stop string whose first character ends one token and whose second begins the next:
    streamed or not, the client gets none of it (the first character is held back until ruled out)."""
    from mini_llm_server.detokenizer import IncrementalDetokenizer
    from tinyllm.sampling import SamplingParams

    tok, prompt = stack["tok"], "the quick brown fox"
    ref = LLMEngine(stack["model"], EngineConfig(num_blocks=64, block_size=8))
    ids = ref.generate([tok.encode(prompt)], SamplingParams(temperature=0.0, max_new_tokens=40))[0]
    text_stream = IncrementalDetokenizer(tok)
    pieces = [text_stream.new_text(ids[: k + 1]) for k in range(len(ids))]
    full, stops, at = "".join(pieces), [], 0
    for a, b in zip(pieces, pieces[1:], strict=False):
        at += len(a)
        if a and b and a[-1].isalnum() and b[0].isalnum() and full.find(a[-1] + b[0]) == at - 1:
            stops.append((a[-1] + b[0], full[: at - 1]))
    assert stops  # the seeded model's greedy text has such a boundary
    body = {"model": "test", "prompt": prompt, "max_tokens": 40, "temperature": 0}
    for stop, want in stops:
        choice = httpx.post(stack["url"] + "/v1/completions", json={**body, "stop": stop}).json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (want, "stop"), stop
        with httpx.stream("POST", stack["url"] + "/v1/completions", json={**body, "stop": [stop], "stream": True}) as r:
            chunks = [json.loads(line[6:])["choices"][0] for line in r.iter_lines() if line.startswith("data: {")]
        assert "".join(c["text"] for c in chunks) == want and chunks[-1]["finish_reason"] == "stop", stop


def test_a_burst_of_requests_for_several_choices_each_gets_429s_past_the_queue_bound(stack, reference_text):
    async def burst():
        async with httpx.AsyncClient(base_url=stack["url"], timeout=60) as client:
            body = {"model": "test", "prompt": "the quick brown fox", "max_tokens": 24, "temperature": 0, "n": 2}
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(24)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    expected = reference_text(stack["tok"].encode("the quick brown fox"), 24)
    assert all([c["text"] for c in r.json()["choices"]] == [expected] * 2 for r in responses if r.status_code == 200)


def test_a_client_that_hangs_up_on_n_streams_aborts_them_all(stack):
    engine, before = stack["engine"], stack["engine"].tokens_generated
    body = {"model": "test", "prompt": "hello", "max_tokens": 500, "temperature": 0.8, "n": 3, "stream": True}
    with httpx.stream("POST", stack["url"] + "/v1/completions", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 6:
                break  # closing the response drops the connection
    assert _drained(engine, 60.0) and engine.tokens_generated - before < 3 * 500 // 2  # all three aborted early


def test_chat_takes_content_parts_the_developer_role_and_max_completion_tokens(stack, reference_text):
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused")
    parts = [{"type": "text", "text": "say"}, {"type": "text", "text": "hello"}]
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]
    as_plain = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say\nhello"}]
    ids = stack["tok"].encode(render_chat(as_plain, None))
    r = client.chat.completions.create(model="test", messages=messages, max_completion_tokens=3, temperature=0)
    assert r.choices[0].message.content == reference_text(ids, 3) and r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"  # not the default 16


STEP_S = 0.03


class SlowEngine(LLMEngine):
    """Every step STEP_S longer: no first token sooner than that, and long streams that take seconds."""

    def step(self):
        time.sleep(STEP_S)
        return super().step()


@pytest.fixture(scope="module")
def slow(parts):
    model, tok = parts
    engine = SlowEngine(model, EngineConfig(num_blocks=64, block_size=8, max_num_seqs=1))
    server, thread, url = serve_in_thread(create_app(AsyncEngine(engine), tok, ServiceConfig(model_name="slow")))
    yield {"url": url, "engine": engine}
    server.should_exit = True
    thread.join(timeout=5)


def test_a_deadline_that_passes_mid_stream_ends_it_with_an_error_event(slow):
    client = openai.OpenAI(base_url=slow["url"] + "/v1", api_key="unused")
    # `timeout` is the service's extension; the client's own keyword of that name is its HTTP timeout
    stream = client.completions.create(model="slow", prompt="hello", max_tokens=200, temperature=0, stream=True,
                                       extra_body={"timeout": 0.5})  # fmt: skip
    texts = []
    with pytest.raises(openai.APIError, match="ran past its deadline of 0.5 s"):
        for chunk in stream:
            texts.append(chunk.choices[0].text)
    assert texts  # it had begun: tokens came before the error
    body = {"model": "slow", "prompt": "hello", "max_tokens": 200, "timeout": 0.5}
    r = httpx.post(slow["url"] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 408 and r.json()["error"]["param"] == "timeout", r.text
    assert _drained(slow["engine"])


def _drained(engine, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while engine.has_unfinished() and time.time() < deadline:
        time.sleep(0.02)
    return not engine.has_unfinished() and engine.metrics()["kv_blocks_used"] == 0


def test_a_client_that_gives_up_on_a_whole_answer_has_its_request_aborted(slow):
    engine, before = slow["engine"], slow["engine"].tokens_generated
    body = {"model": "slow", "prompt": "hello", "max_tokens": 200, "temperature": 0}  # 6 s of slow steps
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow["url"] + "/v1/completions", json=body, timeout=0.5)
    assert _drained(engine, 3.0) and engine.tokens_generated - before < 100


def test_a_client_that_gives_up_while_queued_leaves_the_queue(slow):
    from concurrent.futures import ThreadPoolExecutor

    engine, url = slow["engine"], slow["url"] + "/v1/completions"
    body = {"model": "slow", "prompt": "hello", "max_tokens": 100, "temperature": 0}  # 3 s; one sequence runs
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, json=body, timeout=30)
        while not engine.scheduler.running:
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):  # no header yet: it waits behind the first for its first token
            httpx.post(url, json={**body, "stream": True}, timeout=0.5)
        deadline = time.time() + 1.5
        while engine.scheduler.waiting and time.time() < deadline:
            time.sleep(0.01)
        assert not engine.scheduler.waiting and not first.done()  # gone from the queue while the first still runs
        assert first.result().status_code == 200
    assert _drained(engine)


def test_the_servers_time_to_first_token_counts_from_the_request(slow):
    body = {"model": "slow", "prompt": "hello", "max_tokens": 2, "temperature": 0}
    for _ in range(2):
        assert httpx.post(slow["url"] + "/v1/completions", json=body, timeout=30).status_code == 200
    (family,) = (f for f in text_string_to_metric_families(httpx.get(slow["url"] + "/metrics").text)
                 if f.name == "mini_llm_time_to_first_token_seconds")  # fmt: skip
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    count, total = samples[(family.name + "_count", None)], samples[(family.name + "_sum", None)]
    # every request on this server waited at least one slow step for its first token
    assert count >= 2 and total / count >= STEP_S and samples[(family.name + "_bucket", "0.01")] == 0, samples
