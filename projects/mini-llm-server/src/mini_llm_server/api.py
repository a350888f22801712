"""The HTTP service: OpenAI-compatible `/v1/completions` and `/v1/chat/completions` (streamed as server-sent
events or not), `/v1/models`, `/health` and Prometheus `/metrics`, in front of one AsyncEngine.

Admission control happens before a request touches the engine: past `max_queue` waiting requests, or
when requests already wait and the free KV blocks cannot hold their prompts and this one, the answer is
429 with Retry-After, never an unbounded queue. Shutdown is uvicorn's: it stops accepting connections and
lets open responses finish, and the engine keeps stepping until they have. A client that disconnects mid-stream ends its
generator, which aborts the request and frees its blocks before the next engine step.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2.exceptions import TemplateError
from prometheus_client import generate_latest
from pydantic import BaseModel, Field
from tinyllm.sampling import SamplingParams
from tinyllm.tokenizer import Tokenizer

from mini_llm_server.async_engine import AsyncEngine
from mini_llm_server.chat_template import render_chat
from mini_llm_server.detokenizer import IncrementalDetokenizer
from mini_llm_server.engine_process import EngineClient
from mini_llm_server.metrics import ITL, TAKEN, TTFT, WRITTEN, Metrics, StreamStats

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


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk, before [DONE], with no choices and the request's token counts


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension, as vLLM's
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    timeout: float | None = Field(None, gt=0.0)  # seconds; an extension: the request ends with an error past it
    stream_options: StreamOptions | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(CompletionRequest):
    prompt: str | list[int] = ""  # unused: chat requests carry messages
    messages: list[ChatMessage] = Field(min_length=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def _error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(400, f"{field}: {first.get('msg', 'invalid request')}" if field else "invalid JSON body", field)

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

    def _params(req: CompletionRequest) -> SamplingParams:
        return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                              max_new_tokens=req.max_tokens)  # fmt: skip

    def _admit(req: CompletionRequest, prompt: str | list[int]) -> list[int]:
        if req.model != config.model_name:
            raise ApiError(404, f"model: unknown model {req.model!r}; this server serves {config.model_name!r}",
                           "model")  # fmt: skip
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        busy = None
        waiting = engine.waiting_lengths()
        if len(waiting) >= config.max_queue:
            busy = f"server overloaded: {config.max_queue} requests already waiting"
        elif waiting:  # requests already queue for memory: admit only what the free KV blocks hold
            bs = engine.block_size
            demand = sum(-(-n // bs) for n in waiting) + -(-len(ids) // bs)
            if demand > engine.num_free_blocks():
                busy = f"server overloaded: the KV cache cannot hold the {len(waiting) + 1} waiting prompts"
        if busy:
            stats.reject()
            raise ApiError(429, busy, headers={"Retry-After": str(config.retry_after_s)})
        return ids

    async def _run(req: CompletionRequest, ids: list[int]) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text delta, finish reason or None, tokens so far) as tokens arrive; the engine ends the request on
        a stop string, and the text is cut before it."""
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        try:
            stream = engine.stream(ids, _params(req), timeout=req.timeout, stop=stops, detokenize=tokenizer.decode)
            first = await anext(stream)  # the engine validates the request here (length, vocabulary)
        except ValueError as e:
            field = str(e).split(":", 1)[0]
            raise ApiError(400, str(e), field if field in ("prompt", "timeout") else None) from None
        sent, t_start, t_last = "", time.perf_counter(), None
        text_stream = IncrementalDetokenizer(tokenizer)
        out = first
        while True:
            now = time.perf_counter()
            if out.new_tokens:
                stats.add_tokens(len(out.new_tokens))
                stats.observe(TTFT if t_last is None else ITL, now - (t_start if t_last is None else t_last))
                if t_last is not None:
                    stats.gap(TAKEN, now - t_last)
                t_last = now
            if out.finished:
                # the engine ended it on a stop string (or stop token): the text stops before the string
                text = tokenizer.decode(out.output)
                text = text[: min((text.find(s) for s in stops if s and s in text), default=len(text))]
                reason = {"length": "length", "context": "length", "stop": "stop"}.get(out.finish_reason)
                if reason is None:
                    raise ApiError(408 if out.finish_reason == "timeout" else 500,
                                   f"request ended: {out.finish_reason}")  # fmt: skip
                yield text[len(sent) :], reason, len(out.output)
                return
            delta = text_stream.new_text(out.output)
            if delta:
                yield delta, None, len(out.output)
                sent += delta
            out = await anext(stream)

    async def _respond(req: CompletionRequest, ids: list[int], chat: bool, request: Request):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "stream_options: only allowed when stream is true", "stream_options")
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(delta: str, reason: str | None, streaming: bool) -> dict:
            if not chat:
                return {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
            body = {"role": "assistant", "content": delta}
            return {"index": 0, ("delta" if streaming else "message"): body, "finish_reason": reason}

        if not req.stream:
            text, reason, n = "", None, 0
            async for delta, r, count in _run(req, ids):
                text, reason, n = text + delta, r, count
            usage = {"prompt_tokens": len(ids), "completion_tokens": n}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            return {"id": rid, "object": kind, "created": created, "model": config.model_name,
                    "choices": [choice(text, reason, False)], "usage": usage}  # fmt: skip

        gen = _run(req, ids)
        first = await anext(gen)  # errors (400, 408) surface as a status code before the stream starts

        # Every chunk of a stream is the same JSON but for its text and finish reason: serialised once with
        # markers in their place, and filled in per event (a json.dumps of the nested dict per token was a
        # visible share of the HTTP process's CPU per token).
        header = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                  "model": config.model_name}  # fmt: skip
        text_mark, reason_mark = "\x00text", "\x00reason"
        head, rest = json.dumps({**header, "choices": [choice(text_mark, reason_mark, True)]}).split(
            json.dumps(text_mark)
        )
        middle, tail = rest.split(json.dumps(reason_mark))

        async def events():
            try:
                item, last_check, written = first, time.perf_counter(), None
                while True:
                    delta, reason, count = item
                    finish = "null" if reason is None else json.dumps(reason)
                    yield f"data: {head}{json.dumps(delta)}{middle}{finish}{tail}\n\n"
                    now = time.perf_counter()  # back here once the event is written to the socket
                    if written is not None:
                        stats.gap(WRITTEN, now - written)
                    written = now
                    if reason is not None:
                        if req.stream_options is not None and req.stream_options.include_usage:
                            usage = {"prompt_tokens": len(ids), "completion_tokens": count,
                                     "total_tokens": len(ids) + count}  # fmt: skip
                            yield f"data: {json.dumps({**header, 'choices': [], 'usage': usage})}\n\n"
                        break
                    # Starlette cancels this generator when the client goes (ASGI < 2.4, uvicorn's); where a
                    # write to a closed socket may not raise, ask, but not per token: asking costs a task switch
                    if now - last_check > DISCONNECT_CHECK_S:
                        if await request.is_disconnected():
                            break
                        last_check = now
                    item = await anext(gen)
                yield "data: [DONE]\n\n"
            finally:
                await gen.aclose()  # a disconnected client lands here: the engine request is aborted

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _respond(req, _admit(req, req.prompt), False, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        try:
            prompt = render_chat([m.model_dump() for m in req.messages], config.chat_template)
        except TemplateError as e:
            raise ApiError(400, f"messages: the chat template refused them: {e}", "messages") from e
        return await _respond(req, _admit(req, prompt), True, request)

    return app


def serve_in_thread(app) -> tuple[object, threading.Thread, str]:
    """A uvicorn server for `app` on a free loopback port in a daemon thread: (server, thread, base URL)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
