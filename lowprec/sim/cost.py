"""A cost model for recipes: the estimated time of a model's linear layers per training step,
relative to the same layers with bf16 GEMMs and no quantization (so bf16 = 1.0).

CPU timings of the simulator say nothing about a GPU (fake quantization runs fp32 matmuls), so
the sweep's overhead axis comes from this model, as the design-space study of FP4 training
does. Every number is stated here and can be changed through ``Machine``.

Per linear layer (T tokens, K = in_features, N = out_features) a step runs three GEMMs:
fprop (T x K by N x K), dgrad (T x N by K x N) and wgrad (N x T by K x T), each 2·T·K·N FLOPs.

- A GEMM runs at the tensor-core rate of its wider operand: FP4 when both are 4-bit, FP8 when
  both are at most 8-bit, BF16 otherwise (fp32 and bf16 operands, unconverted layers).
- Each quantized operand of E elements costs memory traffic and vector work, added:
    bytes   read 2 E (bf16 in), write E · bits / 8 codes + E / block scale bytes,
            plus 2 E for the amax pass of a tensor scale;
    vector  6 ops per element (scale, round, pack), plus 4 per element for stochastic rounding
            (a Philox4x32-10 call per 16 elements, about 60 integer ops);
    Hadamard of size n on the operand: a block matmul on the tensor cores, 2 n FLOPs per
            element at the BF16 rate (fused with the quantizer: no extra traffic);
    a forward estimator other than STE: 3 bytes per element (its factor) and 2 ops in backward;
    Four Over Six: 15 more ops per element (a second candidate scale, both candidates rounded
            to nearest, and their block errors), no extra traffic (one fused pass);
    the Gaussian (QuEST) block statistic: 4 more ops per element (x / amax, its square, the
            block sum), no extra traffic; a pre-scale is free (a tensor scale in the epilogue);
    backward operands from the forward's quantized X and W (Quartet): dgrad's W and wgrad's X
            read the forward's codes and scales instead of a 16-bit tensor;
    OutControl (k outlier channels): their three GEMMs at the BF16 rate, plus one read of X.
- A weight in 2-D tiles with no transform and nearest rounding is quantized once for fprop and
  dgrad (the same codes serve Wᵀ); otherwise each GEMM quantizes its own operand.

time = bytes / bandwidth + vector ops / vector rate + FLOPs / tensor rate. The default
``Machine`` is a Blackwell-class GPU (dense rates): FP4 9 PFLOP/s, FP8 4.5, BF16 2.25, vector
80 TFLOP/s, 8 TB/s. Tokens are those of one training batch.
"""

from __future__ import annotations

from dataclasses import dataclass

GEMM_SLOTS = (("fprop", "lhs", "T", "K"), ("fprop", "rhs", "N", "K"), ("dgrad", "lhs", "T", "N"),
              ("dgrad", "rhs", "N", "K"), ("wgrad", "lhs", "T", "N"), ("wgrad", "rhs", "T", "K"))


@dataclass(frozen=True)
class Machine:
    name: str = "Blackwell-class GPU (dense)"
    fp4_flops: float = 9e15
    fp8_flops: float = 4.5e15
    bf16_flops: float = 2.25e15
    vector_ops: float = 80e12
    bandwidth: float = 8e12
    quantize_ops: float = 6.0
    sr_ops: float = 4.0
    estimator_bytes: float = 3.0
    estimator_ops: float = 2.0
    four_over_six_ops: float = 15.0
    gaussian_ops: float = 4.0


def _bits(op) -> int:
    if not op.quantized:
        return 16
    return op.format.element.bits


def _gemm_rate(lhs, rhs, m: Machine) -> float:
    bits = max(_bits(lhs), _bits(rhs))
    return m.fp4_flops if bits <= 4 else m.fp8_flops if bits <= 8 else m.bf16_flops


def layer_time(recipe, tokens: int, in_f: int, out_f: int, machine: Machine = Machine()) -> float:
    """Seconds per training step of one linear layer under ``recipe`` (None: unconverted, bf16)."""
    dims = {"T": tokens, "K": in_f, "N": out_f}
    flops = 2.0 * tokens * in_f * out_f
    if recipe is None:
        return 3 * flops / machine.bf16_flops
    t = 0.0
    for gemm in ("fprop", "dgrad", "wgrad"):
        g = getattr(recipe, gemm)
        t += flops / _gemm_rate(g.lhs, g.rhs, machine)
    w_tiles_shared = (recipe.fprop.rhs == recipe.dgrad.rhs and recipe.fprop.rhs.quantized
                      and recipe.fprop.rhs.format.block_2d and not recipe.fprop.hadamard
                      and not recipe.dgrad.hadamard and not recipe.fprop.rhs.stochastic)
    for gemm, side, rows, cols in GEMM_SLOTS:
        g = getattr(recipe, gemm)
        op = getattr(g, side)
        if not op.quantized or (gemm == "dgrad" and side == "rhs" and w_tiles_shared):
            continue
        e = dims[rows] * dims[cols]
        fmt = op.format
        read = 2 * e
        source = recipe.fprop.rhs if (gemm, side) == ("dgrad", "rhs") else recipe.fprop.lhs
        if getattr(recipe, "backward_operands", "master") == "forward" and side == "rhs" and gemm != "fprop" \
                and source.quantized:
            read = e * source.format.element.bits / 8 + e / source.format.block_size
        nbytes = read + e * fmt.element.bits / 8 + e / fmt.block_size + (2 * e if fmt.tensor_scale else 0)
        ops = machine.quantize_ops * e + (machine.sr_ops * e if op.stochastic else 0)
        if fmt.four_over_six != "off":
            ops += machine.four_over_six_ops * e
        if fmt.scale_statistic == "gaussian":
            ops += machine.gaussian_ops * e
        t += nbytes / machine.bandwidth + ops / machine.vector_ops
        if g.hadamard:
            t += 2 * g.hadamard * e / machine.bf16_flops
    k = min(getattr(recipe, "outlier_channels", 0), in_f)
    if k:   # OutControl: the k channels' three GEMMs in bf16, and one read of X to find them
        t += 3 * 2.0 * tokens * k * out_f / machine.bf16_flops + 2.0 * tokens * in_f / machine.bandwidth
    if recipe.estimator != "ste" and recipe.fprop.lhs.quantized:
        e = tokens * in_f
        t += machine.estimator_bytes * e / machine.bandwidth + machine.estimator_ops * e / machine.vector_ops
    return t


def relative_cost(layers, tokens: int, recipe_of, machine: Machine = Machine()) -> float:
    """Sum over ``layers`` ((name, in_features, out_features)) of each layer's time under
    ``recipe_of(name)`` (a Recipe, or None for a layer left in bf16), over the bf16 time."""
    t = sum(layer_time(recipe_of(n), tokens, k, n_out, machine) for n, k, n_out in layers)
    base = sum(layer_time(None, tokens, k, n_out, machine) for _, k, n_out in layers)
    return t / base

