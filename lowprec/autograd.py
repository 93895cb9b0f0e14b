"""The quantized linear layer as one autograd function (three quantized GEMMs).

  fprop  Y  = Q(X T_f) Q(W T_f)^T + b                   T_f along in_features
  dgrad  dX = Q(dY T_d) Q(T_d^T W)  (then the X-estimator factor, in the fprop domain)
  wgrad  dW = Q(T_w^T dY)^T Q(T_w^T X)  (then the W-estimator factor)   T_w along tokens
Each T is a (randomized) block Hadamard transform applied to both operands along the
GEMM's reduction axis, so the exact product is unchanged; tokens are zero-padded to a
multiple of the wgrad Hadamard size.  The reference GEMM is the fp32 matmul of the
fake-quantized operands (docs/numerics.md, "Quantized GEMM").  Bias and outputs stay in high
precision.

Stochastic rounding bits: the call reserves Philox counters for all six operands at
once, in the order X, W (fprop), dY, W (dgrad), dY, X (wgrad), starting at the module's
offset, so no two operands and no two calls share bits.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Optional

import torch

from . import ops
from .library import fake_quantize_eager, fake_quantize_op, format_to_json
from .recipe import OperandConfig, Recipe
from .reference.hadamard import hadamard_transform

SLOTS = ("fprop.lhs", "fprop.rhs", "dgrad.lhs", "dgrad.rhs", "wgrad.lhs", "wgrad.rhs")
SLOT_AXES = (-1, -1, -1, 0, 0, 0)   # blocks run along each GEMM's reduction axis


class OperandPlan(NamedTuple):
    kind: str            # "fp32" | "bf16" | "quant"
    fmt_json: str        # the QuantFormat the quantizer runs, block axis set, as JSON ("" if not quantized)
    rounding: str
    sr_clipping: bool = False

    @property
    def stochastic(self) -> bool:
        return self.kind == "quant" and self.rounding == "stochastic"


class LinearPlan(NamedTuple):
    """A recipe lowered to plain strings and ints, so torch.compile traces it as constants."""
    operands: tuple      # six OperandPlan, in SLOTS order
    hadamard: tuple      # (size, random) for fprop, dgrad, wgrad
    estimator: str
    backend: str
    reuse_weight: bool   # dgrad may reuse fprop's quantized W (same 2D tiles, no transform)
    hadamard_impls: tuple  # ((device type, transform fn), ...) resolved when the plan is built


def _operand_plan(op: OperandConfig, axis: int) -> OperandPlan:
    if op.format is None:
        return OperandPlan("fp32", "", op.rounding)
    if op.format == "bf16":
        return OperandPlan("bf16", "", op.rounding)
    fmt = op.effective_format
    fmt = fmt if fmt.block_2d else fmt.replace(axis=axis)
    return OperandPlan("quant", format_to_json(fmt), op.rounding, op.sr_clipping)


@lru_cache(maxsize=None)
def plan_for(recipe: Recipe) -> LinearPlan:
    ops_ = (recipe.fprop.lhs, recipe.fprop.rhs, recipe.dgrad.lhs, recipe.dgrad.rhs, recipe.wgrad.lhs, recipe.wgrad.rhs)
    f = recipe.fprop
    reuse = (recipe.dgrad.rhs == f.rhs and f.rhs.quantized and f.rhs.format.block_2d
             and not f.hadamard and not recipe.dgrad.hadamard and not f.rhs.stochastic)
    return LinearPlan(tuple(_operand_plan(o, a) for o, a in zip(ops_, SLOT_AXES)),
                      tuple((g.hadamard, g.hadamard_random) for g in (f, recipe.dgrad, recipe.wgrad)),
                      recipe.estimator, recipe.backend, reuse, _hadamard_impls(recipe))


def _hadamard_impls(recipe: Recipe) -> tuple:
    """The Hadamard kernel per device type, resolved now (outside any torch.compile trace)."""
    if not any(g.hadamard for g in (recipe.fprop, recipe.dgrad, recipe.wgrad)):
        return ()
    impls = []
    for dev in ("cpu", "cuda"):
        try:
            impls.append((dev, ops.resolve("hadamard", recipe.hadamard_backend, dev)))
        except ops.BackendUnavailable:
            continue
    if not impls:
        ops.resolve("hadamard", recipe.hadamard_backend, "cpu")   # raises, saying why
    return tuple(impls)


def counters_needed(n_elements: int) -> int:
    return math.ceil(n_elements / 16)


def slot_offsets(tokens: int, in_f: int, out_f: int, plan: LinearPlan):
    """Philox counter offset of each operand slot, and the total the call consumes."""
    t_w = _padded_tokens(tokens, plan.hadamard[2][0])
    sizes = [tokens * in_f, out_f * in_f, tokens * out_f, out_f * in_f, t_w * out_f, t_w * in_f]
    offsets, total = [], 0
    for n, op in zip(sizes, plan.operands):
        offsets.append(total)
        if op.stochastic:
            total += counters_needed(n)
    return offsets, total


def _padded_tokens(tokens: int, hadamard: int) -> int:
    n = hadamard or 1
    return -(-tokens // n) * n


def _hadamard_seed(layer_seed: int, gemm_index: int) -> int:
    return (layer_seed * 3 + gemm_index) & 0x7FFFFFFFFFFFFFFF


def _transform(t: torch.Tensor, hadamard: tuple, axis: int, layer_seed: int, gemm_index: int,
               inverse: bool = False, impls: tuple = ()) -> torch.Tensor:
    """Block Hadamard along ``axis`` with the plan's kernel for t's device (reference if none given)."""
    size, random = hadamard
    if not size:
        return t
    seed = _hadamard_seed(layer_seed, gemm_index) if random else None
    fn = hadamard_transform
    if impls:
        found = [f for dev, f in impls if dev == t.device.type]
        if not found:
            raise ops.BackendUnavailable(f"no Hadamard kernel for {t.device.type} in this recipe's hadamard_backend")
        fn = found[0]
    return fn(t, size, axis=axis, seed=seed, inverse=inverse)


def quantize_operand(t: torch.Tensor, op: OperandPlan, rng: torch.Tensor, extra_offset: int,
                     estimator: str, backend: str):
    """(fp32 fake-quantized operand, estimator factor or None)."""
    if op.kind == "fp32":
        return t.to(torch.float32), None
    if op.kind == "bf16":
        return t.to(torch.bfloat16).to(torch.float32), None
    quantizer = fake_quantize_op if torch.compiler.is_compiling() else fake_quantize_eager
    x_hat, factor = quantizer(t, op.fmt_json, op.rounding, rng, extra_offset, estimator, backend, op.sr_clipping)
    return x_hat, (factor if factor.numel() else None)


class QuantLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], rng: torch.Tensor,
                plan: LinearPlan, layer_seed: int):
        tokens, in_f = x.shape
        out_f = weight.shape[0]
        offsets, _ = slot_offsets(tokens, in_f, out_f, plan)
        ops_, had = plan.operands, plan.hadamard
        xq, x_factor = quantize_operand(_transform(x, had[0], -1, layer_seed, 0, impls=plan.hadamard_impls), ops_[0], rng, offsets[0],
                                        plan.estimator, plan.backend)
        wq, w_factor = quantize_operand(_transform(weight, had[0], -1, layer_seed, 0, impls=plan.hadamard_impls), ops_[1], rng, offsets[1],
                                        plan.estimator, plan.backend)
        y = xq @ wq.t()
        if bias is not None:
            y = y + bias.to(torch.float32)
        ctx.save_for_backward(x, weight, rng, x_factor, w_factor, wq if plan.reuse_weight else None)
        ctx.cfg = (plan, layer_seed, offsets, bias is not None, x.dtype, weight.dtype)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):   # a backward run under autocast
            return QuantLinearFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        x, weight, rng, x_factor, w_factor, wq_reused = ctx.saved_tensors
        plan, layer_seed, offsets, has_bias, x_dtype, w_dtype = ctx.cfg
        ops_, had, backend = plan.operands, plan.hadamard, plan.backend
        dy = grad_out.to(torch.float32)
        grad_x = grad_w = grad_b = None

        if ctx.needs_input_grad[0]:
            dyq, _ = quantize_operand(_transform(dy, had[1], -1, layer_seed, 1, impls=plan.hadamard_impls), ops_[2], rng, offsets[2], "ste", backend)
            if wq_reused is not None:
                wq = wq_reused
            else:
                wq, _ = quantize_operand(_transform(weight, had[1], 0, layer_seed, 1, impls=plan.hadamard_impls), ops_[3], rng, offsets[3],
                                         "ste", backend)
            grad_x = dyq @ wq
            if x_factor is not None:
                grad_x = _apply_factor(grad_x, x_factor, had[0], layer_seed, plan.hadamard_impls)
            grad_x = grad_x.to(x_dtype)

        if ctx.needs_input_grad[1]:
            pad = _padded_tokens(x.shape[0], had[2][0]) - x.shape[0]
            dy_w, x_w = dy, x
            if pad:
                dy_w = torch.nn.functional.pad(dy_w, (0, 0, 0, pad))
                x_w = torch.nn.functional.pad(x_w, (0, 0, 0, pad))
            dyq, _ = quantize_operand(_transform(dy_w, had[2], 0, layer_seed, 2, impls=plan.hadamard_impls), ops_[4], rng, offsets[4], "ste", backend)
            xq, _ = quantize_operand(_transform(x_w, had[2], 0, layer_seed, 2, impls=plan.hadamard_impls), ops_[5], rng, offsets[5], "ste", backend)
            grad_w = dyq.t() @ xq
            if w_factor is not None:
                grad_w = _apply_factor(grad_w, w_factor, had[0], layer_seed, plan.hadamard_impls)
            grad_w = grad_w.to(w_dtype)

        if has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def _apply_factor(grad: torch.Tensor, factor: torch.Tensor, hadamard: tuple, layer_seed: int,
                  impls: tuple) -> torch.Tensor:
    """Multiply by the forward quantizer's df/dx in the fprop (transformed) domain, and map back."""
    if not hadamard[0]:
        return grad * factor
    g_t = _transform(grad, hadamard, -1, layer_seed, 0, impls=impls) * factor
    return _transform(g_t, hadamard, -1, layer_seed, 0, inverse=True, impls=impls)


def quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], recipe,
                 rng: torch.Tensor, layer_seed: int = 0) -> torch.Tensor:
    """y = x W^T + b under ``recipe`` (a Recipe or its LinearPlan); x has any leading dims."""
    plan = recipe if isinstance(recipe, LinearPlan) else plan_for(recipe)
    lead = x.shape[:-1]
    dev = x.device.type
    # Under autocast the quantized GEMMs keep the recipe's numerics (autocast would recast the
    # reference's fp32 matmul of fake-quantized operands to bf16); the output takes the dtype
    # nn.Linear would give.
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    with torch.autocast(dev, enabled=False):
        y = QuantLinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, bias, rng, plan, layer_seed)
    y = y.reshape(*lead, weight.shape[0])
    return y if out_dtype is None else y.to(out_dtype)
