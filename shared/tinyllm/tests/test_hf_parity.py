"""Against the reference implementation: transformers' LlamaForCausalLM on the same weights."""

import json

import pytest
import torch
from tinyllm.checkpoint import load_model, save_model
from tinyllm.generate import generate
from tinyllm.sampling import SamplingParams
from transformers import LlamaConfig, LlamaForCausalLM

CASES = {
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mha-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "mqa-theta": dict(num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0),
    "llama3-rope": dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
}


def hf_model(randomize, **kw) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=144,
        num_hidden_layers=3,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        **kw,
    )
    torch.manual_seed(1)
    return randomize(LlamaForCausalLM(cfg), seed=1).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_transformers(case, tmp_path, randomize):
    hf = hf_model(randomize, **CASES[case])
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    x = torch.randint(0, 211, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (hf(x).logits.float() - ours(x).float()).abs().max().item()
    assert diff <= 1e-4, f"{case}: max |logits diff| = {diff}"

    prompt = x[:1, :12]
    ref = hf.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)[0, 12:]
    got = generate(ours, prompt.tolist(), SamplingParams(temperature=0.0, max_new_tokens=24)).tokens[0]
    assert got == ref.tolist()


def test_transformers_loads_what_we_save(small_model, tmp_path):
    save_model(small_model, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, small_model.cfg.vocab_size, (2, 30))
    with torch.no_grad():
        assert (hf(x).logits - small_model(x)).abs().max().item() <= 1e-4


def test_round_trip_is_exact_and_keeps_config(small_model, tmp_path):
    save_model(small_model, tmp_path)
    again = load_model(tmp_path)
    assert again.cfg.to_hf() == small_model.cfg.to_hf()
    for (n1, p1), (n2, p2) in zip(small_model.state_dict().items(), again.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 2


def test_bf16_checkpoint_loads_in_its_dtype(small_model, tmp_path):
    save_model(small_model.to(torch.bfloat16), tmp_path)
    assert load_model(tmp_path).lm_head.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.float32).lm_head.weight.dtype == torch.float32
