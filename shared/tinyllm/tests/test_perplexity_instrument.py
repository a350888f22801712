import math

import pytest
import torch
import torch.nn.functional as F
from tinyllm.instrument import activation_memory_by_layer, trace_shapes
from tinyllm.perplexity import perplexity


def _ppl_of_one_forward(model, tokens):
    with torch.no_grad():
        logits = model(tokens[None, :-1])[0]
    return math.exp(F.cross_entropy(logits, tokens[1:]).item())


def test_window_covering_the_stream_is_one_forward(small_model):
    tokens = torch.randint(0, 320, (50,), generator=torch.Generator().manual_seed(0))
    assert perplexity(small_model, tokens, window=64) == pytest.approx(_ppl_of_one_forward(small_model, tokens))


def test_disjoint_windows_and_sliding(small_model):
    tokens = torch.randint(0, 320, (100,), generator=torch.Generator().manual_seed(1))
    nll, n = 0.0, 0
    for b in range(0, 99, 20):  # stride == window == 20: chunks overlap by one token (the first target's context)
        chunk = tokens[b : b + 21]
        with torch.no_grad():
            logits = small_model(chunk[None, :-1])[0]
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        n += len(chunk) - 1
    assert perplexity(small_model, tokens, window=21, stride=20) == pytest.approx(math.exp(nll / n), rel=1e-5)
    sliding = perplexity(small_model, tokens, window=40, stride=10)
    assert math.isfinite(sliding)
    with pytest.raises(ValueError, match="maximum context"):
        perplexity(small_model, tokens, window=65)
    with pytest.raises(ValueError, match="stride"):
        perplexity(small_model, tokens, window=10, stride=11)


def test_trace_shapes_logs_every_op_then_detaches(small_model):
    lines = []
    with trace_shapes(small_model, log=lines.append):
        small_model(torch.zeros(2, 5, dtype=torch.long))
    assert any(line.startswith("embed_tokens") and line.endswith("2x5x64") for line in lines)
    assert sum("attention(q, k, v)" in line and "2x4x5x16 2x2x5x16" in line for line in lines) == 2
    assert lines[-1].startswith("lm_head") and lines[-1].endswith("2x5x320")
    n = len(lines)
    small_model(torch.zeros(1, 3, dtype=torch.long))
    assert len(lines) == n  # hooks removed


def test_activation_memory_by_layer(small_model):
    tokens = torch.randint(0, 320, (2, 33))
    mem = activation_memory_by_layer(small_model.train(), tokens)
    assert set(mem) >= {"layers.0", "layers.1", "loss"}
    # identical layers save identical activations, except that layer 0 is first to save the shared cos/sin
    assert 0 <= mem["layers.0"] - mem["layers.1"] <= 2 * 32 * 16 * 4 and mem["layers.1"] > 0
    # a layer saves at least its inputs to 7 projections and the attention output: B*T*C floats each
    assert mem["layers.0"] >= 2 * 32 * 64 * 4 * 4
