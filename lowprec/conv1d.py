"""QuantConv1D: transformers' Conv1D (GPT-2's y = x W + b, W of shape [in, out]) through a
recipe's quantized GEMMs.  Imported only when a Conv1D is converted, so transformers stays
optional.  It subclasses Conv1D so that PEFT and transformers treat it as the layer it
replaced (LoRA on a Conv1D uses fan_in_fan_out, and merges the transposed delta)."""

from __future__ import annotations

from typing import Union

from torch import nn
from transformers.pytorch_utils import Conv1D

from .nn import _QuantGEMM
from .recipe import Recipe


class QuantConv1D(_QuantGEMM, Conv1D):
    def __init__(self, nf: int, nx: int, recipe: Union[Recipe, str] = "nvfp4", seed: int = 0, bias: bool = True,
                 device=None, dtype=None, name: str = ""):
        self._build(nx, nf, bias, recipe, seed, "in_out", device, dtype, name)
        self.nf, self.nx = nf, nx

    @staticmethod
    def _plain_type():
        return Conv1D

    __repr__ = nn.Module.__repr__
