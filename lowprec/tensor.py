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

from . import ops
from .blocking import make_layout
from .formats import QuantFormat

DEQUANTIZE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_dequantize_dtype(dtype) -> None:
    if dtype is not None and dtype not in DEQUANTIZE_DTYPES:
        raise TypeError(f"dequantize returns a floating-point tensor (float32, float16, bfloat16 or float64), "
                        f"got dtype={dtype!r}")


def expected_storage(shape, fmt: QuantFormat):
    """(block axis, codes shape, scales shape) of a QuantizedTensor of ``shape`` in ``fmt``."""
    layout = make_layout(shape, fmt)
    stored = list(layout.stored)
    if fmt.element.bits == 4:
        stored[-1] //= 2
    return layout.axis, tuple(stored), tuple(layout.scale_shape)


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

    def __post_init__(self):
        """Every field is checked against the layout ``fmt`` implies for ``shape``, so that no
        kernel reads a hand-built tensor out of bounds or broadcasts a wrong one."""
        if not isinstance(self.fmt, QuantFormat):
            raise TypeError(f"fmt must be a QuantFormat, got {type(self.fmt).__name__}")
        if not isinstance(self.codes, torch.Tensor) or not isinstance(self.scales, torch.Tensor):
            raise TypeError("codes and scales must be torch.Tensors")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in tuple(self.shape)):
            raise TypeError(f"shape must be a sequence of non-negative ints, got {self.shape!r}")
        self.shape = torch.Size(self.shape)
        if self.dtype not in DEQUANTIZE_DTYPES:
            raise TypeError(f"dtype must be a floating-point dtype, got {self.dtype!r}")
        if self.codes.dtype != torch.uint8:
            raise TypeError(f"codes must be uint8, got {self.codes.dtype}")
        scale_dtype = torch.float32 if self.fmt.scale.kind == "fp32" else torch.uint8
        if self.scales.dtype != scale_dtype:
            raise TypeError(f"{self.fmt.scale!r} scales must be {scale_dtype}, got {self.scales.dtype}")
        axis, codes_shape, scales_shape = expected_storage(self.shape, self.fmt)
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")
        ndim = len(self.shape)
        normalized = self.axis if self.fmt.block_2d else (self.axis % ndim if -ndim <= self.axis < ndim else None)
        if normalized != axis:
            raise ValueError(f"axis must be {axis} (the format's block axis for shape {tuple(self.shape)}), "
                             f"got {self.axis!r}")
        self.axis = axis
        if tuple(self.codes.shape) != codes_shape:
            raise ValueError(f"codes of a {tuple(self.shape)} tensor in {self.fmt} must have shape {codes_shape}, "
                             f"got {tuple(self.codes.shape)}")
        if tuple(self.scales.shape) != scales_shape:
            raise ValueError(f"scales of a {tuple(self.shape)} tensor in {self.fmt} must have shape {scales_shape}, "
                             f"got {tuple(self.scales.shape)}")
        if self.scales.device != self.codes.device:
            raise ValueError(f"codes ({self.codes.device}) and scales ({self.scales.device}) must share a device")
        if self.fmt.encode_scaled:
            ts = self.tensor_scale
            if not isinstance(ts, torch.Tensor) or ts.numel() != 1 or ts.dtype != torch.float32:
                raise ValueError(f"{self.fmt} has a tensor scale: tensor_scale must be one fp32 value, got {ts!r}")
            if ts.device != self.codes.device:
                raise ValueError(f"tensor_scale ({ts.device}) must be on the codes' device ({self.codes.device})")
        elif self.tensor_scale is not None:
            raise ValueError(f"{self.fmt} has no tensor scale, but tensor_scale was given")
        bits = self.fmt.element.bits
        if bits not in (4, 8) and self.codes.numel() and int(self.codes.max()) >= 1 << bits:
            raise ValueError(f"codes hold values >= {1 << bits}, which are not {bits}-bit {self.fmt.element} codes")

    @property
    def packed(self) -> bool:
        return self.fmt.element.bits == 4

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def element_codes(self) -> torch.Tensor:
        """Unpacked element codes (uint8) in the stored (padded, axis-last) layout."""
        return unpack_nibbles(self.codes) if self.packed else self.codes

    def dequantize(self, dtype: Optional[torch.dtype] = None, backend: str = "auto") -> torch.Tensor:
        """Values in ``dtype`` (default: the dtype quantized from), through the op table: the
        same kernel as ``lowprec.dequantize(q)``."""
        check_dequantize_dtype(dtype)
        return ops.resolve("dequantize", backend, self.device)(self, dtype=dtype)

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
