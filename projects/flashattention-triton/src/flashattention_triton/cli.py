"""`flashattention-triton bench` (through the shared harness) and `flashattention-triton build`."""

from __future__ import annotations

from mlsys_bench.cli import project_main


def _build() -> str:
    import torch

    from flashattention_triton import attention

    if not torch.cuda.is_available():
        return "nothing to build ahead of time: Triton compiles each kernel on first use (needs a CUDA GPU)"
    q = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    attention(q, q, q, causal=True).sum().backward()
    return "compiled and autotuned the forward and backward kernels for head_dim 64 (cached by Triton)"


def main(argv: list[str] | None = None) -> int:
    return project_main("flashattention-triton", _build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
