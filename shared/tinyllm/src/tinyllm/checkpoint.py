"""Checkpoints in the Hugging Face layout: config.json, model.safetensors (or sharded with an index),
tokenizer.json. Directories written by transformers' save_pretrained load here, and directories
written here load in transformers, so any Llama-family checkpoint on disk serves every project.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinyllm.config import ModelConfig
from tinyllm.model import RotaryEmbedding, Transformer
from tinyllm.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older exports saved; recomputed here


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face one: everything but the LM head lives under 'model.'."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def read_config(directory: Path) -> ModelConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a checkpoint: it has no config.json")
    try:
        return ModelConfig.from_hf(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.exists():
            return load_file(single)
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(load_file(directory / shard))
            return weights
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{directory}: unreadable weights ({type(e).__name__}: {e})") from None
    raise FileNotFoundError(f"{directory} has no model.safetensors (PyTorch .bin checkpoints are not read)")


def load_model(directory: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Build the model from a checkpoint directory; dtype defaults to the checkpoint's torch_dtype."""
    directory = Path(directory)
    cfg = read_config(directory)
    saved = cfg.extra_hf.get("dtype") or cfg.extra_hf.get("torch_dtype") or "float32"
    dtype = dtype or DTYPES.get(saved, torch.float32)
    weights = _read_weights(directory)
    with torch.device("meta"):
        model = Transformer(cfg)  # no memory and no init work for weights that are about to be replaced
    expected = {hf_name(n) for n, _ in model.named_parameters(remove_duplicate=True)}
    state = {}
    for key, tensor in weights.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in expected:
            raise ValueError(f"{directory}: unexpected tensor {key!r} for a Llama model")
        state[key.removeprefix("model.")] = tensor.to(device=device, dtype=dtype)
    missing = sorted(expected - {hf_name(k) for k in state})
    if missing:
        raise ValueError(f"{directory}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    for name, tensor in state.items():
        shape = model.get_parameter(name).shape
        if tensor.shape != shape:
            raise ValueError(
                f"{directory}: {hf_name(name)} has shape {tuple(tensor.shape)}, config implies {tuple(shape)}"
            )
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary = RotaryEmbedding(cfg).to(device)  # buffers built on meta are recomputed for real
    return model.eval()


def load_tokenizer(directory: Path) -> Tokenizer | None:
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        return None
    cfg = read_config(directory)
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    tok = Tokenizer.load(path, bos_id=cfg.bos_token_id, eos_id=eos, pad_id=cfg.pad_token_id)
    if tok.vocab_size > cfg.vocab_size:  # its ids would index past the embedding table
        raise ValueError(
            f"{directory}: tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {cfg.vocab_size}"
        )
    return tok


def save_model(model: Transformer, directory: Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write config.json, model.safetensors and (if given) tokenizer.json in the HF layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    dtype_name = {v: k for k, v in DTYPES.items()}[dtype]
    cfg = model.cfg
    hf = cfg.to_hf(dtype_name)
    if tokenizer is not None:
        hf.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
        tokenizer.save(directory / "tokenizer.json")
    state = {
        hf_name(n): p.detach().contiguous().cpu()
        for n, p in model.named_parameters(remove_duplicate=True)  # tied lm_head is saved once, as HF does
    }
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return directory
