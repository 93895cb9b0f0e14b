"""The quantized linear layer as one autograd function (three quantized GEMMs).

  fprop  Y  = Q(X T_f) Q(W T_f)^T + b                   T_f along in_features
  dgrad  dX = Q(dY T_d) Q(T_d^T W)  (then the X-estimator factor, in the fprop domain)
  wgrad  dW = Q(T_w^T dY)^T Q(T_w^T X)  (then the W-estimator factor)   T_w along tokens
With ``Recipe.backward_operands="forward"`` (Quartet) the backward GEMMs read the forward's
quantized operands X_q = Q(X T_f) and W_q = Q(W T_f) instead of X and W, and run in the
fprop domain:  dX = (Q(dY T_d) Q(T_d^T W_q) * X-factor) T_f^T,
               dW = (Q(T_w^T dY)^T Q(T_w^T X_q) * W-factor) T_f^T:
the gradient of the forward the layer computed, re-quantized for the backward GEMMs.
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

import hashlib
import math
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch

from . import ops
from .distributed import data_parallel_amax
from .activation_operands import fused_x_operands, fusion_blocker
from .estimators import grad_factor
from .execution import kernels_for, note, note_quantizer
from .gemm import qgemm
from .gemm_operands import as_gemm_operand, element_scales
from .library import fake_quantize_eager, fake_quantize_op, format_from_json, format_to_json
from .tensor import QuantizedTensor
from .recipe import OperandConfig, Recipe
from .scaled_mm_gemm import scaled_mm_qgemm, verified
from .reference.hadamard import hadamard_transform

RANDOM_ROUNDINGS = ("stochastic", "ms_eden")   # roundings that draw Philox bits (counters reserved per slot)
SLOTS = ("fprop.lhs", "fprop.rhs", "dgrad.lhs", "dgrad.rhs", "wgrad.lhs", "wgrad.rhs")
SLOT_AXES = (-1, -1, -1, 0, 0, 0)   # blocks run along each GEMM's reduction axis


class OperandPlan(NamedTuple):
    kind: str            # "fp32" | "bf16" | "quant"
    fmt_json: str        # the QuantFormat the quantizer runs, block axis set, as JSON ("" if not quantized)
    rounding: str
    sr_clipping: bool = False
    amax_sync: bool = False   # all-reduce the tensor amax across the data-parallel group

    @property
    def stochastic(self) -> bool:
        return self.kind == "quant" and self.rounding in RANDOM_ROUNDINGS


class LinearPlan(NamedTuple):
    """A recipe lowered to plain strings and ints, so torch.compile traces it as constants."""
    operands: tuple      # six OperandPlan, in SLOTS order
    hadamard: tuple      # (size, random) for fprop, dgrad, wgrad
    estimator: str
    backend: str
    reuse_weight: bool   # dgrad may reuse fprop's quantized W (same 2D tiles, no transform)
    hadamard_impls: tuple  # ((device type, transform fn), ...) resolved when the plan is built
    key: str = ""        # names the plan to the custom ops (a digest of the recipe; see _PLANS)
    gemm_backend: str = "auto"   # which kernels compute the GEMMs (lowprec.execution)
    outlier_channels: int = 0    # OutControl: input channels computed in bf16 (Recipe.outlier_channels)
    from_forward: bool = False   # the backward GEMMs read the forward's quantized X and W (Recipe.backward_operands)


# Plans by key: torch.compile graphs call the quantized linear as opaque custom ops that take
# the plan's key (a string constant in the graph) and look the plan up here.
_PLANS: dict = {}


def _operand_plan(op: OperandConfig, axis: int, sync_amax: bool = False) -> OperandPlan:
    if op.format is None:
        return OperandPlan("fp32", "", op.rounding)
    if op.format == "bf16":
        return OperandPlan("bf16", "", op.rounding)
    fmt = op.effective_format
    fmt = fmt if fmt.block_2d else fmt.replace(axis=axis)
    return OperandPlan("quant", format_to_json(fmt), op.rounding, op.sr_clipping, sync_amax and fmt.tensor_scale)


# the operands that differ between data-parallel ranks: X (fprop), dY (dgrad), dY and X (wgrad)
RANK_LOCAL_SLOTS = (True, False, True, False, True, True)


@lru_cache(maxsize=None)
def plan_for(recipe: Recipe) -> LinearPlan:
    ops_ = (recipe.fprop.lhs, recipe.fprop.rhs, recipe.dgrad.lhs, recipe.dgrad.rhs, recipe.wgrad.lhs, recipe.wgrad.rhs)
    f = recipe.fprop
    from_forward = recipe.backward_operands == "forward"
    reuse = (recipe.dgrad.rhs == f.rhs and f.rhs.quantized and f.rhs.format.block_2d
             and not f.hadamard and not recipe.dgrad.hadamard and not f.rhs.stochastic and not from_forward)
    key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:32]
    plan = LinearPlan(tuple(_operand_plan(o, a, recipe.sync_tensor_amax and local)
                            for o, a, local in zip(ops_, SLOT_AXES, RANK_LOCAL_SLOTS)),
                      tuple((g.hadamard, g.hadamard_random) for g in (f, recipe.dgrad, recipe.wgrad)),
                      recipe.estimator, recipe.backend, reuse, _hadamard_impls(recipe), key, recipe.gemm_backend,
                      recipe.outlier_channels, from_forward)
    _PLANS.setdefault(key, plan)
    return plan


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
    x_hat, factor = quantizer(t, op.fmt_json, op.rounding, rng, extra_offset, estimator, backend, op.sr_clipping,
                              op.amax_sync)
    return x_hat, (factor if factor.numel() else None)


def clipped_mask(t: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """The ``clipped_ste`` factor of ``t`` quantized as ``q``, by ``estimators.grad_factor``
    from the codes' per-element s_eff (the same fp32 values the fake quantizer returns)."""
    return grad_factor("clipped_ste", t, None, element_scales(q), None, q.fmt.element.max)


