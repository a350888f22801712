"""cuda-matmul: the SGEMM ladder in CUDA, each rung a torch op."""

from cuda_matmul.ladder import RUNGS
from cuda_matmul.ops import gemm

__all__ = ["RUNGS", "gemm"]
