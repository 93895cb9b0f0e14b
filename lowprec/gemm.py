"""Quantized GEMM: C = dequantize(A) @ dequantize(B)^T for A (M, K), B (N, K) quantized with
blocks along K.  The reference is the fp32 matmul of the dequantized operands; fast
backends may sum in another order (docs/numerics.md: error against fp64 at most twice the
reference's, plus a small atol)."""

from __future__ import annotations

import torch

from . import ops
from .reference.quantize import dequantize
from .tensor import QuantizedTensor


def check_operands(a: QuantizedTensor, b: QuantizedTensor) -> None:
    for name, q in (("A", a), ("B", b)):
        if len(q.shape) != 2:
            raise ValueError(f"qgemm: {name} must be 2-D, got shape {tuple(q.shape)}")
        if q.fmt.block_2d or q.axis != 1:
            raise ValueError(f"qgemm: {name} must have 1D blocks along K (its last axis)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"qgemm: K differs: A is {tuple(a.shape)}, B is {tuple(b.shape)}")


@ops.register("qgemm", "reference")
def qgemm_reference(a: QuantizedTensor, b: QuantizedTensor, tiles=None) -> torch.Tensor:
    """``tiles`` is a kernel tuning knob of the fast backends; one matmul has none."""
    check_operands(a, b)
    return dequantize(a, torch.float32) @ dequantize(b, torch.float32).t()


def qgemm(a: QuantizedTensor, b: QuantizedTensor, backend: str = "auto", tiles=None) -> torch.Tensor:
    """fp32 C = A_hat @ B_hat^T (A: activations (M, K), B: weights (N, K)).  ``tiles`` =
    (BM, BN, BK) fixes a kernel's tile shape (default: the backend's choice or autotuning);
    it never changes which products are summed, only their order."""
    return ops.resolve("qgemm", backend, a.device)(a, b, tiles=tiles)
