"""Quantized operands as the FP4 GEMM reads them: 2-D, 1-D blocks along the last axis (K).

``qgemm(A, B)`` computes dequantize(A) @ dequantize(B)^T with both operands blocked along K.
A linear layer's operands come quantized in three layouts, and each maps onto that one
without changing a code or a scale, so the GEMM multiplies exactly the values the reference
quantized:

- 1-D blocks along the last axis: already the GEMM's layout.
- 1-D blocks along axis 0 of an (R, C) matrix: the stored layout moves the block axis last,
  so the codes and scales *are* those of the (C, R) transpose blocked along its last axis.
  This is how dgrad reads W (blocks along out_features) and wgrad reads dY and X (blocks along
  tokens): no data moves.
- 2-D tiles (bs x bs, one scale per tile): each row of a tile row shares the tile's scale, so
  the same values are 1-D blocks along the last axis with each tile scale repeated for its bs
  rows.  The transpose (dgrad's view of a tiled W) transposes the unpacked codes and the scale
  grid first.
"""

from __future__ import annotations

import torch

from .blocking import from_blocks, from_stored, make_layout
from .reference.scales import decode_scales, effective_scale
from .tensor import QuantizedTensor, pack_nibbles


def as_gemm_operand(q: QuantizedTensor, transpose: bool = False) -> QuantizedTensor:
    """``q`` (2-D), or its transpose, as a QuantizedTensor with 1-D blocks along its last axis
    holding the same values: dequantize(result) == dequantize(q) (transposed), bit for bit."""
    if len(q.shape) != 2:
        raise ValueError(f"a GEMM operand is 2-D, got shape {tuple(q.shape)}")
    rows, cols = q.shape
    one_d = q.fmt.replace(axis=-1, block_2d=False)
    if not q.fmt.block_2d:
        if (q.axis == 1) != transpose:      # blocks already run along the GEMM's K
            shape = (cols, rows) if transpose else (rows, cols)
            return QuantizedTensor(q.codes, q.scales, q.tensor_scale, one_d, shape, q.dtype, 1)
        raise ValueError("1-D blocks along the other axis would need re-quantization: the blocks of a "
                         "GEMM operand must run along its reduction axis")
    bs = q.fmt.block_size
    codes = q.element_codes()                       # (R_pad, C_pad)
    scales = q.scales                               # (R_pad / bs, C_pad / bs)
    if transpose:
        codes, scales, rows, cols = codes.t(), scales.t(), cols, rows
    codes = codes[:rows].contiguous()
    scales = scales.repeat_interleave(bs, dim=0)[:rows].contiguous()
    if q.packed:
        codes = pack_nibbles(codes)
    return QuantizedTensor(codes, scales, q.tensor_scale, one_d, (rows, cols), q.dtype, 1)


def element_scales(q: QuantizedTensor) -> torch.Tensor:
    """Every element's s_eff (its block's decoded scale over the tensor scale, fp32) in q's
    shape: the divisor the quantizer used, bit for bit."""
    layout = make_layout(q.shape, q.fmt)
    s = effective_scale(decode_scales(q.scales, q.fmt.scale), q.fmt, q.tensor_scale)
    bs = q.fmt.block_size ** (2 if q.fmt.block_2d else 1)
    blocks = s.reshape(layout.scale_shape).unsqueeze(-1).expand(*layout.scale_shape, bs)
    return from_stored(from_blocks(blocks, layout), layout)


__all__ = ["as_gemm_operand", "element_scales"]
