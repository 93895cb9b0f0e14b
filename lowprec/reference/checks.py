"""Validation of a quantizer call, done once at the boundary of every backend's op, so that
every backend refuses the same inputs with the same ``TypeError`` / ``ValueError`` text.

Seeds and offsets are Python (or 0-d integer tensor) integers in [0, 2**64): the Philox key
and counter are 64-bit, and no backend wraps or truncates them silently.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantFormat, effective_format, get_format
from .rounding import ROUNDING_MODES

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NAN_POLICIES = ("propagate", "raise")
U64 = 1 << 64


def check_uint64(name: str, v) -> int:
    """``v`` as an int in [0, 2**64), or a TypeError / ValueError naming ``name``."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and v.dtype != torch.bool:
        v = int(v.item())
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(v).__name__} {v!r}")
    if not 0 <= v < U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return v


def int64_bits(v: int) -> int:
    """A uint64 seed or offset as the int64 with the same bits (how they cross op boundaries,
    and how the Philox counter wraps modulo 2**64)."""
    v = int(v) & (U64 - 1)
    return v - U64 if v >= 1 << 63 else v


def check_quantize_call(x: torch.Tensor, fmt, rounding: str, seed, offset, nan_policy: str,
                        sr_clipping: bool = False, amax_tensor: Optional[torch.Tensor] = None) -> QuantFormat:
    """Validate a quantize / fake-quantize call; returns the format the quantizer runs
    (``effective_format``: the non-clipping scale for stochastic rounding unless ``sr_clipping``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"quantize takes float32, float16 or bfloat16 input, got {x.dtype}")
    fmt = get_format(fmt)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDING_MODES}")
    if rounding in ("stochastic", "ms_eden") and seed is None:
        raise ValueError("stochastic rounding needs an explicit seed (and an offset that advances per call)")
    if seed is not None:
        check_uint64("seed", seed)
    check_uint64("offset", offset)
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"unknown nan_policy {nan_policy!r}; expected one of {NAN_POLICIES}")
    if nan_policy == "raise":
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(f"input holds {int(bad.sum())} NaN/Inf values (nan_policy='raise'); "
                             f"first at index {tuple(int(i) for i in bad.nonzero()[0])}")
    if fmt.scale.kind == "minifloat" and not fmt.scale.has_nan and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"a block holds NaN or Inf, and {fmt.scale!r} scales have no NaN code to mark it")
    if amax_tensor is not None:
        if not isinstance(amax_tensor, torch.Tensor) or amax_tensor.numel() != 1:
            raise ValueError("amax_tensor must be a tensor holding one value")
        a = float(amax_tensor.reshape(()).float())
        if not (a >= 0.0 and a < float("inf")):
            raise ValueError(f"amax_tensor must be finite and >= 0 (the amax of the finite elements), got {a}")
    return effective_format(fmt, rounding, sr_clipping)
