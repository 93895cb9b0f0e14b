"""Quartet (MXFP4 forward and backward): QuEST's Gaussian clipping scale, the trust mask, the
3/4 pre-scale, backward GEMMs on the forward's quantized operands, and the presets."""

import math

import pytest
import torch

import lowprec
from lowprec import ops
from lowprec.estimators import grad_factor
from lowprec.formats import (E2M1, MXFP4, NVFP4, QuantFormat, clips_block_max, effective_format,
                             gaussian_clip_ratio)
from lowprec.reference.hadamard import hadamard_transform
from lowprec.reference.quantize import dequantize, quantize
from lowprec.reference.fake import fake_quantize_with_scales

QUEST = MXFP4.replace(scale_statistic="gaussian", scale_rule="rfloor")
PRE = MXFP4.replace(pre_scale=0.75)


def _mse_numeric(c: float, n: int = 400_001) -> float:
    """E[(x - Q_c(x))^2], x ~ N(0, 1), by the trapezoid rule on [-12, 12] (independent of
    the closed form in formats.py)."""
    x = torch.linspace(-12.0, 12.0, n, dtype=torch.float64)
    grid = torch.tensor(E2M1.positive_grid(), dtype=torch.float64) * (c / 6.0)
    a = x.abs().clamp(max=c)
    q = grid[(a[:, None] - grid[None, :]).abs().argmin(1)]
    err = (x.abs() - q) ** 2 * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return float(torch.trapezoid(err, x))


def test_gaussian_clip_ratio_is_the_mse_optimal_clip_of_a_gaussian():
    k = gaussian_clip_ratio(E2M1)
    assert abs(k - 2.92247507137) < 2.4e-7                  # the fp32 nearest the exact optimum
    at = _mse_numeric(k)
    for c in (k - 0.05, k + 0.05, k - 0.3, k + 0.3):
        assert _mse_numeric(c) > at
    assert QUEST.gaussian_kappa == k


def test_gaussian_scale_is_rfloor_of_the_clipping_value():
    """The scale exponent is floor(log2(kappa * rms / 6)), checked in fp64 away from binade edges."""
    torch.manual_seed(0)
    x = torch.randn(256, 64) * torch.logspace(-3, 3, 256)[:, None]
    q = quantize(x, QUEST)
    blocks = x.double().reshape(256, 2, 32)
    c = gaussian_clip_ratio(E2M1) * blocks.pow(2).mean(-1).sqrt()
    want = torch.floor(torch.log2(c / 6.0))
    near_edge = (torch.log2(c / 6.0) - torch.round(torch.log2(c / 6.0))).abs() < 1e-5
    got = q.scales.to(torch.int64) - 127
    assert (got[~near_edge] == want[~near_edge].to(torch.int64)).all()
    # the Gaussian scale clips by design: some elements saturate on Gaussian data
    xs = x.reshape(256, 2, 32) / torch.exp2(got.float())[..., None]
    assert (xs.abs() > 6).any()


def test_gaussian_statistic_edge_cases():
    x = torch.zeros(3, 32)
    x[1, 5] = float("nan")
    x[2, :] = 3.0e38                                   # finite, squares would overflow
    q = quantize(x, QUEST)
    assert q.scales[0, 0] == 0 and q.scales[1, 0] == 0xFF
    assert q.scales[2, 0] != 0xFF                       # a finite block never gets the NaN scale
    assert torch.isfinite(dequantize(q)[2]).all()


def test_trust_mask_zeroes_exactly_the_clipped_elements():
    torch.manual_seed(1)
    x = torch.randn(64, 128)
    xh, s_eff, amax = fake_quantize_with_scales(x, QUEST)
    mask = grad_factor("clipped_ste", x, xh, s_eff, amax, 6.0)
    clipped = (x / s_eff).abs() > 6.0                  # power-of-two scales: x / s is exact
    assert clipped.any() and (~clipped).any()
    assert torch.equal(mask == 0, clipped)
    assert torch.equal(mask[~clipped], torch.ones_like(mask[~clipped]))


def test_pre_scale_three_quarters_never_clips_and_is_the_scaled_grid():
    torch.manual_seed(2)
    x = torch.randn(512, 32) * torch.logspace(-2, 2, 512)[:, None]
    x[0, 0] = 8.0 - 2 ** -20                          # block max just below a binade edge
    x[1, 0] = 4.0                                     # and on one
    q = quantize(x, PRE)
    assert float(q.tensor_scale) == 0.75
    codes = q.element_codes()
    assert int((codes & 7).max()) <= 7
    vals = E2M1.table()[codes.long()]
    s = torch.exp2(q.scales.float() - 127).reshape(512, 1)
    # floor rule on the amax, elements x / (s / 0.75): the block max lands below 6, never clipped
    amax = x.abs().amax(-1, keepdim=True)
    assert torch.equal(s, torch.exp2((torch.frexp(amax).exponent - 1 - 2).float()))
    assert ((x / (s / 0.75)).abs() <= 6.0).all()
    assert torch.equal(dequantize(q, torch.float32), vals * (s / torch.tensor(0.75)))
    assert not clips_block_max(PRE) and clips_block_max(MXFP4)
    assert clips_block_max(MXFP4.replace(pre_scale=0.875))
    assert effective_format(PRE, "stochastic") == PRE           # no switch to rceil: it cannot clip


