"""Fused Hadamard + quantize (Triton): bit-exact with the reference end to end. The kernel's
transform is the reference's butterfly, operation for operation, so its transformed values
and codes equal reference.hadamard_transform followed by reference.quantize (the contract
only asks for bit-exactness given the kernel's own transformed values, and >= 99.9% of codes
end to end)."""

import pytest
import torch

import lowprec
from lowprec import ops
from lowprec.reference import hadamard_transform
from lowprec.reference import quantize as ref_quantize

HAS = ops.backend_status("triton")[0] and "triton" in ops.implementations("hadamard_quantize")
pytestmark = pytest.mark.skipif(not HAS, reason="Triton kernels need a GPU or TRITON_INTERPRET=1")


def signed_index(q):
    """E2M1 codes as signed positions on the grid (-7..7), so 'one code apart' is |diff| <= 1."""
    c = q.element_codes().to(torch.int64)
    return torch.where(c >= 8, -(c - 8), c)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4", "ue5m3"])
@pytest.mark.parametrize("n", [16, 32, 64])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_fused_hadamard_quantize(fmt, n, rounding):
    if lowprec.get_format(fmt).block_size > n:
        pytest.skip(f"{fmt} blocks are longer than the Hadamard size {n}")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n, 3 * n, generator=g)
    x[:, 1] *= 40.0
    f = lowprec.get_format(fmt)
    hq = ops.resolve("hadamard_quantize", "triton")
    q_row, q_col, row_t, col_t = hq(x, n, fmt, rounding, seed=3, offset_row=5, offset_col=1 << 20,
                                    hadamard_seed=11, return_transformed=True)
    ref_row = ref_quantize(row_t, f.replace(axis=-1), rounding=rounding, seed=3, offset=5)
    ref_col = ref_quantize(col_t, f.replace(axis=0), rounding=rounding, seed=3, offset=1 << 20)
    for got, ref in ((q_row, ref_row), (q_col, ref_col)):
        assert torch.equal(got.codes, ref.codes) and torch.equal(got.scales, ref.scales)
        assert (got.tensor_scale is None) == (ref.tensor_scale is None)
        if got.tensor_scale is not None:
            assert torch.equal(got.tensor_scale, ref.tensor_scale)
    e2e_row = ref_quantize(hadamard_transform(x, n, axis=-1, seed=11), f.replace(axis=-1), rounding=rounding, seed=3, offset=5)
    e2e_col = ref_quantize(hadamard_transform(x, n, axis=0, seed=11), f.replace(axis=0), rounding=rounding, seed=3,
                           offset=1 << 20)
    for got, ref in ((q_row, e2e_row), (q_col, e2e_col)):
        assert torch.equal(got.codes, ref.codes) and torch.equal(got.scales, ref.scales)
    assert torch.equal(row_t, hadamard_transform(x, n, axis=-1, seed=11))
    assert torch.equal(col_t, hadamard_transform(x, n, axis=0, seed=11))
    # the column output is the wgrad operand: blocks along R, stored (C, R)
    assert q_col.axis == 0 and q_col.codes.shape == (3 * n, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
def test_fused_hadamard_quantize_low_precision_input(dtype, fmt):
    """bf16/fp16 X is widened as it loads and its transform rounded back to X's dtype, as the
    reference transform returns it: the codes are the reference's on the bf16/fp16 transform
    (not those of X's fp32 copy, whose transform keeps fp32 precision), packed two per byte."""
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    hq = ops.resolve("hadamard_quantize", "triton")
    got = hq(x, 32, fmt, "stochastic", seed=4, hadamard_seed=2)
    f = lowprec.get_format(fmt)
    for g, axis in zip(got, (-1, 0)):
        x_t = hadamard_transform(x, 32, axis=axis, seed=2)
        assert x_t.dtype == dtype
        w = ref_quantize(x_t, f.replace(axis=axis), rounding="stochastic", seed=4, offset=0)
        assert torch.equal(g.codes, w.codes) and torch.equal(g.scales, w.scales) and g.dtype == dtype
    fp32_copy = hq(x.float(), 32, fmt, "stochastic", seed=4, hadamard_seed=2)
    assert not torch.equal(fp32_copy[0].codes, got[0].codes)      # the rounding to X's dtype is not a no-op
    assert got[0].codes.shape == ((64, 48) if fmt == "nvfp4" else (64, 96))


def test_fused_hadamard_quantize_errors():
    hq = ops.resolve("hadamard_quantize", "triton")
    with pytest.raises(ValueError, match="multiples of 16"):
        hq(torch.randn(20, 32), 16)
    with pytest.raises(ValueError, match="n in"):
        hq(torch.randn(48, 48), 48)


ROW_COL_CASES = [  # (format, rounding, fprop Hadamard, wgrad Hadamard, shape, dtype)
    ("nvfp4", "nearest", 0, 16, (32, 64), torch.float32),        # the nvfp4 preset: RHT on wgrad only
    ("nvfp4", "stochastic", 16, 16, (48, 32), torch.bfloat16),
    ("mxfp4", "nearest", 32, 0, (64, 32), torch.float32),
    ("ue5m3", "nearest", 16, 16, (32, 32), torch.bfloat16),       # the ue5m3 preset
    ("mxfp4", "stochastic", 32, 128, (128, 128), torch.float32),
    ("nvfp4", "nearest", 0, 0, (16, 48), torch.float16),
    ("mxfp8", "stochastic", 64, 32, (64, 64), torch.float32),
]


@pytest.mark.parametrize("case", ROW_COL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-H{c[2]}-H{c[3]}")
def test_row_col_quantize_is_the_reference_bit_for_bit(case):
    """The fused quantizer of a layer's X (fprop operand with its Hadamard along the rows,
    wgrad operand with its own along the columns, each with its own signs and Philox
    offsets) writes exactly the codes, scales and tensor scales of the two reference
    quantizations it replaces."""
    fmt, rounding, h_r, h_c, shape, dtype = case
    f = lowprec.get_format(fmt)
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(h_r + h_c)) * 3)
    x[:, 1] *= 30.0
    x = x.to(dtype)
    rc = ops.resolve("row_col_quantize", "triton")
    q_row, q_col = rc(x, f, rounding, seed=7, offset_row=3, offset_col=999, row_hadamard=(h_r, 5),
                      col_hadamard=(h_c, 9 if h_c != h_r else None))
    x_r = hadamard_transform(x, h_r, axis=-1, seed=5) if h_r else x
    x_c = hadamard_transform(x, h_c, axis=0, seed=9 if h_c != h_r else None) if h_c else x
    want_r = ref_quantize(x_r, f.replace(axis=-1), rounding=rounding, seed=7, offset=3)
    want_c = ref_quantize(x_c, f.replace(axis=0), rounding=rounding, seed=7, offset=999)
    for got, want in ((q_row, want_r), (q_col, want_c)):
        assert torch.equal(got.codes, want.codes) and torch.equal(got.scales, want.scales)
        assert got.axis == want.axis and got.shape == want.shape and got.dtype == want.dtype
        assert (got.tensor_scale is None) == (want.tensor_scale is None)
        if got.tensor_scale is not None:
            assert torch.equal(got.tensor_scale.reshape(()), want.tensor_scale.reshape(()))


