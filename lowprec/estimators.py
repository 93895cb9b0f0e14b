"""Gradient estimators for a block quantizer f(x) = s * R(x / s), as the diagonal factor
df_i/dx_i that multiplies the incoming gradient.

- ``ste``: 1 (straight-through).
- ``clipped_ste``: 1 where |x| <= elem_max * s, 0 where the element saturated.
- ``scale_grad``: Proposition 1 of Hu, Luschi & Balanca, "Elucidating the Design Space of
  FP4 training" (2025): with the paper's inverse scale s_q = q(elem_max / amax) and
  straight-through derivatives for R and for the scale quantizer q,
      df_i/dx_i = 1 + (d s/d x_i) * (x_i / s_q - R(s_q x_i) / s_q^2).
  d s/d x_i = -elem_max sign(x_i) / amax^2 on the element that holds the block's amax and
  0 elsewhere.  In our notation (s_eff = 1 / s_q, x_hat = s_eff R(x / s_eff)):
      df_i/dx_i = 1 - [|x_i| = amax] * elem_max * s_eff * sign(x_i) * (x_i - x_hat_i) / amax^2.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("ste", "clipped_ste", "scale_grad")


def grad_factor(estimator: str, x: torch.Tensor, x_hat: torch.Tensor, s_eff: torch.Tensor,
                amax: torch.Tensor, elem_max: float) -> torch.Tensor:
    """df/dx per element (fp32, x's shape); an empty tensor for ``ste`` (factor 1)."""
    if estimator == "ste":
        return x.new_empty(0, dtype=torch.float32)
    x = x.to(torch.float32)
    if estimator == "clipped_ste":
        inside = (x.abs() <= elem_max * s_eff) | (s_eff == 0)
        return inside.to(torch.float32)
    if estimator == "scale_grad":
        is_max = (x.abs() == amax) & (amax > 0)
        safe = torch.where(amax > 0, amax, torch.ones_like(amax))
        term = elem_max * s_eff * torch.sign(x) * (x - x_hat) / (safe * safe)
        return 1.0 - torch.where(is_max, term, torch.zeros_like(term))
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
