"""The HTTP service: OpenAI-compatible `/v1/completions` and `/v1/chat/completions` (streamed as server-sent
events or not), `/v1/models`, `/health` and Prometheus `/metrics`, in front of one AsyncEngine.

Admission control happens before a request touches the engine: past `max_queue` waiting requests, or
when requests already wait and the free KV blocks cannot hold their prompts and this one, the answer is
429 with Retry-After, never an unbounded queue. Shutdown is uvicorn's: it stops accepting connections and
lets open responses finish, and the engine keeps stepping until they have. A client that disconnects
mid-stream ends its generator, which aborts the request and frees its blocks before the next engine step;
one that goes while its request waits for a first token, or while its whole answer is made, has its
handler cancelled, to the same effect.

A request for n choices (of each prompt in a batch) is as many requests to the engine, their tokens merged
into one response as they come.
What a body may hold is protocol.py's. An error once a stream has begun (a deadline passed) cannot be a
status code any more: it is sent as an event with OpenAI's error body, then `[DONE]`, which OpenAI's own
client raises as an error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2.exceptions import TemplateError
from prometheus_client import generate_latest
from tinyllm.sampling import SamplingParams
from tinyllm.tokenizer import Tokenizer

from mini_llm_server.async_engine import AsyncEngine
from mini_llm_server.chat_template import render_chat
from mini_llm_server.detokenizer import IncrementalDetokenizer
from mini_llm_server.engine_process import EngineClient
from mini_llm_server.metrics import ITL, TAKEN, TAKEN_DELAY, TTFT, WRITTEN, WRITTEN_DELAY, Metrics, StreamStats
from mini_llm_server.protocol import ApiError, ChatRequest, CompletionRequest

# How often a stream asks whether its client is gone. Under uvicorn (ASGI 2.3) Starlette cancels a stream the
# moment its client disconnects; the question is the fallback for servers where it does not, and each ask
# costs a cancel scope and a task switch.
DISCONNECT_CHECK_S = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    model_name: str = "tiny"
    max_queue: int = 64  # waiting requests beyond which new ones get 429
    retry_after_s: int = 1
    chat_template: dict | None = None  # the checkpoint's (chat_template.load_chat_template); None: role-prefixed
    # while serving, how soon a thread waiting for the interpreter lock gets it (Python's default: 5 ms): the
    # engine's thread, back from the GPU, would otherwise wait up to that long behind the streams' writes
    switch_interval_s: float = 0.0005


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_error(exc: RequestValidationError) -> ApiError:
    """The first thing pydantic found wrong with a body, as a 400 naming the field."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"invalid JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}")
    loc = tuple(first.get("loc", ()))
    field = ".".join(str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc)) or None
    if first.get("type") == "extra_forbidden":
        message = "unrecognized request argument"
    elif first.get("type") == "value_error":  # a validator's own words, without pydantic's "Value error, "
        message = str(first["ctx"]["error"])
    else:
        message = first.get("msg", "invalid request")
    return ApiError(400, f"{field}: {message}" if field else f"request body: {message}", field)