def test_pre_scale_stochastic_rounding_is_unbiased():
    torch.manual_seed(3)
    x = torch.randn(8, 32)
    x[:, 0] = x.abs().amax(-1) * 1.0                   # block maxima included
    draws = torch.stack([dequantize(quantize(x, PRE, "stochastic", seed=7, offset=i * 64), torch.float32)
                         for i in range(1500)])
    err = (draws.mean(0) - x).abs()
    ulp = torch.exp2(torch.floor(torch.log2(x.abs().amax(-1, keepdim=True))) - 2) / 0.75   # s_eff
    assert (err <= 0.12 * ulp + 2 ** -8 * ulp * 4).all()


def test_sr_with_the_gaussian_scale_needs_an_explicit_choice():
    with pytest.raises(ValueError, match="clips by design"):
        quantize(torch.randn(4, 32), QUEST, "stochastic", seed=1)
    quantize(torch.randn(4, 32), QUEST, "stochastic", seed=1, sr_clipping=True)


@pytest.mark.parametrize("bad", [dict(pre_scale=0.0), dict(pre_scale=1.5), dict(pre_scale=0.1),
                                 dict(scale_statistic="median"), dict(scale_statistic="gaussian", scale="fp32",
                                                                      scale_rule="amax")])
def test_bad_format_fields_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        MXFP4.replace(**bad)


def test_pre_scale_and_gaussian_refuse_unsupported_combinations():
    with pytest.raises(ValueError, match="pre_scale"):
        NVFP4.replace(pre_scale=0.75)
    with pytest.raises(ValueError, match="four_over_six"):
        NVFP4.replace(scale_statistic="gaussian", four_over_six="mse")
    with pytest.raises(ValueError, match="scale_grad"):
        lowprec.recipe.get("quartet", estimator="scale_grad")


def test_formats_round_trip_and_old_json_is_unchanged():
    for f in (QUEST, PRE, NVFP4.replace(scale_statistic="gaussian")):
        assert QuantFormat.from_dict(f.to_dict()) == f
    assert "pre_scale" not in MXFP4.to_dict() and "scale_statistic" not in MXFP4.to_dict()
    r = lowprec.recipe.get("quartet")
    assert lowprec.recipe.Recipe.from_json(r.to_json()) == r
    assert "backward_operands" not in lowprec.recipe.get("nvfp4").to_dict()


# -- fast backends, bit for bit --------------------------------------------------------------

FORMATS = {"quest": QUEST, "quest_floor": MXFP4.replace(scale_statistic="gaussian"),
           "quest_nvfp4": NVFP4.replace(scale_statistic="gaussian"), "pre34": PRE,
           "quest_2d": QUEST.replace(block_2d=True, block_size=16), "pre34_rcp": PRE.replace(division="reciprocal")}


def _backends():
    return [b for b in ("cpp", "triton") if ops.backend_status(b)[0]]


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backends_bit_exact(name, axis, dtype):
    fmt = FORMATS[name]
    if fmt.block_2d and axis == 0:
        pytest.skip("2-D tiles have no axis")
    fmt = fmt.replace(axis=axis)
    torch.manual_seed(4)
    x = (torch.randn(48, 64) * torch.logspace(-4, 4, 48)[:, None]).to(dtype)
    x[3, 7] = float("nan")
    x[5, :] = 0.0
    roundings = ["nearest"] + (["stochastic"] if not clips_block_max(fmt) else [])
    for backend in _backends():
        for rounding in roundings:
            kw = dict(seed=11, offset=5) if rounding == "stochastic" else {}
            ref = ops.resolve("quantize", "reference")(x, fmt, rounding, **kw)
            got = ops.resolve("quantize", backend, x.device)(x, fmt, rounding, **kw)
            assert torch.equal(got.codes, ref.codes), (backend, rounding)
            assert torch.equal(got.scales, ref.scales), (backend, rounding)
            assert (got.tensor_scale is None) == (ref.tensor_scale is None)
            if ref.tensor_scale is not None:
                assert torch.equal(got.tensor_scale, ref.tensor_scale)
            rf = ops.resolve("fake_quantize", "reference")(x, fmt, rounding, **kw)
            gf = ops.resolve("fake_quantize", backend, x.device)(x, fmt, rounding, **kw)
            for a, b in zip(rf, gf):
                assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)), (backend, rounding)
            assert torch.equal(ops.resolve("dequantize", backend, x.device)(ref).nan_to_num(7.0),
                               dequantize(ref).nan_to_num(7.0))


