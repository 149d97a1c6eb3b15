"""Sparse activation functions for transcoders.

Every function here is ``pre_acts * mask`` for a 0/1 mask, so once the mask is
frozen for a prompt a feature is linear in its pre-activation: that is what
makes attribution exact.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - θ), with a straight-through estimate of dL/dθ (Rajamanoharan et al. 2024).

    The step's derivative is zero almost everywhere; a rectangle kernel of width
    ``bandwidth`` around θ gives the threshold a gradient that trades
    reconstruction against sparsity.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        grad_threshold = -(threshold / bw) * near * grad_out
        # Sum over every leading (batch) dimension the threshold was broadcast across.
        grad_threshold = grad_threshold.reshape(-1, *threshold.shape).sum(0)
        return grad_pre, grad_threshold, None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float = 0.1) -> Tensor:
    """JumpReLU with a trainable ``threshold`` broadcast over the trailing dims of ``pre``."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step_l0(pre: Tensor, threshold: Tensor, bandwidth: float = 0.1) -> Tensor:
    """Differentiable count of active features, H(pre - θ), with the same straight-through trick."""
    return _Step.apply(pre, threshold, bandwidth)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        grad_threshold = (-(1.0 / bw) * near * grad_out).reshape(-1, *threshold.shape).sum(0)
        return None, grad_threshold, None


def topk(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest positive pre-activations in the last dim; zero the rest."""
    # Top k first, then ReLU on the k values: the same result without a full-size ReLU copy.
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, values.relu())


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k * n_tokens`` largest positive pre-activations across the batch (Bussmann et al. 2024).

    ``pre``: [n_tokens, ..., d_features]; the budget is shared over tokens but not over
    the middle dims (layers), so every layer keeps k features per token on average.
    """
    n_tokens = pre.shape[0]
    flat = pre.relu().movedim(0, -2).flatten(-2)  # [..., n_tokens * d_features]
    values, idx = flat.topk(min(k * n_tokens, flat.shape[-1]), dim=-1)
    kept = torch.zeros_like(flat).scatter(-1, idx, values)
    return kept.unflatten(-1, (n_tokens, pre.shape[-1])).movedim(-2, 0)