def create_app(
    engine: AsyncEngine | EngineClient, tokenizer: Tokenizer, config: ServiceConfig | None = None,
    stats: StreamStats | None = None,
) -> FastAPI:  # fmt: skip
    """The app in front of `engine`; `stats`: this process's row of the service's per-token series, where
    several API server processes share one engine (api_servers)."""
    config = config or ServiceConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        default = sys.getswitchinterval()
        sys.setswitchinterval(config.switch_interval_s)
        try:
            yield
        finally:
            sys.setswitchinterval(default)

    app = FastAPI(title="mini-llm-server", lifespan=lifespan)
    metrics = Metrics(stats)
    stats = metrics.streams
    # choices admitted that the engine has not yet been handed, by a key each: admission counts them as waiting
    # until their start gives them to the engine, which from then counts them itself (as arriving)
    reserved: dict[object, int] = {}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _error(_validation_error(exc))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "owned_by": "mini-llm-server"}]}

    @app.get("/metrics")
    async def prometheus():
        metrics.update(await engine.metrics())
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    def _params(req: CompletionRequest | ChatRequest, choice: int) -> SamplingParams:
        seed = None if req.seed is None else req.seed + choice
        return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=seed,
                              max_new_tokens=req.max_new_tokens())  # fmt: skip

    def _admit(req: CompletionRequest | ChatRequest, prompts: list[str | list[int]]) -> list[list[int]]:
        """The prompts' token ids, once the request is known to be served now: each prompt's n choices are as
        many requests to the engine, and all of them must fit in the queue (and the free KV blocks, when
        requests already wait for memory), counting the choices admitted and not yet handed to the engine."""
        if req.model != config.model_name:
            raise ApiError(404, f"model: unknown model {req.model!r}; this server serves {config.model_name!r}",
                           "model")  # fmt: skip
        req.check()
        asked = len(prompts) * req.n
        if asked > config.max_queue:  # a 429 would have the client retry something never admitted
            field, what = ("n", "") if len(prompts) == 1 else ("prompt", f" ({len(prompts)} prompts x n={req.n})")
            raise ApiError(400, f"{field}: {asked} choices{what} are more than this server queues ({config.max_queue})",
                           field)  # fmt: skip
        ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        busy = None
        waiting = engine.waiting_lengths() + list(reserved.values())
        if len(waiting) + asked > config.max_queue:
            busy = f"server overloaded: {len(waiting)} requests already waiting (at most {config.max_queue})"
        elif waiting:  # requests already queue for memory: admit only what the free KV blocks hold
            bs = engine.block_size
            demand = sum(-(-n // bs) for n in waiting) + req.n * sum(-(-len(p) // bs) for p in ids)
            if demand > engine.num_free_blocks():
                busy = f"server overloaded: the KV cache cannot hold the {len(waiting) + asked} waiting prompts"
        if busy:
            stats.reject()
            raise ApiError(429, busy, headers={"Retry-After": str(config.retry_after_s)})
        return ids

    async def _start(req: CompletionRequest | ChatRequest, ids: list[int], choice: int, key: object):
        """A choice's request given to the engine: (its stream of outputs, the first of them). The engine
        validates the request (length, vocabulary) before its first output, so waiting for that output makes
        a refused request, or one past its deadline before a first token, an error status and not a broken
        stream."""
        stream = engine.stream(ids, _params(req, choice), timeout=req.timeout, stop=_stops(req),
                               detokenize=tokenizer.decode)  # fmt: skip
        # the stream counts itself as arriving before its first wait: nothing runs between the two
        del reserved[key]
        try:
            return stream, await anext(stream)
        except ValueError as e:
            field = str(e).split(":", 1)[0]
            raise ApiError(400, str(e), field if field in ("prompt", "timeout") else None) from None

    async def _text(
        req: CompletionRequest | ChatRequest, index: int, stream: AsyncIterator, first, arrived: float
    ) -> AsyncIterator[tuple[int, str, str | None, int, float]]:
        """Choice `index`'s (index, text delta, finish reason or None, tokens so far, when the engine read the
        newest of them) as its tokens arrive, from its first output on. `arrived`: when the request came in, the
        start of its time to first token.

        A stop string ends the text before it, and may take several tokens to complete: the text that could
        be its beginning is held back until ruled out (as vLLM does), so no client, streaming or not, is
        ever given part of a stop string. Without stop strings nothing is held."""
        stops = _stops(req)
        hold = max(map(len, stops), default=1) - 1  # characters that may begin a stop string not yet complete
        sent, held, t_last = "", "", None  # text given out, and text after it held back
        text_stream = IncrementalDetokenizer(tokenizer)
        out = first
        try:
            while True:
                now = time.perf_counter()
                if out.new_tokens:
                    stats.add_tokens(len(out.new_tokens))
                    stats.observe(TTFT if t_last is None else ITL, now - (arrived if t_last is None else t_last))
                    if t_last is not None:
                        stats.count(TAKEN, now - t_last)
                    if out.read_at:
                        stats.count(TAKEN_DELAY, now - out.read_at)
                    t_last = now
                delta = text_stream.new_text(out.output)
                at = -1
                if stops:
                    # a stop string found here starts in `delta`: one that started earlier would have been found
                    # when it completed, since the text given out never ends with more than `hold` of it
                    delta = held + delta
                    at = _first_of(stops, delta)
                if out.finished or at >= 0:
                    if out.finish_reason == "timeout":
                        raise ApiError(408, f"timeout: the request ran past its deadline of {req.timeout} s", "timeout")
                    if at < 0 and (decoded := tokenizer.decode(out.output)).startswith(sent + delta):
                        delta = decoded[len(sent) :]  # and what the stream held back (a character not yet whole)
                        at = _first_of(stops, delta)
                    reason = "stop" if at >= 0 else {"length": "length", "context": "length",
                                                      "stop": "stop"}.get(out.finish_reason)  # fmt: skip
                    if reason is None:
                        raise ApiError(500, f"request ended: {out.finish_reason}")
                    # (a stop string found here before the engine saw one, its decode differing: closing the
                    # stream aborts the request)
                    yield index, delta[:at] if at >= 0 else delta, reason, len(out.output), out.read_at
                    return
                if hold:
                    delta, held = delta[: max(0, len(delta) - hold)], delta[max(0, len(delta) - hold) :]
                if delta:
                    yield index, delta, None, len(out.output), out.read_at
                    sent += delta
                out = await anext(stream)
        finally:  # closed early (a client gone, another choice failed): the engine aborts the request
            await stream.aclose()

    async def _respond(req: CompletionRequest | ChatRequest, prompts: list[list[int]], chat: bool, request: Request,
                       arrived: float):  # fmt: skip
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(i: int, delta: str, reason: str | None, streaming: bool) -> dict:
            if not chat:
                return {"index": i, "text": delta, "logprobs": None, "finish_reason": reason}
            body = {"role": "assistant", "content": delta}
            return {"index": i, ("delta" if streaming else "message"): body, "finish_reason": reason}

        prompt_tokens = sum(len(ids) for ids in prompts)

        def usage(counts: list[int]) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": sum(counts),
                    "total_tokens": prompt_tokens + sum(counts)}  # fmt: skip

        # choice p * n + i: prompt p's i-th, as OpenAI numbers a batch's choices; reserved since admission (nothing
        # has waited in between), each until its start hands it to the engine
        keys = [(object(), ids, i) for ids in prompts for i in range(req.n)]
        reserved.update((key, len(ids)) for key, ids, _ in keys)
        try:
            started = await _unless_gone(request, _started([_start(req, ids, i, key) for key, ids, i in keys]))
        finally:
            for key, _, _ in keys:  # choices never started: an error in another, or the client gone
                reserved.pop(key, None)
        count = len(started)
        choices = [_text(req, i, stream, first, arrived) for i, (stream, first) in enumerate(started)]
        # one choice is read straight from its generator: a merge would cost a generator layer per token
        items = choices[0] if count == 1 else _merged(choices)

        async def whole() -> dict:
            texts, reasons, counts = [""] * count, [None] * count, [0] * count
            async for i, delta, reason, tokens, _ in items:
                texts[i], reasons[i], counts[i] = texts[i] + delta, reason, tokens
            return {"id": rid, "object": kind, "created": created, "model": config.model_name,
                    "choices": [choice(i, texts[i], reasons[i], False) for i in range(count)],
                    "usage": usage(counts)}  # fmt: skip

        if not req.stream:
            return await _unless_gone(request, whole())

        # Every chunk of a stream is the same JSON but for its text and finish reason: serialised once per
        # choice with markers in their place, and filled in per event (a json.dumps of the nested dict per token
        # was a visible share of the HTTP process's CPU per token).
        header = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                  "model": config.model_name}  # fmt: skip
        text_mark, reason_mark = "\x00text", "\x00reason"
        templates = []
        for i in range(count):
            head, rest = json.dumps({**header, "choices": [choice(i, text_mark, reason_mark, True)]}).split(
                json.dumps(text_mark)
            )
            templates.append((head, *rest.split(json.dumps(reason_mark))))

        async def events():
            counts, written, last_check = [0] * count, [None] * count, time.perf_counter()
            try:
                async for i, delta, reason, tokens, read_at in items:
                    head, middle, tail = templates[i]
                    finish = "null" if reason is None else json.dumps(reason)
                    yield f"data: {head}{json.dumps(delta)}{middle}{finish}{tail}\n\n"
                    counts[i] = tokens
                    now = time.perf_counter()  # back here once the event is written to the socket
                    if written[i] is not None:
                        stats.count(WRITTEN, now - written[i])
                    if read_at:
                        stats.count(WRITTEN_DELAY, now - read_at)
                    written[i] = now
                    # Starlette cancels this generator when the client goes (ASGI < 2.4, uvicorn's); where a
                    # write to a closed socket may not raise, ask, but not per token: asking costs a task switch
                    if now - last_check > DISCONNECT_CHECK_S:
                        if await request.is_disconnected():
                            return
                        last_check = now
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield f"data: {json.dumps({**header, 'choices': [], 'usage': usage(counts)})}\n\n"
            except ApiError as e:  # it ended in an error once streaming (a deadline): said as an event, as OpenAI does
                yield f"data: {json.dumps(e.body())}\n\n"
            finally:
                await items.aclose()  # a disconnected client lands here: every choice still running is aborted
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        arrived = time.perf_counter()
        return await _respond(req, _admit(req, req.prompt), False, request, arrived)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        arrived = time.perf_counter()
        try:
            prompt = render_chat([m.for_template() for m in req.messages], config.chat_template)
        except TemplateError as e:
            raise ApiError(400, f"messages: the chat template refused them: {e}", "messages") from e
        return await _respond(req, _admit(req, [prompt]), True, request, arrived)

    return app


