"""The torch.library wiring: fake (meta) implementations so torch.compile can trace the ops without
running them, and autograd formulas so gradients flow through them. The kernels come from C++."""

from __future__ import annotations

import torch

from custom_gelu import build

build.load()
NS = torch.ops.custom_gelu


@torch.library.register_fake("custom_gelu::gelu_fwd")
def _(x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("custom_gelu::gelu_bwd")
def _(grad, x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("custom_gelu::bias_gelu_fwd")
def _(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("custom_gelu::bias_gelu_bwd")
def _(grad, x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bias)


# excerpt: autograd
def _gelu_setup(ctx, inputs, output):
    x, approximate = inputs
    ctx.save_for_backward(x)  # recompute gelu'(x) in the backward rather than store a second tensor
    ctx.approximate = approximate


def _gelu_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return NS.gelu_bwd(grad.contiguous(), x, ctx.approximate), None


torch.library.register_autograd("custom_gelu::gelu_fwd", _gelu_backward, setup_context=_gelu_setup)
# end-excerpt


def _bias_setup(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _bias_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    dx, db = NS.bias_gelu_bwd(grad.contiguous(), x, bias, ctx.approximate)
    return dx, db, None


torch.library.register_autograd("custom_gelu::bias_gelu_fwd", _bias_backward, setup_context=_bias_setup)
