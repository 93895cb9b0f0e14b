"""Numerics a user can believe: NaN/Inf stay in their block, tiny tensors keep their codes,
stochastic rounding is unbiased by default (statistically, at every block maximum), random
Hadamard signs act inside the training recipes, and every public entry point dispatches
through the op table. Each test fails on the code before these were fixed."""

import math

import pytest
import torch

import lowprec
from lowprec import formats as F
from lowprec import ops
from lowprec.autograd import SLOTS, plan_for
from lowprec.library import fake_quantize_eager

PRESETS = ["mxfp4", "nvfp4", "ue5m3", "mxfp8", "mxfp6_e2m3", "mxfp6_e3m2"]
BACKENDS = [b for b in ("reference", "cpp", "triton") if ops.backend_status(b)[0]
            and b in ops.implementations("quantize")]


def block_index(fmt, i, j):
    """(row, block) of element (i, j) of a 2-D tensor with 1D blocks along the last dim."""
    return i, j // fmt.block_size


# -- NaN / Inf confined to their block -----------------------------------------------------------

def test_issue_reproducer_inf_does_not_reach_other_rows():
    x = torch.ones(2, 16)
    x[1, 3] = float("inf")
    for backend in BACKENDS:
        out = lowprec.quantize(x, "nvfp4", backend=backend).dequantize()
        assert torch.equal(out[0], torch.ones(16)), backend
        assert torch.isnan(out[1]).all(), backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", PRESETS)
@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_one_special_changes_only_its_block(backend, fmt, special, rounding):
    """x with one NaN/Inf against x with a 0 there: the tensor amax is over finite elements,
    so every other block keeps its scale and codes; the bad block dequantizes to NaN."""
    f = lowprec.get_format(fmt)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 4 * f.block_size, generator=g) * 100
    good, bad = x.clone(), x.clone()
    good[2, 5], bad[2, 5] = 0.0, special
    kw = dict(rounding=rounding, seed=5, backend=backend)
    qg, qb = lowprec.quantize(good, f, **kw), lowprec.quantize(bad, f, **kw)
    if f.tensor_scale:
        assert torch.equal(qg.tensor_scale, qb.tensor_scale)
    r, b = block_index(f, 2, 5)
    keep = torch.ones_like(qg.scales, dtype=torch.bool)
    keep[r, b] = False
    assert torch.equal(qg.scales[keep], qb.scales[keep])
    dg, db = qg.dequantize(torch.float32), qb.dequantize(torch.float32)
    other = torch.ones_like(dg, dtype=torch.bool)
    other[r, b * f.block_size:(b + 1) * f.block_size] = False
    assert torch.equal(dg[other], db[other])
    assert torch.isnan(db[r, b * f.block_size:(b + 1) * f.block_size]).all()


def test_nan_does_not_rescale_finite_blocks():
    """Before: a NaN set S_enc = 1, so a block of 1e4 came back as 2688."""
    x = torch.full((2, 16), 1e4)
    x[1, 0] = math.nan
    for backend in BACKENDS:
        out = lowprec.quantize(x, "nvfp4", backend=backend).dequantize()
        assert torch.equal(out[0], x[0]), backend


# -- tiny tensors ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["nvfp4", "ue5m3"])
@pytest.mark.parametrize("magnitude", [1e-36, 1e-37, 3e-38])
def test_tiny_tensor_keeps_its_codes(backend, fmt, magnitude):
    """amax below 2688 / fp32 max: S_enc is clamped to the fp32 max instead of replaced by 1
    (which made every code 0)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 64, generator=g) * magnitude
    q = lowprec.quantize(x, fmt, backend=backend)
    assert float(q.tensor_scale) == torch.finfo(torch.float32).max
    codes = q.element_codes()
    assert (codes & 7 != 0).float().mean() > 0.8            # the magnitudes survive
    x_hat = q.dequantize(torch.float32)
    assert (x_hat.double() - x.double()).norm() / x.double().norm() < 0.25   # FP4 error, not a wipe-out


# -- stochastic rounding unbiased by default --------------------------------------------------------
#
# For each format, 8 blocks whose maxima sit at different positions of their binade (for the
# floor rule, up to 7.9 scale units: the clipping worst case), each repeated N = 16384 times
# along the rows so that every copy draws its own Philox bytes. The mean of N draws of an
# unbiased quantizer at the block maximum m has a standard deviation of at most
# ulp / 2 / sqrt(N) <= m / 4 / 128 (the largest ulp relative to m is 1/2 with a non-clipping
# scale, at scaled values in [4, 6] for E2M1), so a 1% bound is > 5 standard deviations: the
# false-failure rate over the choice of seed is < 1e-6 per block, < 1e-3 over the whole test
# (240 blocks x backends). The test is deterministic for its fixed seed.

N_DRAWS = 16384
POSITIONS = torch.tensor([1.0, 1.1, 1.26, 1.4, 1.55, 1.7, 1.86, 1.98])


def sr_blocks(fmt) -> torch.Tensor:
    """8 blocks [8, block_size] whose maxima (element 0) sit at POSITIONS in their binades."""
    bs = fmt.block_size
    g = torch.Generator().manual_seed(bs)
    blocks = (torch.rand(len(POSITIONS), bs, generator=g) * 2 - 1) * 0.9
    blocks[:, 0] = 1.0
    return blocks * POSITIONS[:, None] * torch.exp2(torch.arange(len(POSITIONS)).float() * 3 - 10)[:, None]


def quantize_draws(quantize_fn, fmt, draws: int) -> torch.Tensor:
    """quantize_fn over the blocks repeated ``draws`` times (each copy draws its own Philox
    bytes), laid along the format's block axis; -> [draws, 8, block_size]."""
    blocks = sr_blocks(fmt)
    x = blocks.repeat(draws, 1)
    x_hat = quantize_fn(x.t().contiguous()).t() if fmt.axis == 0 and not fmt.block_2d else quantize_fn(x)
    return x_hat.reshape(draws, *blocks.shape)


