"""`custom-gelu bench` (through the shared harness) and `custom-gelu build`."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="custom-gelu", description="GELU as a PyTorch extension.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the benchmark (same as `mlsys bench custom-gelu`)")
    b.add_argument("--scale", choices=("auto", "gpu", "cpu"), default="auto")
    b.add_argument("--tables", action="store_true")
    sub.add_parser("build", help="compile the extension (cached) and say whether it has the CUDA kernels")
    args = ap.parse_args(argv)
    if args.command == "build":
        from custom_gelu import build

        print("built with CUDA kernels" if build.load(verbose=True) else "built for the CPU only (no CUDA toolkit)")
        return 0
    from mlsys_bench.cli import main as mlsys

    return mlsys(["bench", "custom-gelu", "--scale", args.scale, *(["--tables"] if args.tables else [])])


if __name__ == "__main__":
    raise SystemExit(main())
