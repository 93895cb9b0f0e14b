"""QuantizedTensor: element codes, block scales, optional tensor scale, and the metadata
needed to dequantize.

Storage layout (documented in docs/numerics.md):
- 1D blocks: the block axis is moved last and padded with zeros to a multiple of the
  block size: ``codes`` is ``(*lead, L_pad)`` codes, ``scales`` is ``(*lead, L_pad / bs)``.
- 2D tiles: the last two dims are padded to multiples of bs: ``codes`` is
  ``(*lead, R_pad, C_pad)``, ``scales`` is ``(*lead, R_pad / bs, C_pad / bs)``.
- 4-bit codes are packed two per uint8 along the last stored dim, the even index in
  bits 0-3; 6- and 8-bit codes are stored one per uint8.
Padding is zeros, which quantize to code 0 and are cropped by ``dequantize``.
``tensor_scale`` holds S_enc (fp32 scalar): dequantization divides by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .formats import QuantFormat


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dim (even index in the low nibble)."""
    if codes.shape[-1] % 2:
        raise ValueError("packing needs an even number of codes along the last dim")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: uint8 codes, last dim doubled."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


@dataclass
class QuantizedTensor:
    """A block-quantized tensor (see module docstring for the layout)."""

    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: Optional[torch.Tensor]
    fmt: QuantFormat
    shape: torch.Size
    dtype: torch.dtype
    axis: int

    @property
    def packed(self) -> bool:
        return self.fmt.element.bits == 4

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def element_codes(self) -> torch.Tensor:
        """Unpacked element codes (uint8) in the stored (padded, axis-last) layout."""
        return unpack_nibbles(self.codes) if self.packed else self.codes

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        from .reference.quantize import dequantize
        return dequantize(self, dtype=dtype)

    def to(self, device) -> "QuantizedTensor":
        ts = None if self.tensor_scale is None else self.tensor_scale.to(device)
        return QuantizedTensor(self.codes.to(device), self.scales.to(device), ts,
                               self.fmt, self.shape, self.dtype, self.axis)

    @property
    def nbytes(self) -> int:
        """Bytes of storage (codes + scales + tensor scale), padding included."""
        n = self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()
        return n + (4 if self.tensor_scale is not None else 0)

    def __repr__(self) -> str:
        return (f"QuantizedTensor(shape={tuple(self.shape)}, fmt={self.fmt}, axis={self.axis}, "
                f"codes={tuple(self.codes.shape)}, scales={tuple(self.scales.shape)}, "
                f"tensor_scale={None if self.tensor_scale is None else float(self.tensor_scale):})")
