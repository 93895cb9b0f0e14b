"""Both quantized operands of a layer's input X from one read of X (the kernel path).

A quantized linear layer's X feeds two GEMMs:
  fprop  Q(X T_f)    blocked along in_features   (T_f: fprop's Hadamard, along in_features)
  wgrad  Q(T_w^T X)  blocked along tokens        (T_w: wgrad's Hadamard, along tokens)
On the kernel path the forward pass makes both (wgrad's is saved for backward as 4-bit
codes). The fused Triton quantizer (``row_col_quantize``) loads each tile of X once and writes
both, bit for bit what the two separate quantizations write: the same butterfly transform as
the reference Hadamard, the same tensor amaxes, the same Philox bits.

It applies when both operands are quantized to the same format with the same rounding (they
are in every FP4 preset: wgrad's X is the activation operand), each Hadamard is 0, 16, 32,
64 or 128, the Triton backend runs on the device, and tokens and in_features are multiples
of the tile (the largest of 16, the block and both Hadamard sizes). Otherwise X is quantized
twice, and ``fusion_blocker`` says why.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import ops
from .distributed import data_parallel_max
from .library import format_from_json

FUSABLE_HADAMARD = (0, 16, 32, 64, 128)


def fusion_blocker(plan, tokens: int, in_f: int, device_type: str) -> Optional[str]:
    """Why X's fprop and wgrad operands cannot come from one fused pass, or None."""
    fx, wx = plan.operands[0], plan.operands[5]
    if fx.kind != "quant" or wx.kind != "quant":
        return "an X operand is not quantized"
    if plan.backend not in ("auto", "triton"):
        return f"backend={plan.backend!r} (the fused quantizer is a Triton kernel)"
    try:
        ops.resolve("row_col_quantize", "triton", torch.device(device_type))
    except ops.BackendUnavailable as e:
        return f"no Triton on {device_type}: {e}"
    f_fmt, w_fmt = format_from_json(fx.fmt_json), format_from_json(wx.fmt_json)
    if f_fmt.replace(axis=-1) != w_fmt.replace(axis=-1):
        return "fprop and wgrad quantize X to different formats"
    if (fx.rounding, fx.sr_clipping, fx.amax_sync) != (wx.rounding, wx.sr_clipping, wx.amax_sync):
        return "fprop and wgrad round X differently"
    if fx.rounding == "ms_eden":
        return "MS-EDEN scales are corrected in a separate pass"
    if f_fmt.block_2d or f_fmt.scale.kind == "fp32":
        return "X has 2-D blocks or fp32 scales"
    h_f, h_w = plan.hadamard[0][0], plan.hadamard[2][0]
    if h_f not in FUSABLE_HADAMARD or h_w not in FUSABLE_HADAMARD:
        return f"Hadamard sizes {h_f} (fprop) and {h_w} (wgrad); the fused quantizer takes {FUSABLE_HADAMARD}"
    from ._backends.triton import row_col_tile
    n = row_col_tile(f_fmt, h_f, h_w)
    if tokens % n or in_f % n:
        return f"{tokens} tokens x {in_f} features are not multiples of the {n}-element tile"
    return None


def fused_x_operands(x: torch.Tensor, plan, rng: torch.Tensor, offsets, hadamard_seeds):
    """(fprop's Q(X T_f), wgrad's Q(T_w^T X)) from one pass; ``offsets``: the call's Philox
    offsets per slot; ``hadamard_seeds``: (fprop, wgrad) sign seeds, None where unrandomized."""
    fx = plan.operands[0]
    fmt = format_from_json(fx.fmt_json).replace(axis=-1)
    seed, offset = rng.tolist()
    fn = ops.resolve("row_col_quantize", "triton", x.device)
    return fn(x, fmt, fx.rounding, seed=seed, offset_row=offset + offsets[0], offset_col=offset + offsets[5],
              row_hadamard=(plan.hadamard[0][0], hadamard_seeds[0]), col_hadamard=(plan.hadamard[2][0], hadamard_seeds[1]),
              amax_reduce=data_parallel_max if fx.amax_sync else None, sr_clipping=fx.sr_clipping)
