"""The ``masked_adam_step_`` op in lowprec's backend table: reference, C++ CPU, Triton.

``masked_adam_step(w, g, m, v, mask, scalars, backend)`` updates fp32 ``w``, ``m``, ``v``
in place (see sparse/reference.py for the exact arithmetic).  ``mask=None`` is a dense
parameter (plain AdamW).
"""

from __future__ import annotations

from typing import Optional

import torch

from lowprec import ops

from .reference import StepScalars, masked_adam_step_ as _reference_step

OP = "masked_adam_step_"


def _scalar_list(s: StepScalars):
    return [s.lr, s.beta1, s.beta2, s.eps, s.c_wd, s.c1, s.c2, s.c_a, s.c_l, s.ibc1, s.ibc2]


def _check(w, g, m, v, mask):
    for t in (w, m, v):
        if t.dtype != torch.float32:
            raise TypeError(f"masked Adam keeps fp32 master weights and moments, got {t.dtype}")
    if g.shape != w.shape or m.shape != w.shape or v.shape != w.shape:
        raise ValueError("weight, gradient and moments must have one shape")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != w.shape):
        raise ValueError("the mask must be bool with the weight's shape")


@ops.register(OP, "reference")
def reference_step(w, g, m, v, mask, s: StepScalars):
    _reference_step(w, g.float(), m, v, mask, s)


@ops.register(OP, "cpp")
def cpp_step(w, g, m, v, mask, s: StepScalars):
    if w.device.type != "cpu" or not (w.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
        raise ops.BackendUnavailable("backend 'cpp' masked_adam_step_ takes contiguous CPU tensors")
    torch.ops.lowprec.masked_adam_step_(w, g.float().contiguous(), m, v,
                                        None if mask is None else mask.contiguous(), s.mode, _scalar_list(s))


_TRITON_BLOCK = 1024


@ops.register(OP, "triton")
def triton_step(w, g, m, v, mask, s: StepScalars):
    if not (w.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
        raise ops.BackendUnavailable("backend 'triton' masked_adam_step_ takes contiguous tensors")
    import triton

    from .triton_adam import masked_adam_kernel
    k = mask.contiguous().view(torch.int8) if mask is not None else w.new_empty(0, dtype=torch.int8)
    n = w.numel()
    masked_adam_kernel[(triton.cdiv(n, _TRITON_BLOCK),)](
        w, g.float().contiguous(), m, v, k, n, *_scalar_list(s),
        MODE=s.mode, HAS_MASK=mask is not None, BLOCK=_TRITON_BLOCK,
        enable_fp_fusion=False)                  # a*b + c must round twice, as in the reference


def masked_adam_step(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor], scalars: StepScalars, backend: str = "auto") -> None:
    _check(w, g, m, v, mask)
    ops.resolve(OP, backend, w.device)(w, g, m, v, mask, scalars)
