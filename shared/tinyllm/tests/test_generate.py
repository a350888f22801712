import pytest
import torch
from tinyllm.generate import generate
from tinyllm.sampling import SamplingParams, sample


def test_greedy_equals_argmax_and_topk1():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    greedy = sample(logits, SamplingParams(temperature=0.0))
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(sample(logits, SamplingParams(top_k=1), torch.Generator().manual_seed(1)), greedy)
    assert torch.equal(sample(logits, SamplingParams(top_p=1e-6), torch.Generator().manual_seed(1)), greedy)


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(3, 100)
    p = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=7)
    a = [sample(logits, p, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [sample(logits, p, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_filters_keep_only_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    top2 = sample(logits, SamplingParams(top_k=2), gen)
    assert set(top2.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # [0.64, 0.24, 0.09, 0.03, 0.01]: the first two hold 0.88 of the mass
    nucleus = sample(logits, SamplingParams(top_p=0.85), gen)
    assert set(nucleus.tolist()) == {0, 1}
    full = sample(logits, SamplingParams(temperature=1.0), gen)
    freq = torch.bincount(full, minlength=5).float() / len(full)
    assert torch.allclose(freq, probs, atol=0.04)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(max_new_tokens=-1)])
def test_bad_params(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_generate_streams_and_stops(small_model):
    prompt = [[5, 6, 7, 8]]
    streamed = []
    g = generate(
        small_model,
        prompt,
        SamplingParams(temperature=0.0, max_new_tokens=10),
        on_token=lambda i, t: streamed.append(t),
    )
    assert g.tokens[0] == streamed and len(streamed) == 10 and g.finish_reasons == ["length"]
    stop = streamed[3]
    g2 = generate(small_model, prompt, SamplingParams(temperature=0.0, max_new_tokens=10, stop_token_ids=(stop,)))
    assert g2.tokens[0] == streamed[: streamed.index(stop) + 1] and g2.finish_reasons == ["stop"]


def test_generate_matches_recompute_greedy(small_model):
    prompt = [3, 1, 4, 1, 5]
    got = generate(small_model, [prompt], SamplingParams(temperature=0.0, max_new_tokens=8)).tokens[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(small_model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt) :]


def test_generate_respects_context_and_input_errors(small_model):
    g = generate(small_model, [[1] * 60], SamplingParams(temperature=0.0, max_new_tokens=10))
    assert len(g.tokens[0]) == 4 and g.finish_reasons == ["context"]
    with pytest.raises(ValueError, match="maximum context"):
        generate(small_model, [[1] * 65], SamplingParams())
    with pytest.raises(ValueError, match="same length"):
        generate(small_model, [[1, 2], [1]], SamplingParams())
    with pytest.raises(ValueError, match="at least one token"):
        generate(small_model, [[]], SamplingParams())
