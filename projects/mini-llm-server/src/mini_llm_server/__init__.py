"""A small vLLM: an engine that batches requests step by step over a paged KV cache."""

from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine, RequestOutput

__all__ = ["EngineConfig", "LLMEngine", "RequestOutput"]
