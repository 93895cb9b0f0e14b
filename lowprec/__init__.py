"""lowprec: low-precision (FP4 microscaling, Hadamard) compute engine for PyTorch."""

from . import formats, ops, recipe, reference
from . import recipe as recipes
from . import full_recipe as full_recipes
from .convert import ConversionReport, convert_model, load_rng_state, revert_model, rng_state
from .formats import (E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FP32_SCALE, MXFP4, MXFP6_E2M3, MXFP6_E3M2,
                      MXFP8, NVFP4, PRESETS, UE4M3, UE5M3, UE5M3_FP4, ElementFormat, QuantFormat,
                      ScaleFormat, get_format, ue5m3)
from .functional import compress_24, dequantize, fake_quantize, hadamard, nm_mask, quantize, random_bytes
from .gemm import qgemm
from .hf import load_pretrained
from .ops import BackendUnavailable, available_backends
from .nn import QuantLinear
from .recipe import GemmConfig, OperandConfig, Recipe
from .schedule import PrecisionSchedule, PrecisionScheduler, high_precision_forward
from .osci_reset import OsciReset, OsciResetConfig
from .tensor import QuantizedTensor

__version__ = "0.1.0"

__all__ = [
    "quantize", "dequantize", "fake_quantize", "hadamard", "random_bytes", "qgemm", "nm_mask", "compress_24",
    "QuantizedTensor", "QuantFormat", "ElementFormat", "ScaleFormat", "get_format", "ue5m3",
    "E2M1", "E2M3", "E3M2", "E4M3", "E5M2", "E8M0", "UE4M3", "UE5M3", "FP32_SCALE",
    "MXFP4", "NVFP4", "UE5M3_FP4", "MXFP8", "MXFP6_E2M3", "MXFP6_E3M2", "PRESETS",
    "BackendUnavailable", "available_backends", "formats", "ops", "reference", "recipe", "recipes", "full_recipes", "OsciReset", "OsciResetConfig",
    "convert_model", "revert_model", "ConversionReport", "rng_state", "load_rng_state",
    "QuantLinear", "Recipe", "GemmConfig", "OperandConfig", "load_pretrained",
    "PrecisionSchedule", "PrecisionScheduler", "high_precision_forward",
]
