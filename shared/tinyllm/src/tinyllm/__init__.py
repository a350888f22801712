"""tinyllm: the shared reference transformer (Llama architecture) every project in the repo builds on."""

from tinyllm.config import ModelConfig
from tinyllm.model import Transformer

__all__ = ["ModelConfig", "Transformer"]
