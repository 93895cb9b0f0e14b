"""Shared glue for block kernels (C++ and Triton): layout, tensor scale, random bytes and
the packing of kernel outputs, so every fast backend sees the same contiguous fp32 blocks
[n_blocks, block] and returns the same QuantizedTensor as the reference."""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantFormat, get_format
from ..blocking import from_blocks, from_stored, make_layout, to_blocks, to_stored
from ..reference.checks import check_quantize_call, int64_bits  # noqa: F401  (re-exported to the backends)
from ..reference.scales import effective_scale, finite_amax, tensor_encode_scale
from ..tensor import QuantizedTensor, pack_nibbles, unpack_nibbles

F32 = torch.float32
ROUNDING_IDS = {"nearest": 0, "stochastic": 1, "zero": 2}
RULE_IDS = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3, "amax": 4, "rfloor": 5}
STATISTIC_IDS = {"amax": 0, "gaussian": 1}
SCALE_KIND_IDS = {"e8m0": 0, "minifloat": 1, "fp32": 2}
DIVISION_IDS = {"ieee": 0, "reciprocal": 1}
FOUR_OVER_SIX_IDS = {"off": 0, "mse": 1, "mae": 2}
WIDENED_IN_KERNEL = (torch.float32, torch.bfloat16, torch.float16)   # dtypes a kernel loads and stores as they are


def format_params(fmt: QuantFormat):
    """(int list, float list) describing a format to a kernel (see csrc/include/lowprec/formats.h)."""
    e, s = fmt.element, fmt.scale
    ints = [e.ebits, e.mbits, e.bias, -1 if e.nan_code is None else e.nan_code, e.emax,
            SCALE_KIND_IDS[s.kind], s.ebits, s.mbits, s.bias, -1 if s.nan_code is None else s.nan_code,
            RULE_IDS[fmt.scale_rule], 3 if fmt.scale_rounding == "up" else 0, int(fmt.tensor_scale),
            DIVISION_IDS[fmt.division], FOUR_OVER_SIX_IDS[fmt.four_over_six], STATISTIC_IDS[fmt.scale_statistic]]
    floats = [float(e.max), float(s.max) if s.kind == "minifloat" else 0.0, fmt.gaussian_kappa, fmt.pre_scale]
    return ints, floats


def scale_table(fmt: QuantFormat, device) -> torch.Tensor:
    return fmt.scale.table(device) if fmt.scale.kind != "fp32" else torch.zeros(1, dtype=F32, device=device)


class Prepared:
    """x in blocks, plus what a kernel needs besides the format."""

    def __init__(self, x: torch.Tensor, fmt, rounding: str, seed, offset: int, strict: bool, nan_policy: str,
                 amax_tensor: Optional[torch.Tensor], random_bytes, keep_dtype: bool = False,
                 sr_clipping: bool = False):
        """``keep_dtype``: leave bf16/fp16 blocks in their dtype, for a kernel that widens them
        to fp32 as it loads (exact), instead of a cast pass here."""
        self.fmt = check_quantize_call(x, fmt, rounding, seed, offset, nan_policy, sr_clipping, amax_tensor)
        self.x = x
        self.layout = make_layout(x.shape, self.fmt, strict)
        xs = to_stored(x if keep_dtype and x.dtype in WIDENED_IN_KERNEL else x.to(F32), self.layout)
        self.blocks = to_blocks(xs, self.layout).reshape(-1, self.fmt.block_size ** (2 if self.fmt.block_2d else 1))
        self.blocks = self.blocks.contiguous()
        self.block_grid = to_blocks(xs, self.layout).shape[:-1]
        if self.fmt.tensor_scale:
            if amax_tensor is not None:
                amax = amax_tensor
            else:
                amax = finite_amax(x)
            self.s_enc = tensor_encode_scale(amax, self.fmt)
        else:
            self.s_enc = torch.full((), self.fmt.pre_scale, dtype=F32, device=x.device)
        self.rounding = rounding
        self.seed = 0 if seed is None else int(seed)
        self.offset = int(offset)
        # Inline Philox is valid when block order = row-major order of x: 1D blocks along the
        # last axis with no padding. Otherwise the bytes are drawn and permuted like x.
        self.inline_rng = (rounding == "stochastic" and not self.fmt.block_2d
                           and self.layout.axis == x.dim() - 1 and self.layout.stored == tuple(x.shape))
        self.rand = None
        if rounding == "stochastic" and not self.inline_rng:
            r = random_bytes(self.seed, self.offset, x.numel(), x.device).reshape(x.shape)
            self.rand = to_blocks(to_stored(r, self.layout), self.layout).reshape(self.blocks.shape).contiguous()

    def unblock(self, t: torch.Tensor) -> torch.Tensor:
        """[n_blocks, block] -> stored layout."""
        return from_blocks(t.reshape(*self.block_grid, t.shape[-1]), self.layout)

    def to_x_shape(self, t: torch.Tensor) -> torch.Tensor:
        return from_stored(self.unblock(t), self.layout)

    def per_block(self, t: torch.Tensor) -> torch.Tensor:
        """[n_blocks] -> [n_blocks, block] broadcast, in x's shape."""
        return self.to_x_shape(t.unsqueeze(-1).expand(self.blocks.shape))

    def packs_in_kernel(self) -> bool:
        """4-bit codes of 1D blocks: a block is a run of the stored layout's last dim (even
        length), so a kernel can pack its code pairs itself, as ``pack_nibbles`` would."""
        return self.fmt.element.bits == 4 and not self.fmt.block_2d

    def quantized_tensor(self, codes: torch.Tensor, scales: torch.Tensor, packed: bool = False) -> QuantizedTensor:
        """From kernel outputs: codes [n_blocks, block] (``packed``: [n_blocks, block / 2]
        bytes, packed by the kernel, see ``packs_in_kernel``) and scales [n_blocks]."""
        if packed:
            c = codes.reshape(*self.layout.stored[:-1], self.layout.stored[-1] // 2)
        else:
            c = self.unblock(codes)
            if self.fmt.element.bits == 4:
                c = pack_nibbles(c)
        return QuantizedTensor(c.contiguous(), scales.reshape(self.block_grid).contiguous(),
                               self.s_enc if self.fmt.encode_scaled else None, self.fmt, self.x.shape,
                               self.x.dtype, self.layout.axis)


def dequantize_with(q: QuantizedTensor, kernel, dtype=None) -> torch.Tensor:
    """Dequantize through ``kernel(code blocks [n, bs] uint8, s_eff [n] fp32, element table)``."""
    layout = make_layout(q.shape, q.fmt)
    codes = unpack_nibbles(q.codes) if q.packed else q.codes
    bs = q.fmt.block_size ** (2 if q.fmt.block_2d else 1)
    blocks = to_blocks(codes, layout)
    grid = blocks.shape[:-1]
    s_eff = q.scales.to(F32) if q.fmt.scale.kind == "fp32" else q.fmt.scale.table(q.device)[q.scales.long()]
    s_eff = effective_scale(s_eff, q.fmt, q.tensor_scale)
    out = kernel(blocks.reshape(-1, bs).contiguous(), s_eff.reshape(-1).contiguous(), q.fmt.element.table(q.device))
    return from_stored(from_blocks(out.reshape(*grid, bs), layout), layout).to(dtype or q.dtype)
