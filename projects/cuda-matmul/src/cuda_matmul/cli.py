"""`cuda-matmul bench` (the ladder through the shared harness) and `cuda-matmul build` (compile only)."""

from __future__ import annotations

from mlsys_bench.cli import project_main


def _build() -> str:
    import torch

    from cuda_matmul import build

    build.load(verbose=True)
    return f"built: {torch.ops.cuda_matmul.gemm}"


def main(argv: list[str] | None = None) -> int:
    return project_main("cuda-matmul", _build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
