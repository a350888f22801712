"""`gemm(a, b, rung=...)`: C = alpha * A @ B + beta * C through one rung of the ladder.

Inputs are validated here with messages that name the problem; the C++ op re-checks the essentials.
"""

from __future__ import annotations

import torch

from cuda_matmul import build
from cuda_matmul.ladder import get

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_inputs(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, rung: int | str, beta: float) -> None:
    r = get(rung)
    for name, t in (("A", a), ("B", b)) + ((("C", c),) if c is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    want = DTYPES[r.dtype]
    for name, t in (("A", a), ("B", b)):
        if t.dtype != want:
            raise TypeError(f"rung {r.label} takes {want} A and B; {name} is {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (row-major); call .contiguous() first")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"A is {tuple(a.shape)} and B is {tuple(b.shape)}: inner dimensions {a.shape[1]} != {b.shape[0]}"
        )
    if c is None:
        if beta != 0.0:
            raise ValueError("beta != 0 needs a C to accumulate into")
    else:
        if c.dtype != torch.float32:
            raise TypeError(f"C must be float32 (all rungs accumulate and write fp32), got {c.dtype}")
        if tuple(c.shape) != (a.shape[0], b.shape[1]):
            raise ValueError(f"C is {tuple(c.shape)}, but A @ B is {(a.shape[0], b.shape[1])}")
        if not c.is_contiguous():
            raise ValueError("C must be contiguous (row-major)")
    devices = {t.device for t in (a, b, c) if t is not None}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise ValueError(f"A, B and C must be on one CUDA device; got {sorted(str(d) for d in devices)}")


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    rung: int | str,
    c: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    check_inputs(a, b, c, rung, beta)
    if c is None:
        c = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=torch.float32)
    build.load()
    torch.ops.cuda_matmul.gemm(get(rung).number, a, b, c, float(alpha), float(beta))
    return c
