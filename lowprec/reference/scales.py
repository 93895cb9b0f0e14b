"""Block scales: from a block's amax to a scale code, and from codes back to values.

e8m0 rules (elem_max = element max, emax = floor(log2(elem_max))), shared exponent
clamped to [-127, 127], code = shared_exp + 127:
  floor:  floor(log2(amax)) - emax                       (OCP MX)
  ceil:   ceil(log2(amax)) - emax                        (amax rounded up to a power of two)
  even:   floor(log2(rne_m(amax))) - emax, rne_m = amax rounded to the element's mantissa
          width (m bits after the point, ties away from zero, like adding half an ulp and
          truncating): the exponent moves up when the block max would round past the binade
  rceil:  ceil(log2(amax / elem_max))                    (nothing clips)
  rfloor: floor(log2(amax / elem_max))                   (QuEST/Quartet, for the Gaussian statistic)
With ``scale_statistic="gaussian"`` every rule reads the block's Gaussian clipping value
(``gaussian_statistic``) where it reads the amax.
amax rule (ue4m3, ue5m3, fp32): scale_hp = (amax / elem_max) * S_enc in fp32 (with
'reciprocal' division amax * (S_enc * fp32(1 / elem_max))), encoded with round-to-nearest-even
(or upward) and saturated at the scale format's max.
A block whose amax is NaN or Inf gets the NaN code (fp32: a NaN scale).
amax = 0 gives the smallest e8m0 scale (elements are then all zero) or a zero scale.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantFormat, ScaleFormat
from .rounding import exp2i, grid_to_code, round_to_grid

F32 = torch.float32


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for finite a > 0, exact (int32); a == 0 gives a very negative number."""
    _, exp = torch.frexp(a)
    return torch.where(a > 0, exp - 1, torch.full_like(exp, -1000))


def _ceil_log2(a: torch.Tensor) -> torch.Tensor:
    m, exp = torch.frexp(a)
    c = torch.where(m == 0.5, exp - 1, exp)
    return torch.where(a > 0, c, torch.full_like(exp, -1000))


FP32_MAX = torch.finfo(torch.float32).max


