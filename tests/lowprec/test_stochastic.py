"""Layer 6: stochastic rounding is unbiased (within the 2^-8 truncation) and reproducible."""

import torch

from lowprec import formats as F
from lowprec.reference import dequantize, quantize
from lowprec.reference.philox import random_bytes
from lowprec.reference.rounding import round_to_grid

N_DRAWS = 8192


def test_rounding_probability_is_the_truncated_fraction():
    # x = 2.3 on the E2M1 grid: floor 2, ulp 1, f = 0.3, F = floor(0.3 * 256) = 76: P(up) = 76/256 exactly
    x = torch.full((1 << 16,), 2.3)
    r = random_bytes(5, 0, x.numel())
    v = round_to_grid(x, 2, 1, 1, 6.0, "stochastic", r)
    up = (v == 3.0)
    assert set(v.unique().tolist()) == {2.0, 3.0}
    assert torch.equal(up, r.long() >= 256 - 76)          # the rule, bit for bit
    assert abs(up.float().mean().item() - 76 / 256) < 0.01


def test_mean_of_draws_converges_to_x():
    g = torch.Generator().manual_seed(0)
    row = torch.randn(32, generator=g).clamp(-2.9, 2.9)
    row[0] = 3.0       # the block max, so no format saturates (unbiasedness holds below elem_max * scale)
    x = row.expand(N_DRAWS, 32).contiguous()             # every row draws different bits (flat index differs)
    for fmt in (F.MXFP4, F.NVFP4.replace(tensor_scale=False), F.UE5M3_FP4.replace(tensor_scale=False)):
        y = dequantize(quantize(x, fmt, rounding="stochastic", seed=123))
        q_near = dequantize(quantize(row, fmt))
        mean = y.mean(0)
        bias = (mean - row).abs()
        # bound: truncation bias <= ulp/256 plus 6 standard errors of ulp/2/sqrt(N)
        ulp = _ulp_times_scale(row, fmt)
        assert (bias <= ulp / 256 + 6 * ulp / 2 / N_DRAWS ** 0.5 + 1e-7).all(), fmt
        # averaged, stochastic rounding is closer to x than round-to-nearest
        assert (mean - row).abs().mean() < (q_near - row).abs().mean()


def _ulp_times_scale(row, fmt):
    """Grid spacing at each element times its block scale (one block per 16 or 32)."""
    from lowprec.reference.quantize import block_scales
    bs = fmt.block_size
    _, _, s_eff = block_scales(row.reshape(-1, bs), fmt)
    s = s_eff.repeat_interleave(bs)
    a = (row / s).abs().clamp(max=fmt.element.max)
    _, e = torch.frexp(a)
    return torch.exp2((torch.clamp(e - 1, min=fmt.element.emin) - fmt.element.mbits).float()) * s


def test_same_seed_and_offset_same_bits():
    x = torch.randn(64, 64)
    a = quantize(x, "nvfp4", rounding="stochastic", seed=9, offset=100)
    b = quantize(x, "nvfp4", rounding="stochastic", seed=9, offset=100)
    c = quantize(x, "nvfp4", rounding="stochastic", seed=9, offset=101)
    d = quantize(x, "nvfp4", rounding="stochastic", seed=10, offset=100)
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes) and not torch.equal(a.codes, d.codes)


def test_bits_follow_the_row_major_index_of_the_original_tensor():
    """Quantizing along axis 0 uses the same per-element bits as the row-major index says:
    the result equals quantizing the transposed tensor with the bits permuted alike."""
    x = torch.randn(32, 8)
    q = quantize(x, F.MXFP4.replace(axis=0), rounding="stochastic", seed=4)
    r = random_bytes(4, 0, x.numel()).reshape(32, 8)
    from lowprec.reference.quantize import block_scales, encode_elements
    fmt = F.nonclipping(F.MXFP4)        # stochastic rounding runs with the non-clipping (rceil) scale
    assert q.fmt == fmt.replace(axis=0)
    codes, _, s_eff = block_scales(x.t().reshape(8, 1, 32), fmt)
    xs = x.t().reshape(8, 1, 32) / s_eff.unsqueeze(-1)
    expected = encode_elements(xs, fmt, "stochastic", r.t().reshape(8, 1, 32)).reshape(8, 32)
    assert torch.equal(q.element_codes(), expected)
