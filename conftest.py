"""Root pytest hooks for every package: `gpu` tests are skipped, with the reason, when CUDA is absent, and
Triton kernels run in Triton's CPU interpreter there.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test module (or the
harness's entry-point discovery, which imports every project) imports a Triton kernel."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in gpu_items:
        item.add_marker(skip)