def block_max_means(quantize_fn, fmt):
    """|mean of N_DRAWS draws / x - 1| at each block maximum."""
    mean = quantize_draws(quantize_fn, fmt, N_DRAWS).double().mean(0)
    return (mean[:, 0] / sr_blocks(fmt)[:, 0].double() - 1).abs()


CPU_FAST = [b for b in BACKENDS if b != "triton"]


@pytest.mark.parametrize("backend", CPU_FAST)
@pytest.mark.parametrize("fmt", PRESETS)
def test_stochastic_rounding_unbiased_at_block_max(backend, fmt):
    f = lowprec.get_format(fmt)
    err = block_max_means(lambda t: lowprec.fake_quantize(t, f, rounding="stochastic", seed=11, backend=backend), f)
    assert err.max() < 0.01, err


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton kernels need a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("fmt", PRESETS)
def test_triton_stochastic_draws_equal_the_reference(fmt):
    """The interpreter is too slow for 16384 draws; the Triton draws are the reference's bit for
    bit (same Philox bytes, same non-clipping scale), so the statistics above hold for it."""
    f = lowprec.get_format(fmt)
    got = [quantize_draws(lambda t: lowprec.fake_quantize(t, f, rounding="stochastic", seed=11, backend=b), f, 512)
           for b in ("triton", "reference")]
    assert torch.equal(*got)


def test_clipping_scale_is_biased_and_only_on_request():
    """The old behaviour is still there, but only as sr_clipping=True: the floor rule clips a
    block max of 7.9 scale units to 6, a -24% bias the unbiased default does not have."""
    f = F.MXFP4
    clip = block_max_means(lambda t: lowprec.fake_quantize(t, f, rounding="stochastic", seed=11, sr_clipping=True), f)
    assert clip.max() > 0.2
    q = lowprec.quantize(torch.randn(4, 32), "mxfp4", rounding="stochastic", seed=1)
    assert q.fmt.scale_rule == "rceil"
    q = lowprec.quantize(torch.randn(4, 32), "nvfp4", rounding="stochastic", seed=1)
    assert q.fmt.scale_rounding == "up"
    assert lowprec.quantize(torch.randn(4, 32), "mxfp4", rounding="stochastic", seed=1,
                            sr_clipping=True).fmt.scale_rule == "floor"
    assert lowprec.quantize(torch.randn(4, 32), "mxfp4").fmt == F.MXFP4   # nearest: the format as given