def dequantize_codes(q: QuantizedTensor) -> torch.Tensor:
    """fp32 values of a quantized operand (what the fp32 matmul of the simulator multiplies)."""
    return ops.resolve("dequantize", "auto", q.device)(q, torch.float32)


def quantize_codes(t: torch.Tensor, op: OperandPlan, rng: torch.Tensor, extra_offset: int, backend: str):
    """The operand as a QuantizedTensor (codes and scales): the same quantization, bit for bit,
    as ``quantize_operand``'s fake-quantized values (same format, rounding, Philox bits)."""
    fmt = format_from_json(op.fmt_json)
    seed, offset = rng.tolist()
    amax = data_parallel_amax(t) if op.amax_sync else None
    fn = ops.resolve("quantize", backend, t.device)
    return fn(t, fmt, rounding=op.rounding, seed=seed, offset=offset + extra_offset, amax_tensor=amax,
              sr_clipping=op.sr_clipping)


def _fp4_gemm(gemm: str, a, b, a_t: bool, b_t: bool, kernel: str = "fp4_qgemm") -> torch.Tensor:
    """fp32 dequantize(A) @ dequantize(B)^T on the GEMM's quantized kernel; ``a_t`` / ``b_t``:
    the operand is the transpose of the quantized matrix (blocks along its axis 0).  The
    ``scaled_mm`` kernel runs once its first-use check on this device and format passed
    (``scaled_mm_gemm.verified``; it warns when it fails), else the Triton FP4 GEMM."""
    ga, gb = as_gemm_operand(a, a_t), as_gemm_operand(b, b_t)
    if kernel == "scaled_mm" and verified(ga.fmt, ga.device):
        note(gemm, "scaled_mm")
        return scaled_mm_qgemm(ga, gb)
    note(gemm, "fp4_qgemm")
    return qgemm(ga, gb, backend="triton")


def _wgrad_padded(t: torch.Tensor, plan: LinearPlan) -> torch.Tensor:
    """Tokens zero-padded to a multiple of the wgrad Hadamard size."""
    pad = _padded_tokens(t.shape[0], plan.hadamard[2][0]) - t.shape[0]
    return torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t


