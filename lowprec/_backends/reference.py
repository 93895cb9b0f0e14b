"""Registers the pure-PyTorch reference implementations."""

from .. import ops
from ..reference.fake import fake_quantize_with_scales
from ..reference.hadamard import hadamard_transform
from ..reference.philox import random_bytes
from ..reference.quantize import dequantize, quantize
from ..reference.sparsity import compress_24, nm_mask

ops.register("quantize", "reference")(quantize)
ops.register("dequantize", "reference")(dequantize)
ops.register("random_bytes", "reference")(random_bytes)
ops.register("hadamard", "reference")(hadamard_transform)
ops.register("fake_quantize", "reference")(fake_quantize_with_scales)
ops.register("nm_mask", "reference")(nm_mask)
ops.register("compress_24", "reference")(compress_24)