async def _unless_gone(request: Request, work: Coroutine):
    """`work`'s result, unless the client disconnects first: then `work` is cancelled (which closes its choices
    and aborts their requests) rather than left to finish for nobody. Starlette cancels a streaming response
    whose client goes, but not a handler still waiting for a first token, nor one making a whole answer.

    `work` runs in the handler's own task, which the watcher cancels, rather than in one of its own."""
    handler = asyncio.current_task()

    def client_gone(watch: asyncio.Future) -> None:
        if not watch.cancelled() and watch.exception() is None:
            handler.cancel()

    watch = asyncio.ensure_future(_disconnect(request))
    watch.add_done_callback(client_gone)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():  # not a cancellation from above: the client went
            handler.uncancel()
            raise ApiError(499, "the client closed the request") from None  # nobody reads this answer
        raise
    finally:
        watch.cancel()


async def _disconnect(request: Request) -> None:
    """Returns once the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _first_of(stops: list[str], text: str) -> int:
    """Where the first of the stop strings in `text` begins, or -1."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=-1)


def _stops(req: CompletionRequest | ChatRequest) -> list[str]:
    return [s for s in req.stop or [] if s]


async def _started(starts: list[Coroutine]) -> list:
    """Every choice's start (`_start`), awaited together; on an error the streams already started are closed
    (their requests aborted) and the first error raised. One choice starts in the handler's own task; several
    start in tasks of their own, from the loop's next turn, counted by admission as reserved until then."""
    if len(starts) == 1:
        return [await starts[0]]
    tasks: list[asyncio.Task] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(s) for s in starts]
    except BaseException as e:
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is None:
                await t.result()[0].aclose()
        raise (e.exceptions[0] if isinstance(e, BaseExceptionGroup) else e) from None
    return [t.result() for t in tasks]


async def _merged(gens: list[AsyncIterator]) -> AsyncIterator:
    """Every generator's items as they arrive; closes them all when done, on an error, or when itself closed
    early (a client gone), which aborts every choice still running."""
    pending: dict[asyncio.Future, AsyncIterator] = {}
    try:
        pending = {asyncio.ensure_future(anext(g)): g for g in gens}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                gen = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                yield item
                pending[asyncio.ensure_future(anext(gen))] = gen
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for g in gens:
            await g.aclose()


def serve_in_thread(app) -> tuple[object, threading.Thread, str]:
    """A uvicorn server for `app` on a free loopback port in a daemon thread: (server, thread, base URL)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
