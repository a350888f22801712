"""`gelu(x, approximate=...)` and `bias_gelu(x, bias, approximate=...)`: drop-in for
torch.nn.functional.gelu and for gelu(x + bias), with input checks that name the problem."""

from __future__ import annotations

import torch

from custom_gelu.ops import NS

APPROXIMATE = {"none": 0, "tanh": 1}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _mode(approximate: str) -> int:
    if approximate not in APPROXIMATE:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return APPROXIMATE[approximate]


def _check(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; GELU supports {', '.join(str(d) for d in DTYPES)}")


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    _check(x)
    return NS.gelu_fwd(x, _mode(approximate))


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) in one pass, bias broadcast over the last dimension (the MLP's first linear)."""
    _check(x)
    _check(bias, "bias")
    if bias.dim() != 1 or x.dim() == 0 or x.shape[-1] != bias.shape[0]:
        raise ValueError(
            f"bias must be 1-D with x.shape[-1] = {x.shape[-1] if x.dim() else 0} elements, got {tuple(bias.shape)}"
        )
    if bias.dtype != x.dtype:
        raise TypeError(f"bias dtype {bias.dtype} differs from x dtype {x.dtype}")
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
    return NS.bias_gelu_fwd(x, bias, _mode(approximate))
