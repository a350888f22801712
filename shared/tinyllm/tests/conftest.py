import pytest
import torch
from tinyllm.config import ModelConfig
from tinyllm.model import Transformer


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from the init scale, so a wrong operation shows up in the logits and is not hidden by 0.02."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model


@pytest.fixture
def small_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)


@pytest.fixture
def small_model(small_cfg) -> Transformer:
    torch.manual_seed(0)
    return _randomize(Transformer(small_cfg)).eval()


@pytest.fixture
def randomize():
    return _randomize
