"""Without a CUDA GPU the kernels run in Triton's CPU interpreter. The switch is read when a kernel is
decorated, so it is set here, before any test module imports flashattention_triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