def wgrad_x_codes(x: torch.Tensor, out_f: int, rng, plan: LinearPlan, layer_seed: int):
    """wgrad's X operand, Q(T_w^T X) blocked along tokens, as codes: what the kernel path saves
    for backward instead of the fp32 X (computed in the forward pass from the same bits)."""
    tokens, in_f = x.shape
    offsets, _ = slot_offsets(tokens, in_f, out_f, plan)
    x_w = _transform(_wgrad_padded(x, plan), plan.hadamard[2], 0, layer_seed, 2, impls=plan.hadamard_impls)
    return quantize_codes(x_w, plan.operands[5], rng, offsets[5], plan.backend)


def _x_operands(x, rng, plan: LinearPlan, layer_seed: int, offsets, out_f: int, want_wgrad: bool):
    """fprop's quantized X and, with ``want_wgrad``, wgrad's (else None): from one fused pass
    when ``fusion_blocker`` allows (bit for bit the same codes), else quantized one by one."""
    tokens, in_f = x.shape
    if want_wgrad:
        blocker = fusion_blocker(plan, tokens, in_f, x.device.type)
        if blocker is None:
            note_quantizer("X", "row_col_fused")
            seeds = tuple(_hadamard_seed(layer_seed, i) if plan.hadamard[i][1] else None for i in (0, 2))
            return fused_x_operands(x, plan, rng, offsets, seeds)
        note_quantizer("X", f"two passes ({blocker})")
    x_t = _transform(x, plan.hadamard[0], -1, layer_seed, 0, impls=plan.hadamard_impls)
    qx = quantize_codes(x_t, plan.operands[0], rng, offsets[0], plan.backend)
    return qx, (wgrad_x_codes(x, out_f, rng, plan, layer_seed) if want_wgrad else None)


def _forward_math(x, weight, bias, rng, plan: LinearPlan, layer_seed: int, want_x_codes: bool = False):
    """(Y in x's dtype, X-estimator factor, W-estimator factor, fprop's quantized W kept for
    dgrad, fprop's quantized X kept for wgrad, wgrad's quantized X or None); the middle four
    are empty tensors when there is none (the quantized X and W are kept with
    ``plan.from_forward``, W also when dgrad reuses it).  ``want_x_codes``: also return wgrad's quantized X (the kernel path saves it for
    backward), made together with fprop's when the fprop GEMM runs on the kernel too."""
    tokens, in_f = x.shape
    out_f = weight.shape[0]
    offsets, _ = slot_offsets(tokens, in_f, out_f, plan)
    ops_, had, impls = plan.operands, plan.hadamard, plan.hadamard_impls
    none = x.new_empty(0, dtype=torch.float32)
    w_t = _transform(weight, had[0], -1, layer_seed, 0, impls=impls)
    q_xw = None
    if kernels_for(plan, x.device.type)[0].quantized:
        qx, q_xw = _x_operands(x, rng, plan, layer_seed, offsets, out_f, want_x_codes)
        qw = quantize_codes(w_t, ops_[1], rng, offsets[1], plan.backend)
        y = _fp4_gemm("fprop", qx, qw, False, False, kernels_for(plan, x.device.type)[0].kernel)
        x_factor = w_factor = wq = None          # dgrad quantizes W again from its codes' recipe
        if plan.estimator == "clipped_ste":      # the trust mask, from the codes' scales
            x_factor = clipped_mask(_transform(x, had[0], -1, layer_seed, 0, impls=impls), qx)
            w_factor = clipped_mask(w_t, qw)
        if plan.from_forward:
            xq, wq = dequantize_codes(qx), dequantize_codes(qw)
    else:
        note("fprop", "fp32_matmul")
        x_t = _transform(x, had[0], -1, layer_seed, 0, impls=impls)
        xq, x_factor = quantize_operand(x_t, ops_[0], rng, offsets[0], plan.estimator, plan.backend)
        wq, w_factor = quantize_operand(w_t, ops_[1], rng, offsets[1], plan.estimator, plan.backend)
        y = xq @ wq.t()
        wq = wq if plan.reuse_weight or plan.from_forward else None
    if bias is not None:
        y = y + bias.to(torch.float32)
    if want_x_codes and q_xw is None:
        q_xw = wgrad_x_codes(x, out_f, rng, plan, layer_seed)
    xq_kept = xq if plan.from_forward else None
    return (y.to(x.dtype), none if x_factor is None else x_factor, none if w_factor is None else w_factor,
            none if wq is None else wq, none if xq_kept is None else xq_kept, q_xw)


