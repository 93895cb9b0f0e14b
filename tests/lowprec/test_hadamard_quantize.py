"""Fused Hadamard + quantize (Triton): bit-exact when the reference is fed the kernel's own
transformed values; end to end >= 99.9% of codes identical and none more than one code
apart (docs/numerics.md, "How backends are compared")."""

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
        d = (signed_index(got) - signed_index(ref)).abs()
        assert (d == 0).float().mean() >= 0.999 and int(d.max()) <= 1
    # the column output is the wgrad operand: blocks along R, stored (C, R)
    assert q_col.axis == 0 and q_col.codes.shape == (3 * n, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
def test_fused_hadamard_quantize_low_precision_input(dtype, fmt):
    """bf16/fp16 X is widened as it loads: the same codes as its exact fp32 copy, and the
    packed 4-bit codes as pack_nibbles of the unpacked ones."""
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    hq = ops.resolve("hadamard_quantize", "triton")
    got = hq(x, 32, fmt, "stochastic", seed=4, hadamard_seed=2)
    want = hq(x.float(), 32, fmt, "stochastic", seed=4, hadamard_seed=2)
    for g, w in zip(got, want):
        assert torch.equal(g.codes, w.codes) and torch.equal(g.scales, w.scales) and g.dtype == dtype
    assert got[0].codes.shape == ((64, 48) if fmt == "nvfp4" else (64, 96))


def test_fused_hadamard_quantize_errors():
    hq = ops.resolve("hadamard_quantize", "triton")
    with pytest.raises(ValueError, match="multiples of 16"):
        hq(torch.randn(20, 32), 16)
    with pytest.raises(ValueError, match="n in"):
        hq(torch.randn(48, 48), 48)
