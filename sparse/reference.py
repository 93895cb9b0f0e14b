"""The executable spec of the fused masked-Adam steps (AdamS for CAST, AST's AdamW).

Every backend (this reference, C++ CPU, Triton) computes, element by element in fp32 and
in this order (no fused multiply-add), with the scalar coefficients rounded to fp32 once
on the host (``StepScalars``):

    w1  = w * c_wd                                   c_wd = 1 - lr * weight_decay
    m'  = m * beta1 + g * c1                          c1 = 1 - beta1
    d   = m'                                          where mask (kept)
    d   = m' * c_a + sign(w) * c_l     (AdamS)        c_a = 1 - t/T, c_l = (t/T) * lambda
    d   = m' + w * c_l                 (AST AdamW)    c_l = lambda_t
                                                      where not mask (pruned)
    v'  = v * beta2 + (d * d) * c2                    c2 = 1 - beta2   (masked parameters)
    v'  = v * beta2 + (g * g) * c2                    (no mask: textbook AdamW, d = m')
    w'  = w1 - ((d * ibc1) / (sqrt(v' * ibc2) + eps)) * lr   ibc_i = 1 / (1 - beta_i^t)

sqrt is correctly rounded (IEEE).  The bias corrections are multiplications by host-rounded reciprocals (torch divides
by a scalar that way too); the one tensor division is IEEE.  sign(0) = 0, and ``w`` in d is the weight before the decoupled decay.  m stores the raw
gradient momentum m'; d (the decayed direction) feeds v and the update only.  For masked
parameters v follows d (the momentum), as docs/sparse.md writes AdamS and AST's AdamW;
a parameter with no mask (dense groups of the same optimizer) gets AdamW, v from g.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowprec.reference.arith import f32, sqrt_rn  # noqa: F401  (re-exported)

MODES = {"adams": 0, "ast": 1}


@dataclass(frozen=True)
class StepScalars:
    """The fp32-rounded coefficients of one step (shared by every backend)."""
    mode: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    c_wd: float
    c1: float
    c2: float
    c_a: float
    c_l: float
    ibc1: float
    ibc2: float

    @classmethod
    def make(cls, mode: str, step: int, lr: float, beta1: float, beta2: float, eps: float,
             weight_decay: float, lam: float, progress: float) -> "StepScalars":
        """``progress``: t/T for AdamS (clamped to [0, 1]), min(t/T_ramp, 1) for AST."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        if step < 1:
            raise ValueError(f"step counts from 1, got {step}")
        a = min(max(progress, 0.0), 1.0)
        c_a, c_l = (1.0 - a, a * lam) if mode == "adams" else (1.0, lam * a)
        return cls(MODES[mode], f32(lr), f32(beta1), f32(beta2), f32(eps), f32(1.0 - lr * weight_decay),
                   f32(1.0 - beta1), f32(1.0 - beta2), f32(c_a), f32(c_l),
                   f32(1.0 / (1.0 - beta1 ** step)), f32(1.0 / (1.0 - beta2 ** step)))


def masked_adam_step_(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor, s: StepScalars) -> None:
    """In place on fp32 ``w``, ``m``, ``v``; ``g`` fp32, ``mask`` bool (True = kept) or None."""
    w1 = w * s.c_wd
    m_new = m * s.beta1 + g * s.c1
    if mask is None:
        v_new = v * s.beta2 + (g * g) * s.c2
        den = sqrt_rn(v_new * s.ibc2) + s.eps
        w.copy_(w1 - ((m_new * s.ibc1) / den) * s.lr)
        m.copy_(m_new)
        v.copy_(v_new)
        return
    if s.mode == 0:
        d_pruned = m_new * s.c_a + torch.sign(w) * s.c_l
    else:
        d_pruned = m_new + w * s.c_l
    d = torch.where(mask, m_new, d_pruned)
    v_new = v * s.beta2 + (d * d) * s.c2
    den = sqrt_rn(v_new * s.ibc2) + s.eps
    w.copy_(w1 - ((d * s.ibc1) / den) * s.lr)
    m.copy_(m_new)
    v.copy_(v_new)