def _backward_math(grad_out, x, weight, rng, x_factor, w_factor, wq_reused, xq_kept, plan: LinearPlan,
                   layer_seed: int, need_x: bool, need_w: bool, need_b: bool, x_w_codes=None, x_meta=None):
    """(dX, dW, db) of the three quantized GEMMs; empty tensors for gradients not asked for.
    ``wq_reused`` / ``xq_kept``: the forward's quantized W / X (``plan.from_forward``; W also
    when dgrad reuses fprop's tiles), else empty.
    ``x_w_codes``: wgrad's quantized X, saved by the kernel path's forward in place of ``x``;
    ``x`` is None when the forward kept none (then ``x_meta`` = (shape, dtype) describes it)."""
    x_shape, x_dtype = (x.shape, x.dtype) if x is not None else x_meta
    tokens, in_f = x_shape
    out_f = weight.shape[0]
    offsets, _ = slot_offsets(tokens, in_f, out_f, plan)
    ops_, had, backend, impls = plan.operands, plan.hadamard, plan.backend, plan.hadamard_impls
    kernels = kernels_for(plan, grad_out.device.type)
    dy = grad_out.to(torch.float32)
    none = dy.new_empty(0)
    grad_x = grad_w = grad_b = none
    from_fwd = plan.from_forward
    w_src = wq_reused if from_fwd else weight        # from_forward: W_q, in the fprop domain
    x_src = xq_kept if from_fwd else x

    if need_x:
        dy_t = _transform(dy, had[1], -1, layer_seed, 1, impls=impls)
        if kernels[1].quantized:
            qdy = quantize_codes(dy_t, ops_[2], rng, offsets[2], backend)
            qw = quantize_codes(_transform(w_src, had[1], 0, layer_seed, 1, impls=impls), ops_[3], rng, offsets[3],
                                backend)
            grad_x = _fp4_gemm("dgrad", qdy, qw, False, True, kernels[1].kernel)
        else:
            note("dgrad", "fp32_matmul")
            dyq, _ = quantize_operand(dy_t, ops_[2], rng, offsets[2], "ste", backend)
            if wq_reused.numel() and not from_fwd:
                wq = wq_reused
            else:
                wq, _ = quantize_operand(_transform(w_src, had[1], 0, layer_seed, 1, impls=impls), ops_[3], rng,
                                         offsets[3], "ste", backend)
            grad_x = dyq @ wq
        grad_x = _to_input_domain(grad_x, x_factor, had[0], layer_seed, impls, from_fwd)
        grad_x = grad_x.to(x_dtype)

    if need_w:
        dy_w = _transform(_wgrad_padded(dy, plan), had[2], 0, layer_seed, 2, impls=impls)
        if kernels[2].quantized:
            qdy = quantize_codes(dy_w, ops_[4], rng, offsets[4], backend)
            qx = x_w_codes if x_w_codes is not None else wgrad_x_codes(x_src, out_f, rng, plan, layer_seed)
            grad_w = _fp4_gemm("wgrad", qdy, qx, True, True, kernels[2].kernel)
        else:
            note("wgrad", "fp32_matmul")
            dyq, _ = quantize_operand(dy_w, ops_[4], rng, offsets[4], "ste", backend)
            x_w = _transform(_wgrad_padded(x_src, plan), had[2], 0, layer_seed, 2, impls=impls)
            xq, _ = quantize_operand(x_w, ops_[5], rng, offsets[5], "ste", backend)
            grad_w = dyq.t() @ xq
        grad_w = _to_input_domain(grad_w, w_factor, had[0], layer_seed, impls, from_fwd)
        grad_w = grad_w.to(weight.dtype)

    if need_b:
        grad_b = dy.sum(0)
    return grad_x, grad_w, grad_b


# Under torch.compile the two bodies run as opaque custom ops: inductor would otherwise
# re-derive them (fusing the bias into the GEMM, reordering the bias-gradient sum and
# deleting the bf16 round trip of the "bf16" operands as a no-op cast), and the compiled
# layer would no longer compute what the eager one does.  As ops they are exactly the eager
# code, and compile in seconds.
@torch.library.custom_op("lowprec::quant_linear_forward", mutates_args=())
def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], rng: torch.Tensor,
                plan_key: str, layer_seed: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _unaliased(_forward_math(x, weight, bias, rng, _PLANS[plan_key], layer_seed)[:5], (x, weight, bias))