@pytest.mark.parametrize("recipe", lowprec.recipes.names())
def test_every_stochastic_operand_of_every_recipe_is_unbiased(recipe):
    """Through the exact path training takes (the recipe's plan and the custom op's body)."""
    plan = plan_for(lowprec.recipes.get(recipe))
    found = 0
    for i, (slot, op) in enumerate(zip(SLOTS, plan.operands)):
        if not op.stochastic:
            continue
        found += 1
        fmt = lowprec.library.format_from_json(op.fmt_json)
        rng = torch.tensor([11, 0], dtype=torch.int64)
        if op.rounding == "ms_eden":
            # MS-EDEN is unbiased through the random Hadamard transform its GEMM applies (not
            # element by element): the mean error over draws of signs and bits is at noise level
            assert mean_z2_through_hadamard(op, plan.hadamard[i // 2][0]) < 1.3, (recipe, slot)
            continue

        def run(t):
            return fake_quantize_eager(t, op.fmt_json, op.rounding, rng, 0, "ste", "auto", op.sr_clipping)[0]
        err = block_max_means(run, fmt)
        assert err.max() < 0.01, (recipe, slot, err)
    # every stochastic operand was checked (quartet2: its four MS-EDEN backward operands;
    # quartet: its four SR backward operands on the 3/4 pre-scale, which keeps the floor rule)
    assert found == {"nvfp4": 2, "nvfp4_4over6": 2, "quartet": 4, "quartet2": 4, "ue5m3": 2}.get(recipe, 0)


def mean_z2_through_hadamard(op, size: int, draws: int = 300) -> float:
    """Mean z^2 of the per-coordinate mean error of H^T Q(H x) over draws of the Hadamard
    signs and the Philox bits (about 1 when unbiased), x a fixed Gaussian block row set."""
    from lowprec.reference import hadamard_transform
    assert size, "an MS-EDEN operand of a recipe runs through a Hadamard transform"
    fmt = lowprec.library.format_from_json(op.fmt_json)
    x = torch.randn(4, 4 * size, generator=torch.Generator().manual_seed(1))
    x = x if fmt.axis != 0 else x.t().contiguous()
    axis = -1 if fmt.axis != 0 else 0
    errs = []
    for t in range(draws):
        xh = hadamard_transform(x, size, axis=axis, seed=1000 + t)
        q = fake_quantize_eager(xh, op.fmt_json, op.rounding, torch.tensor([t, 0]), 0, "ste", "auto")[0]
        errs.append(hadamard_transform(q, size, axis=axis, seed=1000 + t, inverse=True) - x)
    e = torch.stack(errs)
    return float(((e.mean(0) / (e.std(0) / draws ** 0.5)) ** 2).mean())


def test_recipe_description_names_the_sr_scale():
    d = lowprec.recipes.get("nvfp4").describe()
    assert "SR[scale rounded up]" in d
    clipped = lowprec.recipes.get("nvfp4", **{"wgrad.lhs.sr_clipping": True}).describe()
    assert "biased at block maxima" in clipped


# -- random Hadamard signs act inside the recipes -------------------------------------------------

def layer_grads(recipe, seed=0):
    torch.manual_seed(0)
    layer = lowprec.QuantLinear(64, 32, recipe=recipe, seed=seed)
    x = torch.randn(48, 64, requires_grad=True)
    y = layer(x)
    y.backward(torch.randn_like(y))
    return y.detach(), x.grad, layer.weight.grad


@pytest.mark.parametrize("recipe,knob", [("nvfp4", "wgrad.hadamard_random"), ("ue5m3", "fprop.hadamard_random"),
                                         ("ue5m3", "dgrad.hadamard_random"), ("ue5m3", "wgrad.hadamard_random")])
def test_random_hadamard_changes_recipe_results(recipe, knob):
    """Before: the nvfp4 gradients were bitwise equal with hadamard_random True and False."""
    on = layer_grads(lowprec.recipes.get(recipe, **{knob: True}))
    off = layer_grads(lowprec.recipes.get(recipe, **{knob: False}))
    gemm = knob.split(".")[0]
    changed = {"fprop": 0, "dgrad": 1, "wgrad": 2}[gemm]
    assert not torch.equal(on[changed], off[changed])


# -- one dispatch for every public entry point ----------------------------------------------------

def test_quantized_tensor_dequantize_uses_the_op_table():
    """q.dequantize() runs the backend lowprec.dequantize(q) runs (before: always the reference)."""
    calls = []
    impls = ops.implementations("dequantize")
    auto = ops.auto_backend("dequantize", "cpu")
    original = impls[auto]

    def spy(q, dtype=None):
        calls.append(q)
        return original(q, dtype=dtype)
    ops.register("dequantize", auto)(spy)
    try:
        q = lowprec.quantize(torch.randn(8, 64), "mxfp4")
        a = q.dequantize()
        b = lowprec.dequantize(q)
    finally:
        ops.register("dequantize", auto)(original)
    assert len(calls) == 2 and torch.equal(a, b)


def test_tensor_scale_needs_minifloat_block_scales():
    """e8m0/fp32 block scales with a tensor scale: S_enc's numerator overflows fp32, which made
    the tensor scale silently 1 before; now the format refuses."""
    with pytest.raises(ValueError, match="minifloat"):
        F.MXFP8.replace(tensor_scale=True)
    with pytest.raises(ValueError, match="minifloat"):
        F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax", tensor_scale=True)


def test_format_fields_are_type_checked():
    with pytest.raises(TypeError, match="axis"):
        F.MXFP4.replace(axis=1.5)
    with pytest.raises(TypeError, match="tensor_scale"):
        F.NVFP4.replace(tensor_scale=1)
    with pytest.raises(ValueError, match="block_size"):
        F.MXFP4.replace(block_size=True)
