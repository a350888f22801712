"""nn.Module drop-ins: GELU replaces torch.nn.GELU; BiasGELU is the Linear-bias-then-GELU of an MLP."""

from __future__ import annotations

import torch
from torch import nn

from custom_gelu.functional import bias_gelu, gelu


class GELU(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class BiasGELU(nn.Module):
    """gelu(linear(x)) with the linear's bias added inside the GELU kernel: Linear(bias=False) + this."""

    def __init__(self, features: int, approximate: str = "none") -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_gelu(x, self.bias, self.approximate)