@pytest.mark.skipif(not ops.backend_status("triton")[0], reason="triton is not installed")
@pytest.mark.parametrize("name", ["quest", "pre34"])
def test_fused_hadamard_quantize_bit_exact(name):
    from lowprec._backends.triton import row_col_quantize
    fmt = FORMATS[name]
    torch.manual_seed(5)
    x = torch.randn(64, 64) * 3
    rounding = "nearest" if name == "quest" else "stochastic"
    q_row, q_col, row_t, col_t = row_col_quantize(x, fmt, rounding, 9, 0, 512, (32, None), (32, 123),
                                                  return_transformed=True)
    ref_r = quantize(row_t, fmt.replace(axis=-1), rounding, seed=9, offset=0)
    ref_c = quantize(col_t, fmt.replace(axis=0), rounding, seed=9, offset=512)
    assert torch.equal(q_row.codes, ref_r.codes) and torch.equal(q_row.scales, ref_r.scales)
    assert torch.equal(q_col.codes, ref_c.codes) and torch.equal(q_col.scales, ref_c.scales)
    assert torch.equal(row_t, hadamard_transform(x, 32, axis=-1))
    assert q_row.tensor_scale is not None if fmt.encode_scaled else q_row.tensor_scale is None


# -- the layer -------------------------------------------------------------------------------

