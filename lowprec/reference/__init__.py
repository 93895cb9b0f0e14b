"""The executable specification in pure PyTorch (never imports triton or lowprec._C)."""

from .hadamard import hadamard_transform, random_signs, sylvester
from .philox import randint4x, random_bytes
from .quantize import dequantize, quantize, quantize_dequantize
from .rounding import ROUNDING_MODES, grid_to_code, round_to_grid

__all__ = ["quantize", "dequantize", "quantize_dequantize", "random_bytes", "randint4x",
           "round_to_grid", "grid_to_code", "ROUNDING_MODES", "hadamard_transform",
           "random_signs", "sylvester"]
