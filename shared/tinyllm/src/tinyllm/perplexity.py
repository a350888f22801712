"""Perplexity of a token stream with a sliding window, the way long texts are scored.

The model sees at most `window` tokens; the window advances by `stride`, and only the tokens new to
each window are scored, each with up to window - stride tokens of context (the Hugging Face
perplexity recipe). stride == window scores disjoint chunks: faster, but early tokens of each chunk see
little context, so the number is higher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinyllm.model import Transformer


@torch.no_grad()
def perplexity(
    model: Transformer, tokens: torch.Tensor, *, window: int | None = None, stride: int | None = None
) -> float:
    window = window or model.cfg.max_seq_len
    stride = stride or window // 2
    if window > model.cfg.max_seq_len:
        raise ValueError(f"window of {window} exceeds the model's maximum context of {model.cfg.max_seq_len}")
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window], got {stride}")
    if tokens.dim() != 1 or len(tokens) < 2:
        raise ValueError("perplexity needs a 1-D stream of at least 2 tokens")
    device = model.lm_head.weight.device
    nll, counted, scored_until = 0.0, 0, 1  # position 0 has no context and is never scored
    for begin in range(0, len(tokens) - 1, stride):
        end = min(begin + window, len(tokens))
        chunk = tokens[begin:end].to(device)
        logits = model(chunk[None, :-1])[0].float()  # (T-1, V): predictions for chunk[1:]
        targets = chunk[1:]
        first_new = max(scored_until - begin - 1, 0)  # skip targets an earlier window already scored
        nll += F.cross_entropy(logits[first_new:], targets[first_new:], reduction="sum").item()
        counted += len(targets) - first_new
        scored_until = end
        if end == len(tokens):
            break
    return math.exp(nll / counted)
