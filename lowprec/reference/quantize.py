"""Reference block quantization: the executable spec of docs/numerics.md.

quantize(x):
  1. x -> fp32, permuted/padded into blocks (``blocking``); amax_b = max |x| per block.
  2. S_enc = (scale_max * elem_max) / amax_tensor if the format has a tensor scale, else 1;
     amax_tensor is over the finite elements, S_enc is clamped to the largest finite fp32.
  3. scale code = rule(amax_b, S_enc) (``scales``; with ``scale_statistic="gaussian"`` the
     block's Gaussian clipping value replaces amax_b; a ``pre_scale`` p is a fixed S_enc = p); with Four Over Six the better of the codes
     mapping amax_b to 6 and to 4 (``scales.four_over_six_codes``); s_b = decode(code) / S_enc.
  4. x_scaled = x / s_b (0 where s_b == 0; with ``division="reciprocal"`` the divisions of
     steps 3-4 are multiplications by fp32 reciprocals, see ``scales``), rounded on the element grid (nearest, stochastic
     with the Philox bytes of each element's row-major index in the original tensor, or
     toward zero), saturated at ±elem_max; NaN in the scaled value -> the element's NaN
     code, or 0 where it has none (the block's NaN scale still marks it).
dequantize: elem_value(code) * s_b, cropped back to the original shape.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantFormat, get_format
from ..tensor import QuantizedTensor, pack_nibbles, unpack_nibbles
from .checks import check_quantize_call
from ..blocking import BlockLayout, from_blocks, from_stored, make_layout, to_blocks, to_stored
from .philox import random_bytes
from .rounding import ROUNDING_MODES, grid_to_code, round_to_grid
from .scales import (compute_scale_codes, decode_scales, effective_scale, finite_amax, four_over_six_codes,
                     gaussian_statistic, scale_elements, tensor_encode_scale)

F32 = torch.float32


def encode_scale(x_blocks: torch.Tensor, fmt: QuantFormat, amax_tensor: Optional[torch.Tensor] = None):
    """S_enc: the tensor scale from the tensor amax, the fixed ``pre_scale``, or 1."""
    if fmt.tensor_scale:
        if amax_tensor is None:
            amax_tensor = finite_amax(x_blocks)
        return tensor_encode_scale(amax_tensor, fmt)
    return torch.full((), fmt.pre_scale, dtype=F32, device=x_blocks.device)


def block_statistic(x_blocks: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """What each block's scale maps to the element max: its amax, or with
    ``scale_statistic="gaussian"`` its Gaussian clipping value (``scales.gaussian_statistic``)."""
    amax = x_blocks.abs().amax(dim=-1)
    if fmt.scale_statistic == "gaussian":
        return gaussian_statistic(x_blocks, amax, fmt.gaussian_kappa)
    return amax


def block_scales(x_blocks: torch.Tensor, fmt: QuantFormat, amax_tensor: Optional[torch.Tensor] = None):
    """(scale codes, S_enc, effective fp32 scale per block) for fp32 blocks."""
    amax = block_statistic(x_blocks, fmt)
    s_enc = encode_scale(x_blocks, fmt, amax_tensor)
    codes = compute_scale_codes(amax, fmt, s_enc)
    if fmt.four_over_six != "off":
        codes = four_over_six_codes(x_blocks, amax.to(F32), codes, fmt, s_enc)
    s_eff = effective_scale(decode_scales(codes, fmt.scale), fmt, s_enc if fmt.encode_scaled else None)
    return codes, s_enc, s_eff


def encode_elements(x_scaled: torch.Tensor, fmt: QuantFormat, rounding: str,
                    rand: Optional[torch.Tensor]) -> torch.Tensor:
    """Element codes (uint8) of already-scaled fp32 values."""
    e = fmt.element
    v = round_to_grid(x_scaled, e.ebits, e.mbits, e.bias, e.max, rounding, rand)
    code = grid_to_code(v, e.ebits, e.mbits, e.bias)
    if e.nan_code is not None:
        code = torch.where(torch.isnan(v), torch.full_like(code, e.nan_code), code)
    else:
        code = torch.where(torch.isnan(v), torch.zeros_like(code), code)
    return code.to(torch.uint8)


def scaled_blocks(x: torch.Tensor, fmt: QuantFormat, rounding: str, seed, offset: int, strict: bool,
                  nan_policy: str, amax_tensor: Optional[torch.Tensor]):
    """Steps 1-3 and the scaling of step 4 for an already checked call: (layout, scale codes,
    S_enc, s_eff per block, x_scaled blocks, random bytes in block layout or None)."""
    layout = make_layout(x.shape, fmt, strict)
    xb = to_blocks(to_stored(x.to(F32), layout), layout)
    scale_codes, s_enc, s_eff = block_scales(xb, fmt, amax_tensor)
    x_scaled = scale_elements(xb, s_eff.unsqueeze(-1), fmt)
    rand = None
    if rounding == "stochastic":
        r = random_bytes(seed, offset, x.numel(), device=x.device).reshape(x.shape)
        rand = to_blocks(to_stored(r, layout), layout)
    return layout, scale_codes, s_enc, s_eff, x_scaled, rand


def quantize(x: torch.Tensor, fmt="mxfp4", rounding: str = "nearest", seed: Optional[int] = None,
             offset: int = 0, strict: bool = False, nan_policy: str = "propagate",
             amax_tensor: Optional[torch.Tensor] = None, sr_clipping: bool = False) -> QuantizedTensor:
    """Block-quantize ``x`` (see module docstring).  ``amax_tensor`` overrides the tensor
    amax used for S_enc (e.g. a delayed or all-reduced amax).  Stochastic rounding runs with
    the format's non-clipping scale unless ``sr_clipping`` (``formats.effective_format``).
    ``rounding="ms_eden"``: round-to-nearest elements, unbiased stochastic block scales
    (``reference.ms_eden``)."""
    if rounding == "ms_eden":
        from . import ms_eden
        from .philox import random_bytes as philox_bytes
        check_quantize_call(x, fmt, "stochastic", seed, offset, nan_policy, False, amax_tensor)
        return ms_eden.quantize(quantize, philox_bytes, x, fmt, seed, offset, strict, nan_policy, amax_tensor)
    fmt = check_quantize_call(x, fmt, rounding, seed, offset, nan_policy, sr_clipping, amax_tensor)
    layout, scale_codes, s_enc, _, x_scaled, rand = scaled_blocks(x, fmt, rounding, seed, offset, strict,
                                                                  nan_policy, amax_tensor)
    codes = from_blocks(encode_elements(x_scaled, fmt, rounding, rand), layout)
    if fmt.element.bits == 4:
        codes = pack_nibbles(codes)
    return QuantizedTensor(codes.contiguous(), scale_codes.contiguous(),
                           s_enc if fmt.encode_scaled else None, fmt, x.shape, x.dtype,
                           layout.axis)


def layout_of(q: QuantizedTensor) -> BlockLayout:
    return make_layout(q.shape, q.fmt)


def dequantize(q: QuantizedTensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """elem_value(code) * decode(scale) / S_enc, cropped to the original shape."""
    layout = layout_of(q)
    codes = unpack_nibbles(q.codes) if q.packed else q.codes
    values = q.fmt.element.table(codes.device)[codes.to(torch.int64)]
    s_eff = effective_scale(decode_scales(q.scales, q.fmt.scale), q.fmt, q.tensor_scale)
    xb = to_blocks(values, layout) * s_eff.unsqueeze(-1)
    return from_stored(from_blocks(xb, layout), layout).to(dtype or q.dtype)


def quantize_dequantize(x: torch.Tensor, fmt="mxfp4", **kw) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype."""
    return dequantize(quantize(x, fmt, **kw))