def _unaliased(outputs, inputs):
    """A custom op's outputs may alias neither its inputs nor each other: copy those that do
    (an fp32 operand passes through quantize_operand as itself; empties are shared)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    out = []
    for t in outputs:
        if not t.numel():
            t = t.new_empty(0)
        elif t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return tuple(out)


@_forward_op.register_fake
def _(x, weight, bias, rng, plan_key, layer_seed):
    plan = _PLANS[plan_key]
    factors = plan.estimator != "ste"
    f32 = torch.float32
    x_factor = x.new_empty(x.shape if factors and plan.operands[0].kind == "quant" else (0,), dtype=f32)
    w_factor = x.new_empty(weight.shape if factors and plan.operands[1].kind == "quant" else (0,), dtype=f32)
    reuse = plan.reuse_weight and not kernels_for(plan, x.device.type)[0].quantized  # as _forward_math
    wq = x.new_empty(weight.shape if reuse or plan.from_forward else (0,), dtype=f32)
    xq = x.new_empty(x.shape if plan.from_forward else (0,), dtype=f32)
    return x.new_empty((x.shape[0], weight.shape[0])), x_factor, w_factor, wq, xq


@torch.library.custom_op("lowprec::quant_linear_backward", mutates_args=())
def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rng: torch.Tensor,
                 x_factor: torch.Tensor, w_factor: torch.Tensor, wq_reused: torch.Tensor, xq_kept: torch.Tensor,
                 plan_key: str, layer_seed: int, need_x: bool, need_w: bool, need_b: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _backward_math(grad_out, x, weight, rng, x_factor, w_factor, wq_reused, xq_kept, _PLANS[plan_key],
                           layer_seed, need_x, need_w, need_b)
    return _unaliased(grads, (grad_out, x, weight, rng, x_factor, w_factor, wq_reused, xq_kept))


@_backward_op.register_fake
def _(grad_out, x, weight, rng, x_factor, w_factor, wq_reused, xq_kept, plan_key, layer_seed, need_x, need_w,
      need_b):
    f32 = torch.float32
    return (torch.empty_like(x) if need_x else x.new_empty(0, dtype=f32),
            torch.empty_like(weight) if need_w else x.new_empty(0, dtype=f32),
            x.new_empty((weight.shape[0],), dtype=f32) if need_b else x.new_empty(0, dtype=f32))


class QuantLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], rng: torch.Tensor,
                plan: LinearPlan, layer_seed: int):
        compiling = torch.compiler.is_compiling()
        # Backward needs X only for wgrad: on the kernel path keep its quantized operand (4-bit
        # codes and scales, the same bits the backward would draw) instead of the fp32 activations.
        keep_codes = (not compiling and ctx.needs_input_grad[1] and not plan.from_forward
                      and kernels_for(plan, x.device.type)[2].quantized)
        if compiling:
            y, x_factor, w_factor, wq, xq = _forward_op(x, weight, bias, rng, plan.key, layer_seed)
        else:
            y, x_factor, w_factor, wq, xq, q = _forward_math(x, weight, bias, rng, plan, layer_seed, keep_codes)
        ctx.cfg = (plan, layer_seed, bias is not None)
        ctx.x_codes, ctx.x_meta = None, (x.shape, x.dtype)
        saved_x, codes = x, ()
        if not compiling and (not ctx.needs_input_grad[1] or plan.from_forward):
            saved_x = None           # X only feeds wgrad: a frozen weight (PEFT's base) needs none, nor
            #                          a backward that reads the forward's quantized X
        elif keep_codes:
            ctx.x_codes = (q.fmt, q.shape, q.dtype, q.axis)
            saved_x = None
            codes = (q.codes, q.scales, q.tensor_scale if q.tensor_scale is not None else q.scales.new_empty(0))
        ctx.save_for_backward(saved_x, weight, rng, x_factor, w_factor, wq, xq, *codes)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, rng, x_factor, w_factor, wq, xq, *codes = ctx.saved_tensors
        plan, layer_seed, has_bias = ctx.cfg
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        with torch.autocast(grad_out.device.type, enabled=False):   # a backward run under autocast
            if torch.compiler.is_compiling():
                grads = _backward_op(grad_out, x, weight, rng, x_factor, w_factor, wq, xq, plan.key, layer_seed, *need)
            else:
                q = None
                if ctx.x_codes is not None:
                    ts = codes[2] if codes[2].numel() else None
                    q = QuantizedTensor(codes[0], codes[1], ts, *ctx.x_codes)
                grads = _backward_math(grad_out, x, weight, rng, x_factor, w_factor, wq, xq, plan, layer_seed, *need,
                                       x_w_codes=q, x_meta=ctx.x_meta)
        grad_x, grad_w, grad_b = (g if n else None for g, n in zip(grads, need))
        return grad_x, grad_w, grad_b, None, None, None


def _to_input_domain(grad: torch.Tensor, factor: torch.Tensor, hadamard: tuple, layer_seed: int, impls: tuple,
                     in_fprop_domain: bool) -> torch.Tensor:
    """A backward GEMM's gradient of X or W, times the forward quantizer's df/dx (``factor``,
    empty for the straight-through estimator), in the input domain. ``in_fprop_domain``: the
    GEMM read the forward's quantized operands, so its result is already in the fprop
    (transformed) domain: multiply, then map back; otherwise map there first."""
    if not factor.numel() and not in_fprop_domain:
        return grad                                    # STE on master operands: nothing to do
    if hadamard[0] and not in_fprop_domain:
        grad = _transform(grad, hadamard, -1, layer_seed, 0, impls=impls)
    if factor.numel():
        grad = grad * factor
    return _transform(grad, hadamard, -1, layer_seed, 0, inverse=True, impls=impls) if hadamard[0] else grad


def outlier_channel_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k input channels (last dim of x) with the largest max |x| over the other dims, in
    ascending order; ties go to the lower channel (a stable descending sort)."""
    amax = x.detach().reshape(-1, x.shape[-1]).abs().amax(0)
    order = torch.sort(amax.float(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], recipe,
                 rng: torch.Tensor, layer_seed: int = 0) -> torch.Tensor:
    """y = x W^T + b under ``recipe`` (a Recipe or its LinearPlan); x has any leading dims.
    With OutControl (``outlier_channels`` = k) the k channels of largest |x| are taken out of
    the quantized GEMMs (zeroed in their X) and computed as a bf16 GEMM of those columns of X
    and W, whose backward is bf16 as well:  y = Q-GEMMs(X ⊙ keep, W) + bf16(X_o) bf16(W_o)^T."""
    plan = recipe if isinstance(recipe, LinearPlan) else plan_for(recipe)
    if plan.outlier_channels:
        idx = outlier_channel_indices(x, min(plan.outlier_channels, x.shape[-1]))
        keep = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device).index_fill(0, idx, 0)
        y = _quant_linear(x * keep, weight, bias, plan, rng, layer_seed)
        y_o = torch.nn.functional.linear(x.index_select(-1, idx).to(torch.bfloat16),
                                         weight.index_select(1, idx).to(torch.bfloat16))
        return y + y_o.to(y.dtype)
    return _quant_linear(x, weight, bias, plan, rng, layer_seed)


def _quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], plan: LinearPlan,
                  rng: torch.Tensor, layer_seed: int) -> torch.Tensor:
    lead = x.shape[:-1]
    dev = x.device.type
    # Under autocast the quantized GEMMs keep the recipe's numerics (autocast would recast the
    # reference's fp32 matmul of fake-quantized operands to bf16); the output takes the dtype
    # nn.Linear would give.
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    with torch.autocast(dev, enabled=False):
        y = QuantLinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, bias, rng, plan, layer_seed)
    if len(lead) != 1:
        # A fresh tensor, not a view (``reshape`` would return one, and even a 2-D reshape to the
        # same shape is a view): FSDP2 hooks a module's output for backward, and an in-place op
        # on a view output (``y += residual``) drops that hook, silently skipping a gradient
        # reduction.  y is the GEMM's contiguous output, so the unsafe view aliases nothing else.
        y = torch.ops.aten._unsafe_view(y.contiguous(), (*lead, weight.shape[0]))
    return y if out_dtype is None else y.to(out_dtype)
