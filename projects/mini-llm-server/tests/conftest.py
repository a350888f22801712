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
