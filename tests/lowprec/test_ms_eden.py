"""MS-EDEN (Quartet II, rounding="ms_eden"): round-to-nearest elements, EDEN-corrected block
scales rounded stochastically from the block's Philox byte.

What must hold: it is unbiased through a random Hadamard transform (a statistical test that
round to nearest fails), and given the rotation its expectation satisfies EDEN's identity
<x, E x̂> = <x, x> per block; its error is well under half that of element-wise stochastic
rounding; the random draws sit in the scales alone and are the same on every backend."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import lowprec
from lowprec import ops
from lowprec.reference import hadamard_transform
from lowprec.reference import quantize as ref_quantize

NVFP4 = lowprec.get_format("nvfp4")
TRITON = ops.backend_status("triton")[0]


def _trials(x, rounding, n, hadamard=32, backend="auto"):
    """Errors of n independent draws (random signs and Philox bits), in x's domain."""
    errs = []
    for t in range(n):
        xh = hadamard_transform(x, hadamard, axis=-1, seed=1000 + t)
        q = lowprec.quantize(xh, NVFP4, rounding=rounding, seed=t, backend=backend).dequantize(torch.float32)
        errs.append(hadamard_transform(q, hadamard, axis=-1, seed=1000 + t, inverse=True) - x)
    return torch.stack(errs)


def _mean_z2(errs):
    mean, std = errs.mean(0), errs.std(0)
    return float(((mean / (std / errs.shape[0] ** 0.5)) ** 2).mean())


def test_unbiased_through_the_random_hadamard_transform():
    """Mean z^2 of the per-coordinate mean error is about 1 for an unbiased quantizer and
    well above 1 for a biased one; round to nearest on the same draws shows the test's power."""
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    z2_eden = _mean_z2(_trials(x, "ms_eden", 300))
    z2_rtn = _mean_z2(_trials(x, "nearest", 300))
    assert z2_eden < 1.3, z2_eden
    assert z2_rtn > 1.6, z2_rtn


def test_error_is_less_than_half_of_stochastic_rounding():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    xh = hadamard_transform(x, 32, axis=-1, seed=3)
    mse = {r: float((ref_quantize(xh, NVFP4, rounding=r, seed=5).dequantize(torch.float32) - xh).pow(2).mean())
           for r in ("stochastic", "ms_eden", "nearest")}
    assert mse["ms_eden"] < 0.5 * mse["stochastic"], mse
    assert mse["ms_eden"] < 1.1 * mse["nearest"], mse


def test_eden_identity_in_expectation_given_the_rotation():
    """Over the scale draws alone (fixed x), <x_b, mean x̂_b> -> <x_b, x_b> for every block;
    the element codes never change with the seed."""
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    draws = [ref_quantize(x, NVFP4, rounding="ms_eden", seed=s) for s in range(400)]
    assert all(torch.equal(d.codes, draws[0].codes) for d in draws)
    assert len({d.scales.tolist().__repr__() for d in draws[:20]}) > 1           # the scales are drawn
    mean = torch.stack([d.dequantize(torch.float32) for d in draws]).mean(0)
    xb, mb = x.reshape(-1, 16), mean.reshape(-1, 16)
    ratio = (xb * mb).sum(-1) / (xb * xb).sum(-1)
    assert float((ratio - 1).abs().max()) < 0.01, ratio


@pytest.mark.parametrize("backend", ["reference", "cpp"] + (["triton"] if TRITON else []))
@pytest.mark.parametrize("layout", ["rows", "cols", "tiles"])
def test_the_same_on_every_backend(backend, layout):
    fmt = {"rows": NVFP4, "cols": NVFP4.replace(axis=0), "tiles": NVFP4.replace(block_2d=True)}[layout]
    x = torch.randn(48, 80, generator=torch.Generator().manual_seed(5)) * 3
    want = ref_quantize(x, fmt, rounding="ms_eden", seed=7, offset=11)
    got = lowprec.quantize(x, fmt, rounding="ms_eden", seed=7, offset=11, backend=backend)
    assert torch.equal(got.codes, want.codes) and torch.equal(got.scales, want.scales)
    assert torch.equal(got.tensor_scale, want.tensor_scale)
    fake = lowprec.fake_quantize(x, fmt, rounding="ms_eden", seed=7, offset=11, backend=backend)
    assert torch.equal(fake, want.dequantize(torch.float32))


def test_headroom_and_checks():
    """The tensor scale is that of twice the amax, so a corrected scale cannot saturate."""
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    q = ref_quantize(x, NVFP4, rounding="ms_eden", seed=0)
    assert torch.equal(q.tensor_scale.reshape(()), torch.tensor(448.0 * 6.0) / (2 * x.abs().max()))
    with pytest.raises(ValueError, match="explicit seed"):
        ref_quantize(x, NVFP4, rounding="ms_eden")
    with pytest.raises(ValueError, match="minifloat scales"):
        lowprec.quantize(x, "mxfp4", rounding="ms_eden", seed=0)
    with pytest.raises(ValueError, match="minifloat scales"):
        lowprec.recipes.OperandConfig("mxfp4", "ms_eden")
    with pytest.raises(ValueError, match="use one"):
        ref_quantize(x, NVFP4.replace(four_over_six="mse"), rounding="ms_eden", seed=0)


