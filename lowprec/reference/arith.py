"""fp32 arithmetic that every backend reproduces bit for bit.

``sqrt_rn`` is the correctly rounded fp32 square root: torch's CPU fp32 ``sqrt`` is not
(about 0.6% of random inputs come out one ulp off), so the reference takes the root in
fp64 and rounds once, which is exact rounding because 53 >= 2 * 24 + 2.  C++ ``std::sqrt``
on floats and Triton's ``tl.sqrt_rn`` are IEEE and agree with it.  ``f32`` rounds a host
scalar to fp32 once, so that kernels and the reference multiply by the same number.
"""

from __future__ import annotations

import numpy as np
import torch


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x.double()).float()


def f32(x: float) -> float:
    return float(np.float32(x))
