"""Fake quantization (quantize then dequantize) computed directly on values.

x_hat = s_b * round_to_grid(x / s_b) with the same s_b, rounding and random bytes as
``quantize``: every element value of the grid is exact in fp32, so this equals
``dequantize(quantize(x))`` bit for bit (tested), without building codes or packing.
It also returns what gradient estimators need: the per-element effective scale.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantFormat, get_format
from ..blocking import from_blocks, from_stored, to_blocks, to_stored
from .checks import check_quantize_call
from .quantize import scaled_blocks
from .rounding import round_to_grid

F32 = torch.float32


def fake_quantize_with_scales(x: torch.Tensor, fmt: QuantFormat, rounding: str = "nearest",
                              seed: Optional[int] = None, offset: int = 0,
                              nan_policy: str = "propagate",
                              amax_tensor: Optional[torch.Tensor] = None, with_scales: bool = True,
                              sr_clipping: bool = False):
    """(x_hat in fp32, effective scale per element in fp32, block amax per element), all in x's
    shape; the last two are None when ``with_scales`` is False (every backend honours this)."""
    if rounding == "ms_eden":
        from . import ms_eden
        from .philox import random_bytes as philox_bytes
        from .quantize import quantize
        check_quantize_call(x, fmt, "stochastic", seed, offset, nan_policy, False, amax_tensor)
        return ms_eden.fake_quantize_with_scales(quantize, philox_bytes, x, fmt, seed, offset, nan_policy,
                                                 amax_tensor, with_scales)
    fmt = check_quantize_call(x, fmt, rounding, seed, offset, nan_policy, sr_clipping, amax_tensor)
    layout, _, _, s_eff, x_scaled, rand = scaled_blocks(x, fmt, rounding, seed, offset, False, nan_policy,
                                                        amax_tensor)
    s = s_eff.unsqueeze(-1)
    xb_abs = to_blocks(to_stored(x.to(F32), layout), layout).abs()
    e = fmt.element
    v = round_to_grid(x_scaled, e.ebits, e.mbits, e.bias, e.max, rounding, rand)
    xh = v * s

    def back(t):
        return from_stored(from_blocks(t, layout), layout)
    if not with_scales:
        return back(xh), None, None
    amax = xb_abs.amax(dim=-1, keepdim=True)
    return back(xh), back(s.expand_as(xb_abs)), back(amax.expand_as(xb_abs))


def fake_quantize(x: torch.Tensor, fmt, rounding: str = "nearest", seed: Optional[int] = None,
                  offset: int = 0, nan_policy: str = "propagate", sr_clipping: bool = False) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype, computed on values."""
    xh, _, _ = fake_quantize_with_scales(x, fmt, rounding, seed, offset, nan_policy, with_scales=False,
                                         sr_clipping=sr_clipping)
    return xh.to(x.dtype)
