"""`cuda-matmul bench` (the ladder through the shared harness) and `cuda-matmul build` (compile only)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cuda-matmul", description="The SGEMM ladder.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the ladder benchmark (same as `mlsys bench cuda-matmul`)")
    b.add_argument("--scale", choices=("auto", "gpu", "cpu"), default="auto")
    b.add_argument("--tables", action="store_true")
    sub.add_parser("build", help="compile the extension (cached) and print where the op lives")
    args = ap.parse_args(argv)
    if args.command == "build":
        import torch

        from cuda_matmul import build

        build.load(verbose=True)
        print(torch.ops.cuda_matmul.gemm)
        return 0
    from mlsys_bench.cli import main as mlsys

    return mlsys(["bench", "cuda-matmul", "--scale", args.scale, *(["--tables"] if args.tables else [])])


if __name__ == "__main__":
    raise SystemExit(main())
