"""Hadamard: dense Sylvester oracle (fp64), orthogonality, inverse, gradient, errors."""

import math

import pytest
import scipy.linalg
import torch

import lowprec
from lowprec.reference.hadamard import random_signs, sylvester


@pytest.mark.parametrize("n", [1, 2, 4, 16, 32, 128, 1024])
def test_sylvester_matches_scipy(n):
    assert torch.equal(sylvester(n) * math.sqrt(n), torch.from_numpy(scipy.linalg.hadamard(n)).double())


@pytest.mark.parametrize("n,axis,seed", [(16, -1, None), (32, 0, 7), (64, 1, 3), (128, -1, 11), (4096, -1, 2)])
def test_equals_dense_block_diagonal_product(n, axis, seed):
    g = torch.Generator().manual_seed(n)
    shape = [3, 2 * n, 5] if axis in (1,) else ([2 * n, 6] if axis == 0 else [4, 2 * n])
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    y = lowprec.hadamard(x, n, axis=axis, seed=seed)
    s = random_signs(seed, n, dtype=torch.float64) if seed is not None else torch.ones(n, dtype=torch.float64)
    m = sylvester(n) @ torch.diag(s)                      # M = H diag(s): flip signs, then mix
    xm = x.movedim(axis, -1)
    dense = (xm.reshape(*xm.shape[:-1], -1, n) @ m.T).reshape(xm.shape).movedim(-1, axis)
    assert torch.allclose(y, dense, rtol=0, atol=1e-12 * math.log2(n + 1))


def test_fp32_error_within_twice_of_dense_fp32():
    x = torch.randn(64, 1024)
    exact = (x.double().reshape(64, 4, 256) @ sylvester(256).T).reshape(64, 1024)
    fast = lowprec.hadamard(x, 256).double()
    dense32 = (x.reshape(64, 4, 256) @ sylvester(256, torch.float32).T).reshape(64, 1024).double()
    assert (fast - exact).abs().max() <= 2 * (dense32 - exact).abs().max() + 1e-6


@pytest.mark.parametrize("n", [2, 16, 256, 1 << 15])
def test_orthogonal_and_inverse(n):
    x = torch.randn(2, n, dtype=torch.float64)
    y = lowprec.hadamard(x, n, seed=5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    back = lowprec.hadamard(y, n, seed=5, inverse=True)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.allclose(lowprec.hadamard(lowprec.hadamard(x, n), n), x, atol=1e-12)   # H symmetric, H H = I


def test_product_preserved_along_reduction_axis():
    a, b = torch.randn(8, 64, dtype=torch.float64), torch.randn(64, 5, dtype=torch.float64)
    at = lowprec.hadamard(a, 32, axis=1, seed=1)
    bt = lowprec.hadamard(b, 32, axis=0, seed=1)
    assert torch.allclose(at @ bt, a @ b, atol=1e-12)


def test_gradcheck():
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lowprec.hadamard(t, 16, seed=2), (x,))
    assert torch.autograd.gradcheck(lambda t: lowprec.hadamard(t, 8, axis=0, seed=2, inverse=True),
                                    (torch.randn(16, 3, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_preserved(dtype):
    x = torch.randn(4, 64).to(dtype)
    assert lowprec.hadamard(x, 64).dtype == dtype


def test_errors():
    with pytest.raises(ValueError, match="power of two"):
        lowprec.hadamard(torch.randn(4, 48), 24)
    with pytest.raises(ValueError, match="power of two"):
        lowprec.hadamard(torch.randn(1, 1 << 16), 1 << 16)
    with pytest.raises(ValueError, match="not a multiple"):
        lowprec.hadamard(torch.randn(4, 40), 16)
    with pytest.raises(TypeError, match="float32"):
        lowprec.hadamard(torch.ones(4, 16, dtype=torch.int32), 16)
    with pytest.raises(ValueError, match="either seed or signs"):
        lowprec.hadamard(torch.randn(4, 16), 16, seed=1, signs=torch.ones(16))


def test_signs_are_balanced_and_seeded():
    s = random_signs(3, 1 << 14)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(s.mean().item()) < 0.05
    assert torch.equal(s, random_signs(3, 1 << 14)) and not torch.equal(s, random_signs(4, 1 << 14))


def test_random_hadamard_is_h_of_sign_flipped_chunks():
    """hadamard(x, n, seed=k) == H_n applied to each chunk after its signs are flipped."""
    x = torch.randn(6, 64, dtype=torch.float64)
    s = random_signs(9, 16, dtype=torch.float64)
    flipped = (x.reshape(6, 4, 16) * s).reshape(6, 64)
    assert torch.allclose(lowprec.hadamard(x, 16, seed=9), lowprec.hadamard(flipped, 16), rtol=0, atol=1e-12)
    # the other order (mix, then flip) is a different transform: block quantization could not see it
    mixed_then_flipped = (lowprec.hadamard(x, 16).reshape(6, 4, 16) * s).reshape(6, 64)
    assert not torch.allclose(lowprec.hadamard(x, 16, seed=9), mixed_then_flipped)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4", "ue5m3"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_random_signs_change_quantized_values(fmt, rounding):
    """Block quantization is sign-symmetric, so signs applied after the mixing would leave
    Q(.) equal to s * Q(H x); flipped first, they change the quantized values."""
    x = torch.randn(32, 64)
    s = random_signs(5, 16)
    kw = dict(rounding=rounding, seed=1)
    q_rand = lowprec.fake_quantize(lowprec.hadamard(x, 16, seed=5), fmt, **kw)
    q_plain = lowprec.fake_quantize(lowprec.hadamard(x, 16), fmt, **kw)
    sign_only = (q_plain.reshape(32, 4, 16) * s).reshape(32, 64)
    assert not torch.equal(q_rand, sign_only)
    assert (q_rand != sign_only).float().mean() > 0.1


def test_random_signs_change_gemm_results():
    """A quantized GEMM with both operands through the random transform differs from the
    plain-Hadamard one (and both approximate the exact product)."""
    a, b = torch.randn(64, 128), torch.randn(128, 48)

    def qgemm(seed):
        at = lowprec.hadamard(a, 16, axis=1, seed=seed)
        bt = lowprec.hadamard(b, 16, axis=0, seed=seed)
        return lowprec.fake_quantize(at, "nvfp4") @ lowprec.fake_quantize(bt, lowprec.NVFP4.replace(axis=0))
    exact = a @ b
    c_rand, c_plain = qgemm(3), qgemm(None)
    assert not torch.equal(c_rand, c_plain)
    for c in (c_rand, c_plain):
        assert (c - exact).norm() / exact.norm() < 0.2
