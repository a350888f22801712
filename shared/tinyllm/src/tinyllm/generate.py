"""Generation with the KV cache: prefill the prompt once, then one decode step per new token.

`generate` streams each token to a callback as it is produced, and stops at max_new_tokens, a stop
token, or the model's context limit (reported, never silently truncated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams, make_generator, sample


@dataclass(frozen=True, slots=True)
class Generation:
    tokens: list[list[int]]  # new tokens per prompt
    finish_reasons: list[str]  # "stop", "length" (max_new_tokens) or "context" (model's limit)


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    on_token: Callable[[int, int], None] | None = None,
) -> Generation:
    """Generate for equal-length prompts in one batch (the server in mini-llm-server handles ragged ones).
    on_token(prompt_index, token_id) is called for every new token, as soon as it is sampled."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts in one batch must have the same length; call generate once per length")
    device = model.lm_head.weight.device
    T = len(prompts[0])
    if model.cfg.max_seq_len < T:
        raise ValueError(f"prompt of {T} tokens exceeds the model's maximum context of {model.cfg.max_seq_len}")
    budget = min(params.max_new_tokens, model.cfg.max_seq_len - T)
    cache = model.new_cache(len(prompts), T + max(budget, 1))
    gen = make_generator(params, device)
    out: list[list[int]] = [[] for _ in prompts]
    reasons = ["length" if budget == params.max_new_tokens else "context"] * len(prompts)
    done = [False] * len(prompts)
    if params.max_new_tokens == 0:
        return Generation(out, ["length"] * len(prompts))
    logits = model.prefill(torch.tensor(prompts, device=device), cache)
    for step in range(budget):
        next_ids = sample(logits, params, gen)
        for i, t in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            out[i].append(t)
            if on_token:
                on_token(i, t)
            if t in params.stop_token_ids:
                done[i], reasons[i] = True, "stop"
        if all(done) or step == budget - 1:
            break
        logits = model.decode(next_ids, cache)
    return Generation(out, reasons)
