"""MS-EDEN (Quartet II): unbiased quantization with the randomness in the block scales.

``rounding="ms_eden"`` (E2M1 elements with minifloat block scales: NVFP4, UE5M3). Per block
of x, usually after a random Hadamard transform:

1. The tensor scale is that of twice the tensor amax: S_enc / 2. This leaves a factor 2 of
   headroom for step 4's correction, so no corrected scale saturates.
2. The block's scale code b and s = s_eff(b) come from the format's own rule. The elements
   are rounded to nearest: v_j = RTN(x_j / s). These codes are final.
3. EDEN's correction: c = <x, x> / <x, s v>, with both dot products summed in fp32 as the
   pairwise tree of ``scales.pairwise_sum``; c = 1 where <x, s v> is not > 0 (a block
   rounded to all zeros). With it, <x, c s v> = <x, x>.
4. The target scale t = decode(b) · c is rounded to the scale grid *stochastically*, with
   the Philox byte R of the block's flat index in the stored scales: up iff
   floor(256 · frac) + R >= 256 (``rounding.round_to_grid``). A non-finite t keeps b.
5. The block dequantizes to v_j · decode(code) / S_enc.

Given the rotation, E[decode(code)] = t up to the byte's 1/256 resolution. The dequantized
block's expectation is therefore c · s · v, EDEN's estimate, whose bias over the random
rotation vanishes for uniform rotations and is small for a random Hadamard transform. The
elements carry no rounding noise, which is why the error is lower than element-wise
stochastic rounding.

This module is the reference of the scale pass. The Triton and C++ quantizers compute the
same pass inside their kernels (``ops.native_ms_eden``). Any other backend rounds the elements
to nearest with its own kernel, bit for bit the reference's, and this module (torch
operations, on the tensors' device) corrects the scales. The Philox bytes then come from the
``random_bytes`` of the device's fastest backend, which are the same bits. The result is the
same on every backend.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..blocking import from_blocks, from_stored, make_layout, to_blocks, to_stored
from ..tensor import QuantizedTensor
from .rounding import grid_to_code, round_to_grid
from .scales import decode_scales, effective_scale, finite_amax, pairwise_sum

F32 = torch.float32
HEADROOM = 2.0


def check_format(fmt) -> None:
    if fmt.element.name != "e2m1" or fmt.scale.kind != "minifloat":
        raise ValueError("rounding='ms_eden' corrects E2M1 blocks with minifloat scales (nvfp4, ue5m3); "
                         f"this format has {fmt.element.name} elements and {fmt.scale.name} scales")
    if fmt.four_over_six != "off":
        raise ValueError("rounding='ms_eden' and four_over_six both choose the block scale; use one")
    if fmt.scale_statistic != "amax":
        raise ValueError("rounding='ms_eden' rescales amax-based block scales; it does not combine with "
                         "scale_statistic='gaussian'")


def headroom_amax(x: torch.Tensor, fmt, amax_tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The tensor amax the element pass runs with: twice the (given or finite) amax."""
    if not fmt.tensor_scale:
        return None
    a = amax_tensor if amax_tensor is not None else finite_amax(x)
    return a.to(F32).reshape(()) * HEADROOM


def corrected_scale_codes(x_blocks: torch.Tensor, q: QuantizedTensor, rand: torch.Tensor) -> torch.Tensor:
    """Steps 3-4 for fp32 blocks ``x_blocks`` [..., n, bs] of the round-to-nearest ``q``
    (same layout), with one random byte per block (``rand``, the scales' shape)."""
    fmt = q.fmt
    layout = make_layout(q.shape, fmt)
    codes = q.element_codes()
    v = to_blocks(fmt.element.table(codes.device)[codes.to(torch.int64)], layout)
    scale_codes = q.scales.reshape(v.shape[:-1])
    dec = decode_scales(scale_codes, fmt.scale)
    s = effective_scale(dec, fmt, q.tensor_scale)
    num = pairwise_sum(x_blocks * x_blocks)
    den = pairwise_sum(x_blocks * (v * s.unsqueeze(-1)))
    c = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    t = dec * c
    sc = fmt.scale
    r = round_to_grid(torch.where(torch.isfinite(t), t, torch.zeros_like(t)), sc.ebits, sc.mbits, sc.bias, sc.max,
                      "stochastic", rand.reshape(t.shape))
    new = grid_to_code(r, sc.ebits, sc.mbits, sc.bias, signed=False).to(torch.uint8)
    keep = ~torch.isfinite(t) | ~torch.isfinite(x_blocks.abs().amax(-1))
    return torch.where(keep, scale_codes, new).reshape(q.scales.shape)


def quantize(quantize_rtn, random_bytes, x: torch.Tensor, fmt, seed: int, offset: int, strict: bool,
             nan_policy: str, amax_tensor: Optional[torch.Tensor]) -> QuantizedTensor:
    """MS-EDEN quantization of ``x``: ``quantize_rtn`` (a backend's quantize) for the elements,
    then the scale correction with ``random_bytes`` (seed, offset, n) -> uint8."""
    from ..formats import get_format
    fmt = get_format(fmt)
    check_format(fmt)
    q = quantize_rtn(x, fmt, rounding="nearest", seed=seed, offset=offset, strict=strict, nan_policy=nan_policy,
                     amax_tensor=headroom_amax(x, fmt, amax_tensor))
    layout = make_layout(x.shape, fmt, strict)
    xb = to_blocks(to_stored(x.detach().to(F32), layout), layout)
    rand = random_bytes(seed, offset, q.scales.numel(), device=x.device)
    scales = corrected_scale_codes(xb, q, rand)
    return QuantizedTensor(q.codes, scales, q.tensor_scale, q.fmt, q.shape, q.dtype, q.axis)


def fake_quantize_with_scales(quantize_rtn, random_bytes, x, fmt, seed, offset, nan_policy, amax_tensor,
                              with_scales: bool):
    """(x_hat fp32, s_eff per element or None, block amax per element or None) of MS-EDEN."""
    q = quantize(quantize_rtn, random_bytes, x, fmt, seed, offset, False, nan_policy, amax_tensor)
    layout = make_layout(x.shape, q.fmt)
    codes = q.element_codes()
    v = to_blocks(q.fmt.element.table(codes.device)[codes.to(torch.int64)], layout)
    s = effective_scale(decode_scales(q.scales.reshape(v.shape[:-1]), q.fmt.scale), q.fmt, q.tensor_scale)
    xh = v * s.unsqueeze(-1)

    def back(t):
        return from_stored(from_blocks(t, layout), layout)
    if not with_scales:
        return back(xh), None, None
    xb = to_blocks(to_stored(x.detach().to(F32), layout), layout).abs()
    return back(xh), back(s.unsqueeze(-1).expand_as(xh)), back(xb.amax(-1, keepdim=True).expand_as(xh))


__all__ = ["quantize", "fake_quantize_with_scales", "corrected_scale_codes", "HEADROOM"]
