"""Tile shapes the autotuner tries, per kernel and head dim, chosen for Hopper (228 KB of shared memory
per SM, 64K registers, wgmma wants 64-row warpgroup tiles).

Under the Triton interpreter (TRITON_INTERPRET=1, how the CPU tests run) every kernel gets one 16x16
tile: the interpreter is slow, 16 is the smallest tile `tl.dot` takes, and small tiles make the tests'
short sequences cover many tiles, ragged edges and the causal band.
"""

from __future__ import annotations

import os

import triton

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M is always the query-row tile
FORWARD = {
    32: [(128, 64, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 64, 4, 3)],
    128: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3)],
    256: [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
}
# the dK/dV kernel owns BLOCK_N keys and streams BLOCK_M query rows past them
BACKWARD_DKDV = {
    32: [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3)],
    64: [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3)],
    128: [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3)],
    256: [(32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2)],
}
# the dQ kernel owns BLOCK_M query rows and streams BLOCK_N keys past them
BACKWARD_DQ = {
    32: [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    64: [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
    128: [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
    256: [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2)],
}
INTERPRETER = (16, 16, 1, 1)
HEAD_DIMS = tuple(FORWARD)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(table: dict[int, list[tuple[int, int, int, int]]]) -> list[triton.Config]:
    shapes = [INTERPRETER] if interpreting() else sorted({s for shapes in table.values() for s in shapes})
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


def forward_configs() -> list[triton.Config]:
    return _configs(FORWARD)


def backward_dkdv_configs() -> list[triton.Config]:
    return _configs(BACKWARD_DKDV)


def backward_dq_configs() -> list[triton.Config]:
    return _configs(BACKWARD_DQ)


def _pruner(table: dict[int, list[tuple[int, int, int, int]]]):
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if interpreting():
            return configs
        d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        wanted = set(table[d])
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
        return kept or configs[:1]

    return prune


prune_forward = _pruner(FORWARD)
prune_backward_dkdv = _pruner(BACKWARD_DKDV)
prune_backward_dq = _pruner(BACKWARD_DQ)