def test_row_col_quantize_reduces_the_tensor_amaxes():
    """``amax_reduce`` sees both tensor amaxes (what a data-parallel max would all-reduce) and
    its result sets the tensor scales: a doubled amax gives the scales of the reference fed
    that amax."""
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    f = lowprec.get_format("nvfp4")
    seen = []

    def double(am):
        seen.append(am.clone())
        return am * 2
    q_row, q_col = ops.resolve("row_col_quantize", "triton")(x, f, row_hadamard=(16, None), col_hadamard=(0, None),
                                                            amax_reduce=double)
    x_r = hadamard_transform(x, 16, axis=-1)
    assert torch.equal(seen[0], torch.stack((x_r.abs().max(), x.abs().max())))
    want_r = ref_quantize(x_r, f, amax_tensor=2 * x_r.abs().max())
    want_c = ref_quantize(x, f.replace(axis=0), amax_tensor=2 * x.abs().max())
    assert torch.equal(q_row.codes, want_r.codes) and torch.equal(q_row.scales, want_r.scales)
    assert torch.equal(q_col.codes, want_c.codes) and torch.equal(q_col.scales, want_c.scales)


def test_row_col_quantize_errors():
    rc = ops.resolve("row_col_quantize", "triton")
    with pytest.raises(ValueError, match="multiples of 32"):
        rc(torch.randn(48, 64), "mxfp4")                 # the tile holds a 32-element block
    with pytest.raises(ValueError, match="Hadamard sizes"):
        rc(torch.randn(64, 64), "nvfp4", row_hadamard=(8, None))
    with pytest.raises(ValueError, match="1D blocks"):
        rc(torch.randn(64, 64), lowprec.get_format("nvfp4").replace(block_2d=True))
