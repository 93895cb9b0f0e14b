"""Cutting a tensor into blocks and putting it back.

``BlockLayout`` remembers how a tensor was permuted and padded so that the inverse is
exact. 1D: the block axis goes last and is zero-padded to a multiple of bs; blocks are
views ``(*lead, L_pad/bs, bs)``.  2D: the last two dims are zero-padded to multiples of
bs; blocks are ``(*lead, R_pad/bs, C_pad/bs, bs*bs)`` (tile rows then columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .formats import QuantFormat


@dataclass(frozen=True)
class BlockLayout:
    shape: tuple        # original shape
    axis: int           # normalized block axis (1D) or -1 (2D)
    stored: tuple       # stored (padded, axis-last) shape
    block_size: int
    block_2d: bool

    @property
    def scale_shape(self) -> tuple:
        bs = self.block_size
        if self.block_2d:
            return (*self.stored[:-2], self.stored[-2] // bs, self.stored[-1] // bs)
        return (*self.stored[:-1], self.stored[-1] // bs)


def make_layout(shape, fmt: QuantFormat, strict: bool = False) -> BlockLayout:
    shape = tuple(shape)
    bs = fmt.block_size
    if len(shape) == 0:
        raise ValueError("cannot block-quantize a 0-d tensor")
    if fmt.block_2d:
        if len(shape) < 2:
            raise ValueError(f"2D blocks need a tensor of 2 or more dims, got shape {shape}")
        r, c = shape[-2:]
        if strict and (r % bs or c % bs):
            raise ValueError(f"shape {shape} is not divisible into {bs}x{bs} tiles (strict=True)")
        stored = (*shape[:-2], -(-r // bs) * bs, -(-c // bs) * bs)
        return BlockLayout(shape, -1, stored, bs, True)
    axis = fmt.axis % len(shape) if -len(shape) <= fmt.axis < len(shape) else None
    if axis is None:
        raise ValueError(f"axis {fmt.axis} is out of range for shape {shape}")
    n = shape[axis]
    if strict and n % bs:
        raise ValueError(f"dim {axis} of shape {shape} has {n} elements, not a multiple of "
                         f"block_size {bs} (strict=True)")
    lead = shape[:axis] + shape[axis + 1:]
    return BlockLayout(shape, axis, (*lead, -(-n // bs) * bs), bs, False)


def to_stored(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Permute and zero-pad ``x`` into the stored layout."""
    if layout.block_2d:
        pr = layout.stored[-2] - layout.shape[-2]
        pc = layout.stored[-1] - layout.shape[-1]
        return F.pad(x, (0, pc, 0, pr)) if (pr or pc) else x
    xm = x.movedim(layout.axis, -1)
    p = layout.stored[-1] - layout.shape[layout.axis]
    return F.pad(xm, (0, p)) if p else xm


def from_stored(y: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Crop the padding and undo the permutation."""
    if layout.block_2d:
        return y[..., : layout.shape[-2], : layout.shape[-1]]
    y = y[..., : layout.shape[layout.axis]]
    return y.movedim(-1, layout.axis)


def to_blocks(xs: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Stored-layout tensor -> blocks, last dim = elements of one block."""
    bs = layout.block_size
    if layout.block_2d:
        *lead, r, c = xs.shape
        t = xs.reshape(*lead, r // bs, bs, c // bs, bs).transpose(-3, -2)
        return t.reshape(*lead, r // bs, c // bs, bs * bs)
    return xs.reshape(*xs.shape[:-1], xs.shape[-1] // bs, bs)


def from_blocks(b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Inverse of ``to_blocks``."""
    bs = layout.block_size
    if layout.block_2d:
        *lead, nr, nc, _ = b.shape
        t = b.reshape(*lead, nr, nc, bs, bs).transpose(-3, -2)
        return t.reshape(*lead, nr * bs, nc * bs)
    return b.reshape(*b.shape[:-2], b.shape[-2] * bs)
