"""Autograd for masked weights: forward W ⊙ M, straight-through backward.

    W_s = W ⊙ M                      (forward)
    dL/dW = dL/dW_s + λ_w (1 − M) ⊙ W    (backward; λ_w > 0 is SR-STE, λ_w = 0 plain STE)

The decay uses the boolean complement of a bool mask (never ``~`` of an integer mask,
which is −M−1 and would decay kept weights with the wrong sign).
"""

from __future__ import annotations

import torch


class MaskedWeightSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float):
        if mask.dtype != torch.bool:
            raise TypeError(f"masks are bool, got {mask.dtype}")
        ctx.decay = float(decay)
        if ctx.decay:
            ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        if not ctx.decay:
            return grad, None, None
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * torch.logical_not(mask) * weight, None, None


def masked_weight(weight: torch.Tensor, mask: torch.Tensor, decay: float = 0.0) -> torch.Tensor:
    """W ⊙ M with a straight-through gradient (plus SR-STE decay when ``decay`` > 0)."""
    return MaskedWeightSTE.apply(weight, mask, decay)
