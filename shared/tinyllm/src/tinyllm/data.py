"""Token streams for training: tokenize a corpus once, then draw random (B, T) windows from it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from tinyllm.corpus import Corpus
from tinyllm.tokenizer import Tokenizer

CHUNK_CHARS = 200_000  # tokenize in chunks so the Rust tokenizer can work on several in parallel
# Cut only after a newline that a non-space character follows: the byte-level pre-tokenizer glues a
# newline to the indentation after it, so a cut there would tokenize differently from the whole text.
SAFE_CUT = re.compile(r"\n(?=\S)")


def tokenize(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """The whole text as one int64 token stream, identical to tokenizer.encode(text)."""
    chunks, start = [], 0
    while start < len(text):
        m = SAFE_CUT.search(text, start + CHUNK_CHARS)
        end = len(text) if m is None else m.end()
        chunks.append(text[start:end])
        start = end
    ids = [t for chunk_ids in tokenizer.encode_batch(chunks) for t in chunk_ids]
    return torch.tensor(ids, dtype=torch.int64)


@dataclass(frozen=True, slots=True)
class TokenData:
    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64

    @staticmethod
    def build(corpus: Corpus, tokenizer: Tokenizer) -> TokenData:
        return TokenData(tokenize(corpus.train, tokenizer), tokenize(corpus.val, tokenizer))


def random_batch(
    data: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (B, T), from random offsets."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"token stream of {len(data)} tokens is too short for windows of {seq_len + 1}")
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
    window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


def eval_batches(
    data: torch.Tensor, batch_size: int, seq_len: int, num_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of evenly spaced validation windows, the same for every evaluation."""
    n = batch_size * num_batches
    span = len(data) - seq_len - 1
    if span <= 0:
        raise ValueError(f"validation stream of {len(data)} tokens is too short for windows of {seq_len + 1}")
    starts = [int(i * span / n) for i in range(n)]
    window = torch.stack([data[s : s + seq_len + 1] for s in starts])
    return [(window[i : i + batch_size, :-1], window[i : i + batch_size, 1:]) for i in range(0, n, batch_size)]


def unigram_perplexity(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on `val` of the best context-free model: train-set token frequencies, add-one smoothed.
    A language model that has learned anything about context must land far below it."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[val].mean().item())
