"""Optimizer moments stored in a lowprec format with stochastic rounding.

A moment is kept as plain tensors (``codes``, ``scales``, optional ``tensor_scale``) so that
``state_dict()`` holds nothing but tensors.  The second moment v >= 0 spans many decades,
so it is stored as sqrt(v) (half the dynamic range) and squared on load.  Rounding is
stochastic with Philox bits from (seed, offset); the offset advances by the padded element
count of every write, so a resumed run draws the same bits.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Optional

import torch

from ..formats import get_format
from ..functional import quantize
from ..reference.arith import sqrt_rn
from ..tensor import QuantizedTensor

STATE_FORMATS = ("fp32", "mxfp8", "nvfp4", "mxfp4", "ue5m3")


@lru_cache(maxsize=None)
def state_format(name: str):
    """The preset with a scale rule that never clips the block maximum (e8m0: ceil; coded
    minifloat scales: rounded up), so that stochastic rounding stays unbiased for every
    element; the floor / nearest rules of the presets saturate the largest element."""
    fmt = get_format(name)
    if fmt.scale.kind == "e8m0":
        return dataclasses.replace(fmt, scale_rule="ceil")
    return dataclasses.replace(fmt, scale_rounding="up")


def check_state_format(name: str) -> None:
    if name not in STATE_FORMATS:
        raise ValueError(f"unknown state format {name!r}; expected one of {STATE_FORMATS}")


def padded_numel(shape, block: int) -> int:
    lead = 1
    for d in shape[:-1]:
        lead *= int(d)
    return lead * (-(-int(shape[-1]) // block) * block)


def store(x: torch.Tensor, fmt_name: str, seed: int = 0, offset: int = 0, sqrt: bool = False,
          rounding: str = "stochastic", backend: str = "auto"):
    """(state dict of the stored tensor, Philox elements consumed): moments are stored with
    stochastic rounding, projectors with ``rounding="nearest"`` (which consumes none).
    ``sqrt`` stores the correctly rounded sqrt(max(x, 0))."""
    if fmt_name == "fp32":
        return {"value": x.float().contiguous()}, 0
    fmt = state_format(fmt_name)
    src = sqrt_rn(x.float().clamp_min(0)) if sqrt else x.float()
    stochastic = rounding == "stochastic"
    q = quantize(src.contiguous(), fmt, rounding=rounding, seed=seed if stochastic else None, offset=offset,
                 backend=backend)
    out = {"codes": q.codes, "scales": q.scales}
    if q.tensor_scale is not None:
        out["tensor_scale"] = q.tensor_scale
    return out, padded_numel(src.shape, fmt.block_size) if stochastic else 0


def as_quantized(stored: dict, fmt_name: str, shape) -> QuantizedTensor:
    """The stored codes and scales as a lowprec QuantizedTensor (no copy)."""
    return QuantizedTensor(stored["codes"], stored["scales"], stored.get("tensor_scale"), state_format(fmt_name),
                           torch.Size(shape), torch.float32, -1)


def load(stored: dict, fmt_name: str, shape, sqrt: bool = False) -> torch.Tensor:
    if fmt_name == "fp32":
        return stored["value"]
    x = as_quantized(stored, fmt_name, shape).dequantize(torch.float32)
    return x * x if sqrt else x


def nbytes(stored: Optional[dict]) -> int:
    if stored is None:
        return 0
    return sum(t.numel() * t.element_size() for t in stored.values() if torch.is_tensor(t))
