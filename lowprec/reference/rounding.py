"""Rounding an fp32 tensor onto a minifloat grid, and turning grid values into codes.

For |x| with binade exponent e = max(floor(log2|x|), emin) the grid spacing is
ulp = 2**(e - mbits), and q = |x| / ulp is exact in fp32 (a power-of-two scaling).
  nearest:    round(q), ties to even (the even integer is the even mantissa)
  stochastic: floor(q) + [F + R >= 256] with F = floor(256 * (q - floor(q))), R a random byte
  zero:       floor(q)                 (truncation toward zero)
  up:         ceil(q)                  (used for scales; elements never round up in magnitude by rule)
then the magnitude saturates at the format's max and the sign is restored.
Inputs above max saturate whatever the mode, because max lies on the grid.
"""

from __future__ import annotations

from typing import Optional

import torch

ROUNDING_MODES = ("nearest", "stochastic", "zero", "ms_eden")   # ms_eden: reference/ms_eden.py


def exp2i(e: torch.Tensor) -> torch.Tensor:
    """2**e as fp32, exact, built from the bit pattern (e clamped to [-149, 127])."""
    e = torch.clamp(e.to(torch.int32), -149, 127)
    normal_bits = (e + 127) << 23
    sub_bits = torch.ones_like(e) << torch.clamp(e + 149, 0, 22)
    return torch.where(e >= -126, normal_bits, sub_bits).view(torch.float32)


def round_to_grid(x: torch.Tensor, ebits: int, mbits: int, bias: int, max_value: float,
                  mode: str, rand_bytes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Round fp32 ``x`` (finite or not) to the signed minifloat grid; NaN stays NaN."""
    if x.dtype != torch.float32:
        raise TypeError("round_to_grid works on fp32")
    emin = 1 - bias
    a = torch.clamp(x.abs(), max=max_value)                 # saturate first: same result, no Inf
    _, exp = torch.frexp(a)                                   # a = m * 2**exp, m in [0.5, 1)
    e = torch.clamp(exp - 1, min=emin)                        # floor(log2 a), or emin for tiny a
    ulp = exp2i(e - mbits)
    q = a / ulp
    if mode == "nearest":
        r = torch.round(q)
    elif mode == "zero":
        r = torch.floor(q)
    elif mode == "up":
        r = torch.ceil(q)
    elif mode == "stochastic":
        if rand_bytes is None:
            raise ValueError("stochastic rounding needs random bytes")
        fl = torch.floor(q)
        frac8 = torch.floor((q - fl) * 256.0)
        r = fl + ((frac8 + rand_bytes.to(torch.float32)) >= 256.0).to(torch.float32)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")
    v = torch.clamp(r * ulp, max=max_value)
    return torch.copysign(v, x)


def grid_to_code(v: torch.Tensor, ebits: int, mbits: int, bias: int, signed: bool = True) -> torch.Tensor:
    """Code (int32) of values that lie exactly on the grid (output of ``round_to_grid``).

    NaN maps to 0 here; callers overwrite NaN positions with their format's NaN code.
    """
    emin = 1 - bias
    a = torch.nan_to_num(v.abs(), nan=0.0)
    _, exp = torch.frexp(a)
    e = exp - 1
    normal = (a >= 2.0 ** emin)
    sub_man = a * exp2i(torch.full_like(exp, mbits - emin))                # a / 2**(emin - mbits)
    norm_man = a * exp2i(mbits - e) - (1 << mbits)                         # a / 2**e * 2**m - 2**m
    exp_field = torch.where(normal, e + bias, torch.zeros_like(e))
    man_field = torch.where(normal, norm_man, sub_man).to(torch.int32)
    code = (exp_field.to(torch.int32) << mbits) | man_field
    if signed:
        sign = torch.signbit(v) & ~torch.isnan(v)
        code = code | (sign.to(torch.int32) << (ebits + mbits))
    return code
