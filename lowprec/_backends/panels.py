"""The 'cpp' backend's quantize / fake_quantize / dequantize: x goes to the fused C++ panel
kernels (csrc/cpu/quantize_panels.cpp, dequantize_panels.cpp) as a [Bt, M, N] view with no
copy, blocked along N (rows), along M (cols) or in tiles, so there is no Python-side
permutation, padding, Philox draw, amax or nibble packing."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch

from .. import ops
from ..formats import QuantFormat, get_format
from ..blocking import from_stored, make_layout
from ..reference.checks import check_quantize_call
from ..tensor import QuantizedTensor
from .blocked import DIVISION_IDS, ROUNDING_IDS, format_params, int64_bits, scale_table

ROWS, COLS, TILES = 0, 1, 2


def panel_view(shape, fmt: QuantFormat, axis: int):
    """(Bt, M, N, mode) of a tensor of ``shape`` blocked by ``fmt`` along ``axis``."""
    if fmt.block_2d:
        return math.prod(shape[:-2]), shape[-2], shape[-1], TILES
    if axis == len(shape) - 1:
        return 1, math.prod(shape[:-1]), shape[-1], ROWS
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]), COLS


# Elements per kernel work item (kItemElements in csrc/cpu/panels.h).
ITEM_ELEMENTS = 2048


def regroup_rows(rows: int, n: int, bs: int):
    """Row blocks over ``rows`` rows of n elements (n a multiple of bs: no padding) are the same
    blocks, scale grid, codes and Philox stream positions over rows / k rows of k n elements
    (k | rows); k is chosen so that short rows (a 64-feature activation) still fill a work item.
    -> (rows / k, k n)."""
    if n == 0 or n % bs or n >= ITEM_ELEMENTS or rows <= 1:
        return rows, n
    k = math.gcd(rows, ITEM_ELEMENTS // n)
    return rows // k, n * k


def _kernel_input(x: torch.Tensor, view, bs: int) -> torch.Tensor:
    """x as [Bt, M, N]; a transposed 2D tensor goes as a strided view (the kernel gathers it)
    rather than through a copy; contiguous row blocks go as regrouped rows (regroup_rows)."""
    if x.device.type != "cpu":
        raise ops.BackendUnavailable(f"backend 'cpp' runs on cpu tensors, not {x.device}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.to(torch.float32)
    if x.dim() == 2 and x.stride() == (1, x.shape[0]) and not x.is_contiguous():
        return x.unsqueeze(0)
    x = x.contiguous()
    if view[3] == ROWS:
        return x.view(1, *regroup_rows(view[1], view[2], bs))
    return x.view(view[0], view[1], view[2])


@lru_cache(maxsize=256)
def _format_args(fmt: QuantFormat):
    ints, floats = format_params(fmt)
    return scale_table(fmt, "cpu"), ints, floats


@lru_cache(maxsize=64)
def _element_table(element) -> torch.Tensor:
    return element.table("cpu")


# The panel kernels' id of rounding="ms_eden" (kMsEdenRounding in csrc/cpu/quantize_panels.cpp).
MS_EDEN_ROUNDING = 4


def _common(x, fmt, rounding, seed, offset, nan_policy, amax_tensor, sr_clipping):
    if rounding == "ms_eden":
        # MS-EDEN in the kernel: the elements round to nearest under the tensor scale of twice
        # the amax, then each block's scale code is corrected (quantize_panels.cpp, ms_eden_groups)
        from ..reference import ms_eden
        check_quantize_call(x, fmt, "stochastic", seed, offset, nan_policy, False, amax_tensor)
        fmt = get_format(fmt)
        ms_eden.check_format(fmt)
        rounding_id = MS_EDEN_ROUNDING
    else:
        fmt = check_quantize_call(x, fmt, rounding, seed, offset, nan_policy, sr_clipping, amax_tensor)
        rounding_id = ROUNDING_IDS[rounding]
    amax = amax_tensor.reshape(()).to(torch.float32) if (fmt.tensor_scale and amax_tensor is not None) else None
    return fmt, _format_args(fmt), amax, (rounding_id, int64_bits(seed or 0), int64_bits(offset))


@ops.native_ms_eden
def quantize(x: torch.Tensor, fmt="mxfp4", rounding: str = "nearest", seed: Optional[int] = None, offset: int = 0,
             strict: bool = False, nan_policy: str = "propagate",
             amax_tensor: Optional[torch.Tensor] = None, sr_clipping: bool = False) -> QuantizedTensor:
    fmt, fmt_args, amax, rng = _common(x, fmt, rounding, seed, offset, nan_policy, amax_tensor, sr_clipping)
    layout = make_layout(x.shape, fmt, strict)
    view = panel_view(x.shape, fmt, layout.axis)
    xk = _kernel_input(x, view, fmt.block_size)
    packed = fmt.element.bits == 4
    codes, scales, s_enc = torch.ops.lowprec.quantize_panels(xk, *fmt_args, [view[3], fmt.block_size], amax, *rng,
                                                              packed)
    stored = list(layout.stored)
    if packed:
        stored[-1] //= 2
    return QuantizedTensor(codes.view(stored), scales.view(layout.scale_shape), s_enc if fmt.encode_scaled else None,
                           fmt, x.shape, x.dtype, layout.axis)


@ops.native_ms_eden
def fake_quantize(x: torch.Tensor, fmt, rounding: str = "nearest", seed: Optional[int] = None, offset: int = 0,
                  nan_policy: str = "propagate", amax_tensor: Optional[torch.Tensor] = None, with_scales: bool = True,
                  sr_clipping: bool = False):
    """(x_hat fp32, s_eff per element, amax per element) in x's shape; the last two are None
    when ``with_scales`` is False (the straight-through estimator does not read them)."""
    fmt, fmt_args, amax, rng = _common(x, fmt, rounding, seed, offset, nan_policy, amax_tensor, sr_clipping)
    layout = make_layout(x.shape, fmt)
    view = panel_view(x.shape, fmt, layout.axis)
    x_hat, s_eff, amax_e, _ = torch.ops.lowprec.fake_quantize_panels(
        _kernel_input(x, view, fmt.block_size), *fmt_args, [view[3], fmt.block_size], amax, *rng, with_scales)
    if not with_scales:
        return x_hat.view(x.shape), None, None
    return x_hat.view(x.shape), s_eff.view(x.shape), amax_e.view(x.shape)


def dequantize(q: QuantizedTensor, dtype=None) -> torch.Tensor:
    if q.codes.device.type != "cpu":
        raise ops.BackendUnavailable(f"backend 'cpp' runs on cpu tensors, not {q.codes.device}")
    fmt = q.fmt
    layout = make_layout(q.shape, fmt)
    if fmt.block_2d:
        bt, m, n, mode = panel_view(q.shape, fmt, layout.axis)
    else:   # row and column blocks alike are row blocks of the stored [rows, L_pad] layout
        bt, mode = 1, ROWS
        m, n = regroup_rows(math.prod(layout.stored[:-1]), q.shape[layout.axis], fmt.block_size)
    scales_table = _format_args(fmt)[0]
    out = torch.ops.lowprec.dequantize_panels(q.codes.contiguous(), q.scales.contiguous(), scales_table,
                                              _element_table(fmt.element), q.tensor_scale,
                                              [bt, m, n, mode, fmt.block_size, DIVISION_IDS[fmt.division]],
                                              q.packed)
    out = out.view(q.shape) if fmt.block_2d else from_stored(out.view(*layout.stored[:-1], q.shape[layout.axis]), layout)
    return out.to(dtype or q.dtype)
