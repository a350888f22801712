"""`custom-gelu bench` (through the shared harness) and `custom-gelu build`."""

from __future__ import annotations

from mlsys_bench.cli import project_main


def _build() -> str:
    from custom_gelu import build

    return "built with CUDA kernels" if build.load(verbose=True) else "built for the CPU only (no CUDA toolkit)"


def main(argv: list[str] | None = None) -> int:
    return project_main("custom-gelu", _build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
