"""`load(name_or_path)`: a local HF-format checkpoint directory, or a preset name.

A preset is trained once and cached under ~/.cache/tinyllm/presets/<name>/ (XDG_CACHE_HOME honoured);
loading one that is not cached trains it when asked (train_if_missing=True, with a progress bar) and
otherwise fails with the command that would train it. `tokenizer(name_or_path)` is the tokenizer alone: a
preset not trained yet gets the one its training would make, in seconds, without training the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tinyllm.checkpoint import load_model, load_tokenizer
from tinyllm.corpus import cache_dir
from tinyllm.model import Transformer
from tinyllm.presets import PRESETS, get_preset
from tinyllm.tokenizer import Tokenizer


def preset_dir(name: str) -> Path:
    return cache_dir() / "presets" / name


def resolve(name_or_path: str | Path) -> Path:
    """The checkpoint directory a name or path refers to (which may not exist yet, for a preset)."""
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS:
        return preset_dir(str(name_or_path))
    if path.exists():
        return path
    raise FileNotFoundError(f"{name_or_path!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")


def load(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    train_if_missing: bool = False,
    progress: bool = True,
) -> tuple[Transformer, Tokenizer | None]:
    directory = resolve(name_or_path)
    name = str(name_or_path)
    if name in PRESETS and not (directory / "model.safetensors").exists():
        if not train_if_missing:
            raise FileNotFoundError(
                f"preset {name!r} is not trained yet (no checkpoint in {directory}); "
                f"run `tinyllm train --preset {name}` or pass train_if_missing=True"
            )
        from tinyllm.train import train

        train(get_preset(name), directory, torch.device(device), progress=progress)
    return load_model(directory, device=device, dtype=dtype), load_tokenizer(directory)


def tokenizer(name_or_path: str | Path) -> Tokenizer | None:
    """A checkpoint's tokenizer (None if it has none), or a preset's: from its checkpoint when trained, else
    trained the way the preset's training trains it (tinyllm.train.preset_tokenizer), and not saved."""
    directory = resolve(name_or_path)
    name = str(name_or_path)
    if name in PRESETS and not (directory / "tokenizer.json").exists():
        from tinyllm.train import preset_tokenizer

        return preset_tokenizer(get_preset(name))
    return load_tokenizer(directory)
