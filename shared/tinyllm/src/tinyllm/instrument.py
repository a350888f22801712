"""Instrumentation: shapes at every major op, activation memory by layer, KV-cache bytes, prefill vs
decode time. Applied from outside the model (hooks and a wrapped attention function), so the model
file stays plain.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch import nn

from tinyllm.model import RMSNorm, Transformer


def _shape(t) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


@contextlib.contextmanager
def trace_shapes(model: Transformer, log: Callable[[str], None] = print) -> Iterator[None]:
    """Print the input and output shape of every embedding, projection, norm and attention call."""
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear | nn.Embedding | RMSNorm):

            def hook(m, args, out, name=name):
                log(f"{name:40s} {_shape(args[0]):>16s} -> {_shape(out)}")

            handles.append(mod.register_forward_hook(hook))
    inner = model.attention_fn

    def traced(q, k, v, *, causal, scale):
        out = inner(q, k, v, causal=causal, scale=scale)
        log(f"{'attention(q, k, v)':40s} {_shape(q)} {_shape(k)} {_shape(v)} -> {_shape(out)}")
        return out

    model.attention_fn = traced
    try:
        yield
    finally:
        model.attention_fn = inner
        for h in handles:
            h.remove()


def activation_memory_by_layer(model: Transformer, tokens: torch.Tensor, autocast_bf16: bool = False) -> dict[str, int]:
    """Bytes of tensors autograd saves for the backward pass during one training forward, by the module
    that was running when each was saved ('embed_tokens', 'layers.0', ..., 'norm', 'lm_head', 'loss').
    Each storage is counted once, where it was first saved."""
    current = ["(outside)"]
    seen: set[int] = set()
    usage: dict[str, int] = defaultdict(int)
    top = {"embed_tokens": model.embed_tokens, "norm": model.norm, "lm_head": model.lm_head}
    top.update({f"layers.{i}": layer for i, layer in enumerate(model.layers)})
    handles = [
        m.register_forward_pre_hook(lambda m, a, name=name: current.__setitem__(0, name)) for name, m in top.items()
    ]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and not isinstance(t, nn.Parameter):
            seen.add(key)
            usage[current[0]] += storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen.update(params)  # weights are saved for backward too, but they are not activations
    amp = torch.autocast(tokens.device.type, dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
            logits = model(tokens[:, :-1])
            current[0] = "loss"
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    finally:
        for h in handles:
            h.remove()
    del loss, logits
    return dict(usage)


def time_prefill_decode(model: Transformer, batch: int, prompt_len: int, timing) -> tuple[float, float]:
    """Median seconds for one prefill of (batch, prompt_len) tokens and for one decode step right after
    it. The cache is rewound before every call, so each repeat does exactly the same work."""
    from mlsys_bench.timing import time_fn

    device = model.lm_head.weight.device
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=g).to(device)
    cache = model.new_cache(batch, prompt_len + 1)

    def prefill():
        cache.reset()
        return model.prefill(prompt, cache)

    next_tokens = prefill().argmax(-1)
    t_prefill = time_fn(prefill, device=device, config=timing).median
    prefill()

    def decode():
        cache.length = prompt_len  # rewind: every repeat appends at the same position
        return model.decode(next_tokens, cache)

    t_decode = time_fn(decode, device=device, config=timing).median
    return t_prefill, t_decode
