"""The tiny model the service tests share: a trained toy tokenizer and random weights (seeded)."""

import pytest
import torch
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello model", "def main(): return 0"] * 20


@pytest.fixture(scope="module")
def parts():
    tok = Tokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=1024)  # fmt: skip
    return Transformer(cfg).eval(), tok


@pytest.fixture
def hang_up_mid_stream():
    """A client that asks for a long stream, reads three lines of it and hangs up; then waits (up to 60 s)
    until `freed()` says the server let go of the request."""
    import time

    import httpx

    def hang_up(url: str, model: str, freed) -> None:
        body = {"model": model, "prompt": "hello", "max_tokens": 240, "temperature": 0.8, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 3:
                    break
        deadline = time.time() + 60
        while not freed() and time.time() < deadline:
            time.sleep(0.05)

    return hang_up


@pytest.fixture(scope="module")
def stack(parts):
    """A service on a real uvicorn server on loopback, its engine in-process (queue bound 4)."""
    from mini_llm_server import EngineConfig, LLMEngine
    from mini_llm_server.api import ServiceConfig, create_app, serve_in_thread
    from mini_llm_server.async_engine import AsyncEngine

    model, tok = parts
    engine = LLMEngine(model, EngineConfig(num_blocks=256, block_size=8))
    server, thread, url = serve_in_thread(
        create_app(AsyncEngine(engine), tok, ServiceConfig(model_name="test", max_queue=4))
    )
    yield {"url": url, "engine": engine, "model": model, "tok": tok}
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def reference_text(parts):
    """The text a fresh engine generates for one prompt alone: reference_text(ids, max_new_tokens, **sampling)."""
    from mini_llm_server import EngineConfig, LLMEngine
    from tinyllm.sampling import SamplingParams

    model, tok = parts

    def generate(ids: list[int], max_new_tokens: int, temperature: float = 0.0, **sampling) -> str:
        ref = LLMEngine(model, EngineConfig(num_blocks=64, block_size=8))
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, **sampling)
        return tok.decode(ref.generate([ids], params)[0])

    return generate
