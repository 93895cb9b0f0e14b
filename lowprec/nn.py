"""QuantLinear (and QuantConv1D): a linear layer whose three GEMMs run under a recipe.

It reuses the parameters of the layer it replaces (``from_module``), so optimizers,
state_dicts and tied weights keep working, and ``revert()`` gives the original layer
type back with the same parameters.  Each instance owns a stochastic-rounding seed and a
Philox offset that advances on every call; both live in ``state_dict()`` (lowprec.sr_state).

A converted layer *is* an instance of what it replaces: ``QuantLinear`` subclasses
``nn.Linear`` (weight [out, in]) and ``QuantConv1D`` subclasses transformers' ``Conv1D``
(weight [in, out], GPT-2).  Libraries that dispatch on the layer type, PEFT's LoRA among
them, therefore wrap a converted layer as they would the original, with the right weight
orientation (a LoRA merge into a Conv1D weight needs its transposed delta).
"""

from __future__ import annotations

import zlib
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import plan_for, quant_linear, slot_offsets
from .sr_state import SRStateMixin
from .recipe import Recipe, get


def layer_seed(base_seed: int, name: str) -> int:
    """A stable per-layer seed from the run's seed and the layer's qualified name."""
    return ((int(base_seed) & 0x7FFFFFFF) << 32) | zlib.crc32(name.encode())


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): y = x W + b with W of shape (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def linear_subclass_reason(module: nn.Module):
    """Why an nn.Linear subclass is not replaced (None for anything else): a converter would
    swap in a module whose forward is not the subclass's."""
    if not isinstance(module, nn.Linear) or type(module) is nn.Linear:
        return None
    if type(module).__name__ == "NonDynamicallyQuantizableLinear":
        return ("nn.MultiheadAttention's out_proj: the attention calls its weight functionally, "
                "so a replacement module would never run")
    return (f"{type(module).__name__} subclasses nn.Linear with its own forward; "
            "convert it explicitly if its GEMM is a plain x W^T + b")


class _QuantGEMM(SRStateMixin):
    """What QuantLinear and QuantConv1D share: conversion, revert and the quantized forward.
    ``weight_layout`` is "out_in" (nn.Linear) or "in_out" (Conv1D)."""

    def _build(self, in_features: int, out_features: int, bias: bool, recipe, seed: int, layout: str,
               device, dtype, name: str) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.recipe = get(recipe)
        why = self.recipe.shape_mismatch(in_features, out_features)
        if why:
            raise ValueError(f"{type(self).__name__}({in_features} in, {out_features} out) under recipe "
                             f"{self.recipe.name!r}: {why}")
        self.weight_layout = layout
        shape = (out_features, in_features) if layout == "out_in" else (in_features, out_features)
        self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        if layout == "out_in":
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        else:
            nn.init.normal_(self.weight, std=0.02)          # as transformers' Conv1D
        self.name = name
        self._init_sr_state(seed, device)

    # -- construction -------------------------------------------------------------------
    @staticmethod
    def accepts(module: nn.Module) -> bool:
        """Linear layers (subclasses too, so that the report can say why they are skipped)."""
        return isinstance(module, nn.Linear) or _is_conv1d(module)

    @classmethod
    def from_module(cls, module: nn.Module, recipe: Recipe, name: str = "", seed: int = 0):
        """Wrap ``module`` (nn.Linear or Conv1D) reusing its parameters, or return a reason
        string when its shape cannot be blocked under ``recipe``."""
        why = linear_subclass_reason(module)
        if why:
            return why
        if type(module) is nn.Linear:
            in_f, out_f, layout = module.in_features, module.out_features, "out_in"
        elif _is_conv1d(module):
            in_f, out_f, layout = module.weight.shape[0], module.weight.shape[1], "in_out"
        else:
            return f"{type(module).__name__} is not a linear layer"
        why = recipe.shape_mismatch(in_f, out_f)
        if why:
            return why
        if layout == "in_out":
            from .conv1d import QuantConv1D
            q = QuantConv1D.__new__(QuantConv1D)
            q.nf, q.nx = out_f, in_f
        else:
            q = QuantLinear.__new__(QuantLinear)
        nn.Module.__init__(q)
        q.in_features, q.out_features, q.recipe, q.weight_layout = in_f, out_f, recipe, layout
        q.weight = module.weight
        q.bias = module.bias
        q.name = name
        q._init_sr_state(layer_seed(seed, name), module.weight.device)
        return q

    def revert(self) -> nn.Module:
        """The original layer type (nn.Linear, or Conv1D for QuantConv1D) sharing this
        module's parameters: the same function, unquantized."""
        if self.weight_layout == "out_in":
            m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta",
                          dtype=self.weight.dtype)
        else:
            m = self._plain_type()(self.out_features, self.in_features)
        m.weight = self.weight
        m.bias = self.bias
        return m

    # -- forward ------------------------------------------------------------------------
    def weight_out_in(self) -> torch.Tensor:
        return self.weight if self.weight_layout == "out_in" else self.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_out_in()
        if not self.recipe.quantized:
            return F.linear(x, w, self.bias)
        plan = self._plan
        tokens = x.numel() // x.shape[-1]
        _, consumed = slot_offsets(tokens, self.in_features, self.out_features, plan)
        rng, record = self._forward_rng(consumed)
        y = quant_linear(x, w, self.bias, plan, rng, self.seed)
        if record is not None:
            self._replay.push(record, y)
        return y

    @property
    def recipe(self) -> Recipe:
        return self._recipe

    @recipe.setter
    def recipe(self, value) -> None:
        self._recipe = get(value)
        self._plan = plan_for(self._recipe)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, recipe={self.recipe.describe()}")


class QuantLinear(_QuantGEMM, nn.Linear):
    """y = x Wᵀ + b through ``recipe``'s quantized GEMMs; W is [out, in] as in nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: Union[Recipe, str] = "nvfp4", seed: int = 0, device=None, dtype=None, name: str = ""):
        self._build(in_features, out_features, bias, recipe, seed, "out_in", device, dtype, name)
