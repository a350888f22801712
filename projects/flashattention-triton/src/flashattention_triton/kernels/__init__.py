"""Triton kernels: the forward, the backward, and the tile shapes the autotuner tries."""
