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
Results agree within the docs/numerics.md GEMM bound (summation order differs).
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
        if n.shape != w.shape:
            raise ValueError(f"the update has shape {tuple(n.shape)}, the weight {tuple(w.shape)}")
        w.mul_(c_wd).add_(n, alpha=-coef)
        return
    a, b = ab
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] or (a.shape[0], b.shape[1]) != tuple(w.shape):
        raise ValueError(f"the projected update A @ B ({tuple(a.shape)} @ {tuple(b.shape)}) does not have the "
                         f"weight's shape {tuple(w.shape)}")
    fn = ops.resolve(OP, backend, w.device)
    if w.is_contiguous():
        fn(w, a.float().contiguous(), b.float().contiguous(), float(coef), float(c_wd))
        return
    # the kernels index a dense row-major weight: update a contiguous copy (a transposed
    # parameter would otherwise get its update in the wrong elements) and write it back
    wc = w.contiguous()
    fn(wc, a.float().contiguous(), b.float().contiguous(), float(coef), float(c_wd))
    w.copy_(wc)


@ops.register(OP, "cpp")
def cpp_update(w, a, b, coef, c_wd):
    if w.device.type != "cpu" or not w.is_contiguous():
        raise ops.BackendUnavailable("backend 'cpp' galore_update_ takes a contiguous CPU weight")
    torch.ops.lowprec.galore_update_(w, a, b, coef, c_wd)


@ops.register(OP, "triton")
def triton_update(w, a, b, coef, c_wd):
    from ..triton.galore import launch_update
    launch_update(w, a, b, coef, c_wd)


# -- a projector stored microscaled (Q-GaLore style), read from its codes --------------------
# galore_project_q(g, q, side) -> R, and galore_update_q_(w, q, n, side, coef, c_wd): the
# projection and the fused update with P given as a lowprec QuantizedTensor (left: P is
# m × r, right: r × n).  reference and cpp dequantize P (their own dequantize kernels) and
# multiply; triton decodes the codes inside the GEMM loop, so P never exists in fp32.

PROJECT_Q, UPDATE_Q = "galore_project_q", "galore_update_q_"


def _project(p, g, side):
    return p.T @ g if side == "left" else g @ p.T


def _dequantized(q, backend):
    return ops.resolve("dequantize", backend, q.device)(q, torch.float32)


def _register_dequantizing(backend: str, update) -> None:
    """``backend`` dequantizes P with its own kernel, then projects / updates in fp32."""
    def project(g, q, side):
        return _project(_dequantized(q, backend), g.float(), side)

    def update_(w, q, n, side, coef, c_wd):
        p = _dequantized(q, backend)
        update(w, *((p, n) if side == "left" else (n, p)), coef, c_wd)

    ops.register(PROJECT_Q, backend)(project)
    ops.register(UPDATE_Q, backend)(update_)


_register_dequantizing("reference", reference_update)
_register_dequantizing("cpp", cpp_update)


@ops.register(PROJECT_Q, "triton")
def triton_project_q(g, q, side):
    from ..triton.galore import launch_project_q
    return launch_project_q(g, q, side)


@ops.register(UPDATE_Q, "triton")
def triton_update_q(w, q, n, side, coef, c_wd):
    from ..triton.galore import launch_update_q
    launch_update_q(w, n, q, side == "left", coef, c_wd)


def _check_side(side):
    if side not in ("left", "right"):
        raise ValueError(f"a stored microscaled projector is supported for left and right projections, got {side!r}")


def galore_project_q(g: torch.Tensor, q, side: str, backend: str = "auto") -> torch.Tensor:
    _check_side(side)
    return ops.resolve(PROJECT_Q, backend, g.device)(g, q, side)


def galore_update_q_(w: torch.Tensor, q, n: torch.Tensor, side: str, coef: float, c_wd: float,
                     backend: str = "auto") -> None:
    if w.dtype != torch.float32:
        raise TypeError(f"GaLore updates fp32 weights (master copies for others), got {w.dtype}")
    _check_side(side)
    ops.resolve(UPDATE_Q, backend, w.device)(w, q, n.float().contiguous(), side, float(coef), float(c_wd))
