"""custom-gelu: GELU forward and backward written by hand, as a torch.library op."""

from custom_gelu.functional import bias_gelu, gelu
from custom_gelu.module import GELU, BiasGELU

__all__ = ["GELU", "BiasGELU", "bias_gelu", "gelu"]
