import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from tinyllm import registry
from tinyllm.checkpoint import load_model, save_model
from tinyllm.cli import main
from tinyllm.tokenizer import Tokenizer


@pytest.fixture
def ckpt(small_model, tmp_path):
    tok = Tokenizer.train(["print('hello world')\n" * 50], vocab_size=300)
    assert tok.vocab_size <= small_model.cfg.vocab_size
    return save_model(small_model, tmp_path / "ckpt", tok)


def test_tokenizer_larger_than_the_model_is_refused(small_model, tmp_path):
    tok = Tokenizer.train([" ".join(f"word{i}" for i in range(3000))] * 3, vocab_size=400)
    model = type(small_model)(replace(small_model.cfg, vocab_size=300))
    save_model(model, tmp_path, tok)
    with pytest.raises(ValueError, match="tokenizer has 4.. tokens but the model's vocabulary is 300"):
        registry.load(tmp_path)


def test_missing_and_malformed_checkpoints(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path / "empty")
    cfg = json.loads((ckpt / "config.json").read_text())

    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not a Llama-architecture model"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    with pytest.raises(ValueError, match="missing key 'hidden_size'"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps(cfg))

    weights = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1.mlp" not in k}, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensors"):
        load_model(ckpt)
    save_file({**weights, "model.extra.weight": torch.zeros(1)}, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected tensor 'model.extra.weight'"):
        load_model(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable weights"):
        load_model(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(ckpt)


def test_sharded_checkpoint_loads(small_model, tmp_path):
    save_model(small_model, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, tmp_path / shard)
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    x = torch.randint(0, 320, (1, 10))
    torch.testing.assert_close(load_model(tmp_path)(x), small_model(x))


def test_registry(ckpt, tmp_path, monkeypatch):
    model, tok = registry.load(ckpt)
    assert tok is not None and tok.decode(tok.encode("hello")) == "hello"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="run `tinyllm train --preset small`"):
        registry.load("small")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a preset"):
        registry.load("no-such-model")
    assert registry.tokenizer(ckpt).tk.get_vocab() == tok.tk.get_vocab()
    alone = registry.tokenizer("tiny")  # not trained in this cache: the tokenizer alone, nothing saved
    assert alone.decode(alone.encode("hello world")) == "hello world" and alone.eos_id is not None
    assert not registry.preset_dir("tiny").exists() or not any(registry.preset_dir("tiny").iterdir())
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a preset"):
        registry.tokenizer("no-such-model")


def test_cli(ckpt, capsys):
    assert main(["generate", "--model", str(ckpt), "--prompt", "print(", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("print(") and "[5 tokens, finished: length]" in out.err
    assert main(["inspect", "--model", str(ckpt), "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "attention(q, k, v)" in out and "KV cache: 512 bytes per token" in out and "layers.1" in out
    assert main(["generate", "--model", "nowhere", "--prompt", "x"]) == 2
    assert "neither a checkpoint directory nor a preset" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--set 'bogus=1'"):
        main(["train", "--preset", "tiny", "--set", "bogus=1"])
    with pytest.raises(SystemExit):
        main(["train", "--preset", "huge"])