def test_quartet2_preset_trains_and_reserves_bits():
    """quartet2: Four Over Six forward, MS-EDEN backward on Hadamard-32; its backward
    operands draw Philox bits (the layer's offset advances), the training loss falls."""
    from torch import nn
    torch.manual_seed(0)
    m = lowprec.convert_model(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)), "quartet2")
    r = lowprec.recipes.get("quartet2")
    assert r.dgrad.lhs.rounding == "ms_eden" and r.fprop.lhs.format.four_over_six == "mse"
    x, y = torch.randn(32, 64), torch.randn(32, 32)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    before = int(m[0].sr_offset)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (m(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert int(m[0].sr_offset) > before
    assert losses[-1] < 0.5 * losses[0]


IN_KERNEL = ["cpp"] + (["triton"] if TRITON else [])
EDEN_FORMATS = [NVFP4, NVFP4.replace(division="reciprocal"), lowprec.formats.UE5M3_FP4,
                NVFP4.replace(block_2d=True, axis=-1), NVFP4.replace(axis=0),
                lowprec.formats.UE5M3_FP4.replace(block_size=8),                  # groups narrower than a vector
                lowprec.formats.UE5M3_FP4.replace(block_size=32, block_2d=True)]


def _special(x):
    """x with a NaN, an all-zero block row and a tiny row (blocks that keep their scale, that
    correct nothing, and that sit near the bottom of the scale grid)."""
    x = x.clone()
    rows = x.view(-1, x.shape[-1])
    rows[1, 3] = float("nan")
    rows[5] = 0.0
    rows[2] *= 1e-6
    return x


@pytest.mark.parametrize("backend", IN_KERNEL)
@pytest.mark.parametrize("fmt", EDEN_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_compute_ms_eden_in_the_kernel_bit_exact(backend, fmt, dtype):
    """The cpp and Triton quantizers run MS-EDEN's scale pass inside their kernels (not the
    shared torch pass) and give the reference's codes, scales and x_hat, special blocks included."""
    from lowprec import ops
    for op in ("quantize", "fake_quantize"):
        assert getattr(ops.resolve(op, backend, "cpu"), "native_ms_eden", False)
    x = _special((torch.randn(64, 48, generator=torch.Generator().manual_seed(8)) * 2).to(dtype))
    want = ref_quantize(x, fmt, rounding="ms_eden", seed=3, offset=5)
    got = lowprec.quantize(x, fmt, rounding="ms_eden", seed=3, offset=5, backend=backend)
    assert torch.equal(got.codes, want.codes) and torch.equal(got.scales, want.scales)
    assert torch.equal(got.tensor_scale, want.tensor_scale)
    fake = lowprec.fake_quantize(x, fmt, rounding="ms_eden", seed=3, offset=5, backend=backend)
    assert torch.equal(fake.float().nan_to_num(7.0), want.dequantize(torch.float32).to(dtype).float().nan_to_num(7.0))


@pytest.mark.parametrize("fmt", EDEN_FORMATS)
@pytest.mark.parametrize("shape", [(8, 4096), (300, 64), (3, 5, 64), (2, 96, 80)])
def test_cpp_ms_eden_over_panel_shapes_and_scale_outputs(fmt, shape):
    """The cpp kernel's MS-EDEN over its panel geometries: rows longer than one work item
    (several column chunks per panel), short rows regrouped into longer ones, batched and
    ragged shapes; the fake quantizer's per-element s_eff and block amax (what the estimators
    read) equal the reference's, with the tensor amax taken from the data or given."""
    from lowprec.reference import ms_eden
    from lowprec.reference.fake import fake_quantize_with_scales as ref_fake
    x = _special(torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 3)
    kernel = ops.resolve("fake_quantize", "cpp", "cpu")
    for amax in (None, torch.tensor(5.0)):
        got = kernel(x, fmt, rounding="ms_eden", seed=9, offset=2, with_scales=True, amax_tensor=amax)
        want = ref_fake(x, fmt, "ms_eden", 9, 2, amax_tensor=amax)
        for g, w in zip(got, want):
            assert torch.equal(g.nan_to_num(7.0), w.nan_to_num(7.0))
    q = lowprec.quantize(x, fmt, rounding="ms_eden", seed=9, offset=2, backend="cpp")
    rq = ref_quantize(x, fmt, rounding="ms_eden", seed=9, offset=2)
    assert torch.equal(q.codes, rq.codes) and torch.equal(q.scales, rq.scales)
    rtn = ops.resolve("quantize", "cpp", "cpu")(x, fmt, "nearest", amax_tensor=ms_eden.headroom_amax(x, fmt, None))
    assert torch.equal(q.codes, rtn.codes)                    # the elements are those of round-to-nearest
    if q.scales.numel() >= 32:                                # and (over enough blocks) some scales moved
        assert not torch.equal(q.scales, rtn.scales)



@settings(max_examples=60, deadline=None)
@given(st.sampled_from(EDEN_FORMATS + [NVFP4.replace(tensor_scale=False)]), st.integers(1, 3), st.integers(0, 10_000),
       st.sampled_from([8, 16, 32, 64, 128]))
def test_cpp_ms_eden_bit_exact_over_random_shapes(fmt, ndim, seed, bs):
    """Any shape (padded blocks included), axis and block size, values spread over 2^±12:
    the cpp kernel's MS-EDEN equals the reference's x_hat, s_eff and block amax bit for bit."""
    from lowprec.reference.fake import fake_quantize_with_scales as ref_fake
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in torch.randint(1, 40, (ndim,), generator=g))
    f = fmt.replace(block_size=bs) if not (fmt.block_2d and ndim < 2) else fmt.replace(block_2d=False, block_size=bs)
    if not f.block_2d:
        f = f.replace(axis=int(torch.randint(-ndim, ndim, (1,), generator=g)))
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-12, 13, shape, generator=g).float())
    got = ops.resolve("fake_quantize", "cpp", "cpu")(x, f, rounding="ms_eden", seed=seed, offset=seed * 7)
    want = ref_fake(x, f, "ms_eden", seed, seed * 7)
    for a, b in zip(got, want):
        assert torch.equal(a, b), (f, shape)
