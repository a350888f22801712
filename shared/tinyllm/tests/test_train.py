import json
import math

import pytest
import torch
from tinyllm.presets import PRESETS, get_preset
from tinyllm.train import lr_at, preset_tokenizer, train

QUICK = dict(
    corpus_bytes=150_000,
    tokenizer_bytes=80_000,
    vocab_size=384,
    batch_size=8,
    seq_len=64,
    warmup_steps=5,
    eval_every=20,
    eval_batches=2,
    max_seconds=None,
    lr=3e-3,
)


def test_short_run_learns_and_saves(tmp_path):
    preset = get_preset("tiny", max_steps=40, **QUICK)
    model, tok, r = train(preset, tmp_path, torch.device("cpu"), progress=False, log=lambda s: None)
    first, last = r.train_loss[0][1], r.train_loss[-1][1]
    assert last < first - 1.0, f"loss did not fall: {first:.2f} -> {last:.2f}"
    assert r.val_ppl < r.unigram_ppl, "the model is no better than token frequencies"
    assert r.steps == 40 and r.tokens == 40 * 8 * 64 and r.tokens_per_s > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "training.json"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "training.json").read_text())["preset"] == "tiny"
    # the tokenizer alone, as registry.tokenizer makes it for a preset not trained yet: the same one
    assert preset_tokenizer(preset).tk.get_vocab() == tok.tk.get_vocab()


def test_resume_continues_exactly(tmp_path):
    log = lambda s: None  # noqa: E731
    straight, _, r_straight = train(
        get_preset("tiny", max_steps=12, **QUICK), None, torch.device("cpu"), progress=False, log=log
    )
    train(get_preset("tiny", max_steps=6, **QUICK), tmp_path, torch.device("cpu"), progress=False, log=log)
    # the schedule must be the 12-step one for the comparison to hold: resume with the longer config
    resumed, _, r_resumed = train(
        get_preset("tiny", max_steps=12, **QUICK), tmp_path, torch.device("cpu"), resume=True, progress=False, log=log
    )
    assert r_resumed.steps == 12
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"{n} differs after resume")


def test_schedule_shape():
    cfg = PRESETS["small"].train
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lr_at(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert lr_at(cfg.max_steps, cfg) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    mid = cfg.warmup_steps + (cfg.max_steps - cfg.warmup_steps) // 2
    assert lr_at(mid, cfg) == pytest.approx(cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) / 2), rel=1e-2)


def test_resume_without_state_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(get_preset("tiny", max_steps=10, **QUICK), tmp_path, torch.device("cpu"), resume=True, progress=False)


def test_preset_sizes():
    assert 0.8e6 < PRESETS["tiny"].model.num_params() < 1.5e6
    assert 20e6 < PRESETS["small"].model.num_params() < 30e6
    assert 95e6 < PRESETS["base"].model.num_params() < 125e6
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    assert math.isfinite(PRESETS["base"].model.flops_per_token(1024))


@pytest.mark.gpu
def test_gpu_bf16_autocast_trains_like_fp32():
    def run(bf16: bool):
        preset = get_preset("tiny", max_steps=60, compile=False, autocast_bf16=bf16, **QUICK)
        return train(preset, None, torch.device("cuda"), progress=False, log=lambda s: None)[2]

    fp32, bf16 = run(False), run(True)
    tail = lambda r: sum(loss for _, loss in r.train_loss[-3:]) / 3  # noqa: E731
    assert tail(bf16) < bf16.train_loss[0][1] - 0.8 and bf16.val_ppl < bf16.unigram_ppl
    assert abs(tail(bf16) - tail(fp32)) < 0.15, f"bf16 {tail(bf16):.3f} vs fp32 {tail(fp32):.3f}"
    assert bf16.peak_memory_bytes > 0


@pytest.mark.slow
def test_tiny_preset_trains_on_this_cpu_within_two_minutes(tmp_path):
    import time

    torch.set_num_threads(min(2, torch.get_num_threads()))  # the budget is for a 2-core machine
    t0 = time.perf_counter()
    _, _, r = train(get_preset("tiny"), tmp_path, torch.device("cpu"), progress=False, log=lambda s: None)
    elapsed = time.perf_counter() - t0
    assert elapsed < 120, f"tiny took {elapsed:.0f} s"
    assert r.val_ppl < r.unigram_ppl / 4, f"val perplexity {r.val_ppl:.1f} vs unigram {r.unigram_ppl:.1f}"