def finite_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite elements of ``x`` (fp32 scalar; 0 when there are none), so
    that a NaN or Inf never reaches the tensor scale and only its own block is marked."""
    if x.numel() == 0:
        return torch.zeros((), dtype=F32, device=x.device)
    lo, hi = torch.aminmax(x)                 # one pass, no copy: the common, all-finite case
    amax = torch.maximum(-lo, hi).to(F32)
    if bool(torch.isfinite(amax)):
        return amax
    return torch.nan_to_num(x.to(F32), nan=0.0, posinf=0.0, neginf=0.0).abs().amax()


def tensor_encode_scale(amax_tensor: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """S_enc = (scale_max * elem_max) / amax_tensor in fp32 (scale_max * 4 with Four Over
    Six: ``QuantFormat.scale_target``), clamped to the largest finite
    fp32 when the quotient overflows (a tiny tensor keeps its information); 1 when amax is 0
    (or not finite, which callers never pass: the amax is over the finite elements)."""
    amax_tensor = amax_tensor.to(F32)
    s_enc = torch.tensor(fmt.scale.max * fmt.scale_target, dtype=F32, device=amax_tensor.device) / amax_tensor
    s_enc = torch.clamp(s_enc, max=FP32_MAX)
    ok = torch.isfinite(amax_tensor) & (amax_tensor > 0)
    return torch.where(ok, s_enc, torch.ones_like(s_enc))


def reciprocal(t: torch.Tensor) -> torch.Tensor:
    """fp32(1 / t), a correctly rounded division (the reciprocal that 'reciprocal' division uses)."""
    return torch.ones_like(t, dtype=F32) / t.to(F32)


def high_precision_scale(amax: torch.Tensor, fmt: QuantFormat, s_enc: torch.Tensor,
                         target: Optional[float] = None) -> torch.Tensor:
    """The block scale before it is encoded: (amax / t) * S_enc ('ieee'), or
    amax * (S_enc * fp32(1 / t)) ('reciprocal', Transformer Engine's order), with t the
    value the block amax maps to: ``target``, by default the element max."""
    t = fmt.element.max if target is None else target
    if fmt.division == "reciprocal":
        inv_max = reciprocal(torch.tensor(t, dtype=F32, device=amax.device))
        return amax * (s_enc * inv_max)
    return (amax / t) * s_enc


def effective_scale(decoded: torch.Tensor, fmt: QuantFormat, s_enc) -> torch.Tensor:
    """s_eff, the per-block divisor of the elements: decode / S_enc ('ieee') or
    decode * fp32(1 / S_enc) ('reciprocal'); S_enc None (no tensor scale) leaves decode."""
    if s_enc is None:
        return decoded
    if fmt.division == "reciprocal":
        return decoded * reciprocal(s_enc)
    return decoded / s_enc


def scale_elements(x: torch.Tensor, s: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """x / s ('ieee') or x * min(fp32(1 / s), fp32 max) ('reciprocal'); 0 where s == 0."""
    if fmt.division == "reciprocal":
        xs = x * torch.clamp(reciprocal(s), max=FP32_MAX)
    else:
        xs = x / s
    return torch.where(s == 0, torch.zeros_like(xs), xs)


def compute_scale_codes(amax: torch.Tensor, fmt: QuantFormat, s_enc: torch.Tensor,
                        target: Optional[float] = None) -> torch.Tensor:
    """Scale codes (uint8; fp32 values for fp32 scales) for fp32 block amaxes; ``target``:
    the value a minifloat or fp32 scale maps the amax to (default the element max)."""
    amax = amax.to(F32)
    bad = ~torch.isfinite(amax)
    elem = fmt.element
    scale = fmt.scale
    if scale.kind == "e8m0":
        a = torch.where(bad, torch.zeros_like(amax), amax)
        rule = fmt.scale_rule
        if rule == "floor":
            shared = _floor_log2(a) - elem.emax
        elif rule == "ceil":
            shared = _ceil_log2(a) - elem.emax
        elif rule == "even":
            half_ulp = exp2i(_floor_log2(a) - elem.mbits - 1)
            rounded = a + torch.where(a > 0, half_ulp, torch.zeros_like(a))
            # an amax within half an ulp of the fp32 max rounds to 2^128, which overflows fp32
            shared = torch.where(torch.isinf(rounded), 128, _floor_log2(rounded)) - elem.emax
        elif rule == "rceil":
            shared = _ceil_log2(a / elem.max)
        elif rule == "rfloor":
            shared = _floor_log2(a / elem.max)
        else:
            raise ValueError(f"rule {rule!r} is not an e8m0 rule")
        code = torch.clamp(shared, -127, 127) + 127
        code = torch.where(bad, torch.full_like(code, 0xFF), code)
        return code.to(torch.uint8)

    scale_hp = high_precision_scale(amax, fmt, s_enc, target)
    if scale.kind == "fp32":
        return scale_hp
    v = round_to_grid(torch.where(bad, torch.zeros_like(scale_hp), scale_hp),
                      scale.ebits, scale.mbits, scale.bias, scale.max, fmt.scale_rounding)
    code = grid_to_code(v, scale.ebits, scale.mbits, scale.bias, signed=False)
    if scale.has_nan:
        code = torch.where(bad, torch.full_like(code, scale.nan_code), code)
    elif bad.any():
        raise ValueError(f"a block holds NaN or Inf, and {scale!r} scales have no NaN code to mark it")
    return code.to(torch.uint8)


def decode_scales(codes: torch.Tensor, scale: ScaleFormat) -> torch.Tensor:
    """fp32 value of every scale code."""
    if scale.kind == "fp32":
        return codes.to(F32)
    return scale.table(codes.device)[codes.to(torch.int64)]


def pairwise_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim as a pairwise tree in t's dtype: zero-padded to a power of two,
    then (t[2i] + t[2i+1]) level by level. Every backend sums in this order."""
    n = t.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        t = torch.nn.functional.pad(t, (0, width - n))
    while t.shape[-1] > 1:
        pairs = t.reshape(*t.shape[:-1], t.shape[-1] // 2, 2)
        t = pairs[..., 0] + pairs[..., 1]
    return t[..., 0]


def rtn_block_error(x_blocks: torch.Tensor, s_eff: torch.Tensor, fmt: QuantFormat, metric: str) -> torch.Tensor:
    """The round-to-nearest error of each block under its s_eff: d = x - v * s_eff per element
    (v the element grid value of x / s_eff, as quantize and dequantize compute them), summed
    as d * d ("mse") or |d| ("mae") by ``pairwise_sum``, all in fp32."""
    e = fmt.element
    s = s_eff.unsqueeze(-1)
    v = round_to_grid(scale_elements(x_blocks, s, fmt), e.ebits, e.mbits, e.bias, e.max, "nearest", None)
    d = x_blocks - v * s
    return pairwise_sum(d * d if metric == "mse" else d.abs())


def four_over_six_codes(x_blocks: torch.Tensor, amax: torch.Tensor, codes_6: torch.Tensor, fmt: QuantFormat,
                        s_enc: torch.Tensor) -> torch.Tensor:
    """Four Over Six: per block, the scale code mapping the amax to 4 where its
    round-to-nearest error (``rtn_block_error``) is lower than that of ``codes_6``, the code
    mapping it to 6; ties and blocks holding NaN or Inf keep ``codes_6``."""
    from ..formats import FOUR_OVER_SIX_ALT
    codes_4 = compute_scale_codes(amax, fmt, s_enc, target=FOUR_OVER_SIX_ALT)
    enc = s_enc if fmt.tensor_scale else None
    err = [rtn_block_error(x_blocks, effective_scale(decode_scales(c, fmt.scale), fmt, enc), fmt, fmt.four_over_six)
           for c in (codes_6, codes_4)]
    use_4 = (err[1] < err[0]) & torch.isfinite(amax)
    return torch.where(use_4, codes_4, codes_6)


def gaussian_statistic(x_blocks: torch.Tensor, amax: torch.Tensor, kappa: float) -> torch.Tensor:
    """QuEST's clipping value per block: c = (kappa * sqrt(S / n)) * amax in fp32, S the
    pairwise sum (``pairwise_sum``) of (x / amax)^2 over the block's n elements, clamped to the
    fp32 max; 0 where amax is 0, and amax itself (NaN or Inf) where it is not finite, so such
    a block gets the NaN scale as with the amax statistic. Dividing by amax first keeps the
    squares from overflowing: the RMS of a finite block is always finite."""
    x_blocks = x_blocks.to(F32)
    amax = amax.to(F32)
    finite = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(finite, amax, torch.ones_like(amax))
    y = x_blocks / safe.unsqueeze(-1)
    mean_sq = pairwise_sum(y * y) / torch.tensor(float(x_blocks.shape[-1]), dtype=F32)
    c = (torch.tensor(kappa, dtype=F32) * torch.sqrt(mean_sq)) * safe
    c = torch.clamp(c, max=FP32_MAX)
    return torch.where(finite, c, torch.where(amax == 0, torch.zeros_like(amax), amax))
