"""The projected weight update  W ← c_wd · W − coef · project_back(N),  coef = lr · α.

left:  project_back(N) = P N   (P: m × r, N: r × n)
right: project_back(N) = N P   (N: m × r, P: r × n)
full:  P_l (N P_r);  identity: N.
Both are one GEMM A (m × k) @ B (k × n) subtracted from W in place.  Backends:
- reference: the fp32 matmul, then the update (materializes A @ B);
- cpp: row tiles of W, each tile's product computed into a small buffer and applied at
  once (never the full m × n update);
- triton: one kernel, the product accumulated in registers per output tile and applied in
  the epilogue; a second kernel reads a microscaled projector (element codes, FP4 packed
  two per byte, and block scales) directly.
Results agree within the NUMERICS.md GEMM bound (summation order differs).
"""

from __future__ import annotations

import torch

from .. import ops

OP = "galore_update_"


@ops.register(OP, "reference")
def reference_update(w, a, b, coef, c_wd):
    w.mul_(c_wd).sub_(coef * (a.float() @ b.float()))


def _operands(proj, n):
    """(A, B) with project_back(N) = A @ B, or None for the identity projector."""
    if proj.identity:
        return None
    if proj.side == "left":
        return proj.p, n
    if proj.side == "right":
        return n, proj.p
    return proj.p, n @ proj.p_right


def galore_update_(w: torch.Tensor, proj, n: torch.Tensor, coef: float, c_wd: float, backend: str = "auto"):
    if w.dtype != torch.float32:
        raise TypeError(f"GaLore updates fp32 weights (master copies for others), got {w.dtype}")
    ab = _operands(proj, n)
    if ab is None:
        w.mul_(c_wd).add_(n, alpha=-coef)
        return
    a, b = ab
    ops.resolve(OP, backend, w.device)(w, a.float().contiguous(), b.float().contiguous(), float(coef), float(c_wd))


@ops.register(OP, "cpp")
def cpp_update(w, a, b, coef, c_wd):
    if w.device.type != "cpu" or not w.is_contiguous():
        raise ops.BackendUnavailable("backend 'cpp' galore_update_ takes a contiguous CPU weight")
    torch.ops.lowprec.galore_update_(w, a, b, coef, c_wd)


@ops.register(OP, "triton")
def triton_update(w, a, b, coef, c_wd):
    from ..triton.galore import launch_update
    launch_update(w, a, b, coef, c_wd)
