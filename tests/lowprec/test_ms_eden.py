"""MS-EDEN (Quartet II, rounding="ms_eden"): round-to-nearest elements, EDEN-corrected block
scales rounded stochastically from the block's Philox byte.

What must hold: it is unbiased through a random Hadamard transform (a statistical test that
round to nearest fails), and given the rotation its expectation satisfies EDEN's identity
<x, E x̂> = <x, x> per block; its error is well under half that of element-wise stochastic
rounding; the random draws sit in the scales alone and are the same on every backend."""

import pytest
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


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
@pytest.mark.parametrize("fmt", [NVFP4, NVFP4.replace(division="reciprocal"), lowprec.formats.UE5M3_FP4,
                                 NVFP4.replace(block_2d=True, axis=-1), NVFP4.replace(axis=0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_computes_ms_eden_in_its_kernel_bit_exact(fmt, dtype):
    """The Triton quantizer runs MS-EDEN's scale pass inside its kernel (not the shared torch
    pass) and still gives the reference's codes and scales, special blocks included."""
    from lowprec import ops
    for op in ("quantize", "fake_quantize"):
        assert getattr(ops.resolve(op, "triton", "cpu"), "native_ms_eden", False)
    x = (torch.randn(64, 48, generator=torch.Generator().manual_seed(8)) * 2).to(dtype)
    x[1, 3] = float("nan")
    x[5] = 0.0
    x[9] *= 1e-6
    want = ref_quantize(x, fmt, rounding="ms_eden", seed=3, offset=5)
    got = lowprec.quantize(x, fmt, rounding="ms_eden", seed=3, offset=5, backend="triton")
    assert torch.equal(got.codes, want.codes) and torch.equal(got.scales, want.scales)
    assert torch.equal(got.tensor_scale, want.tensor_scale)
    fake = lowprec.fake_quantize(x, fmt, rounding="ms_eden", seed=3, offset=5, backend="triton")
    assert torch.equal(fake.float().nan_to_num(7.0), want.dequantize(torch.float32).to(dtype).float().nan_to_num(7.0))