def _layer(recipe, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(64, 32, bias=False)
    recipe = lowprec.recipe.get(recipe) if isinstance(recipe, str) else recipe
    return lowprec.QuantLinear.from_module(lin, recipe, name="l"), lin.weight.detach().clone()


def test_backward_reads_the_forward_quantized_operands():
    """With fp32 backward operands and no backward transform, Quartet's gradients are exactly
    (dY W_q ⊙ M_x) H^T and (dY^T X_q ⊙ M_w) H^T."""
    r = lowprec.recipe.get("quartet", **{"dgrad.lhs.format": None, "dgrad.rhs.format": None,
                                          "wgrad.lhs.format": None, "wgrad.rhs.format": None,
                                          "dgrad.hadamard": 0, "wgrad.hadamard": 0})
    layer, w = _layer(r)
    torch.manual_seed(6)
    x = torch.randn(16, 64, requires_grad=True)
    dy = torch.randn(16, 32)
    layer(x).backward(dy)
    xh = hadamard_transform(x.detach(), 32, axis=-1)
    wh = hadamard_transform(w, 32, axis=-1)
    xq, sx, ax = fake_quantize_with_scales(xh, QUEST)
    wq, sw, aw = fake_quantize_with_scales(wh, QUEST)
    mx = grad_factor("clipped_ste", xh, xq, sx, ax, 6.0)
    mw = grad_factor("clipped_ste", wh, wq, sw, aw, 6.0)
    gx = hadamard_transform((dy @ wq) * mx, 32, axis=-1, inverse=True)
    gw = hadamard_transform((dy.t() @ xq) * mw, 32, axis=-1, inverse=True)
    torch.testing.assert_close(x.grad, gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-6)
    # in the transformed domain the gradient vanishes exactly where X clipped
    g_dom = hadamard_transform(x.grad, 32, axis=-1)
    assert (mx == 0).any()
    assert g_dom[mx == 0].abs().max() < 1e-5 * g_dom.abs().max()
    # the master-operand variant computes a different gradient (dY W, not dY W_q)
    layer2, _ = _layer(r.replace(backward_operands="master"))
    x2 = x.detach().clone().requires_grad_(True)
    layer2(x2).backward(dy)
    assert not torch.allclose(x2.grad, x.grad, atol=1e-4)


@pytest.mark.parametrize("name", ["quartet", "quartet_rtn"])
def test_quartet_layer_gradients_track_the_exact_ones(name):
    layer, w = _layer(name)
    torch.manual_seed(7)
    x = torch.randn(64, 64, requires_grad=True)
    dy = torch.randn(64, 32)
    y = layer(x)
    y.backward(dy)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = w.clone().requires_grad_(True)
    (x_ref @ w_ref.t()).backward(dy)
    for got, want in ((y.detach(), x.detach() @ w.t()), (x.grad, x_ref.grad), (layer.weight.grad, w_ref.grad)):
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.9, (name, float(cos))


def test_quartet_backward_randomness_and_reproducibility():
    layer, _ = _layer("quartet")
    torch.manual_seed(8)
    x = torch.randn(32, 64)
    dy = torch.randn(32, 32)
    grads = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        layer.weight.grad = None
        layer(xi).backward(dy)
        grads.append(xi.grad.clone())
    assert not torch.equal(grads[0], grads[1])        # the module's offset advances: fresh SR bits
    layer2, _ = _layer("quartet")
    xi = x.clone().requires_grad_(True)
    layer2(xi).backward(dy)
    assert torch.equal(xi.grad, grads[0])              # same seed and offset: the same gradient


@pytest.mark.skipif(not ops.backend_status("triton")[0], reason="triton is not installed")
@pytest.mark.parametrize("name", ["quartet", "quartet_rtn", "nvfp4+clipped_ste"])
def test_kernel_path_matches_the_simulator(name):
    """All three GEMMs on the FP4 kernel (the trust mask from the codes' scales, the pre-scale
    as the operands' tensor scale) against the simulator's fp32 matmuls: same quantized
    operands, so the results agree to summation order."""
    from lowprec.execution import record_kernels
    outs = {}
    for mode in ("simulate", "kernels"):
        base, _, est = name.partition("+")
        extra = {"estimator": est} if est else {}
        layer, _ = _layer(lowprec.recipe.get(base, gemm_backend=mode, **extra))
        torch.manual_seed(9)
        x = torch.randn(64, 64, requires_grad=True)
        with record_kernels() as calls:
            y = layer(x)
            y.backward(torch.randn(64, 32, generator=torch.Generator().manual_seed(10)))
        assert {k for _, k in calls} == ({"fp32_matmul"} if mode == "simulate" else {"fp4_qgemm"})
        outs[mode] = (y.detach(), x.grad, layer.weight.grad)
    for a, b in zip(outs["simulate"], outs["kernels"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_element_scales_match_the_reference_s_eff():
    from lowprec.gemm_operands import element_scales
    torch.manual_seed(11)
    x = torch.randn(48, 64)
    for fmt in (QUEST, PRE, NVFP4, NVFP4.replace(block_2d=True), MXFP4.replace(axis=0)):
        _, s_eff, _ = fake_quantize_with_scales(x, fmt)
        assert torch.equal(element_scales(quantize(x, fmt)), s_eff), fmt


def test_cost_model_charges_the_gaussian_statistic_and_credits_forward_operands():
    from lowprec.sim.cost import layer_time
    q = lowprec.recipe.get("quartet")
    t = layer_time(q, 8192, 4096, 4096)
    amax_fwd = q.replace(**{"fprop.lhs.format": MXFP4.replace(scale_rule="rfloor"),
                            "fprop.rhs.format": MXFP4.replace(scale_rule="rfloor")})
    assert layer_time(amax_fwd, 8192, 4096, 4096) < t                      # 4 ops per element fewer
    master = q.replace(backward_operands="master")
    assert layer_time(master, 8192, 4096, 4096) > t                        # reads bf16 X and W again


from hypothesis import given, settings          # noqa: E402
from hypothesis import strategies as st         # noqa: E402


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                       min_size=32, max_size=32),
       scale=st.sampled_from([MXFP4.replace(scale_statistic="gaussian", scale_rule=r) for r in ("rfloor", "floor")]
                             + [NVFP4.replace(scale_statistic="gaussian")]))
def test_gaussian_scale_of_any_finite_block_is_finite_and_the_same_on_every_backend(values, scale):
    x = torch.tensor(values, dtype=torch.float32).reshape(1, 32)
    ref = quantize(x, scale)
    nan_code = 0xFF if scale.scale.kind == "e8m0" else scale.scale.nan_code
    assert int(ref.scales.flatten()[0]) != nan_code
    assert torch.isfinite(dequantize(ref, torch.float32)).all()
    for backend in _backends():
        got = ops.resolve("quantize", backend, x.device)(x, scale)
        assert torch.equal(got.codes, ref.codes) and torch.equal(got.scales, ref.scales), backend


@pytest.mark.parametrize("name", ["quartet", "quartet_rtn", "nvfp4+clipped_ste", "nvfp4"])
def test_diagnose_reports_the_gemms_the_layer_computes(name):
    """lowprec diagnose quantizes each layer as the recipe does: its dX and dW are the layer's
    own gradients (trust mask applied, Quartet's backward on the forward's quantized operands)."""
    from lowprec.autograd import quant_linear
    from lowprec.diagnose import quantized_gemms
    base, _, est = name.partition("+")
    recipe = lowprec.recipe.get(base, **({"estimator": est} if est else {}))
    torch.manual_seed(12)
    x, w, dy = torch.randn(48, 64), torch.randn(32, 64) / 8, torch.randn(48, 32)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = quant_linear(xr, wr, None, recipe, torch.tensor([3, 0]), layer_seed=3)
    y.backward(dy)
    _, _, (y_d, dx_d, dw_d) = quantized_gemms(x, w, dy, recipe, seed=3, offset=0)
    for got, want in ((y_d, y.detach()), (dx_d, xr.grad), (dw_d, wr.grad)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
