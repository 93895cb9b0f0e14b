"""The fused GaLore Adam-moment op: C++ and Triton bit-exact with the reference, for fp32
state and every low-bit state format, odd shapes (padded blocks), tensor scales, several
steps in a row (so the kernels read codes they wrote) and Philox offsets."""

import pytest
import torch

from lowprec import ops
from lowprec.galore import moments as mom
from lowprec.galore import state as lowbit
from lowprec.reference.arith import sqrt_rn

FORMATS = ["mxfp8", "nvfp4", "mxfp4", "ue5m3"]
SHAPES = [(16, 64), (5, 20), (3, 33), (1, 7)]


def _backends():
    out = []
    for b in ("cpp", "triton"):
        ok, why = ops.backend_status(b)
        out.append(pytest.param(b, marks=pytest.mark.skipif(not ok, reason=f"backend {b!r} unavailable: {why}")))
    return out


def _run(backend, fmt, shape, steps, seed=7, scale=1.0):
    gen = torch.Generator().manual_seed(11)
    m_st, v_st = mom.zeros(shape, fmt)
    offset = 1000
    outs = []
    for t in range(1, steps + 1):
        r = torch.randn(shape, generator=gen) * scale
        sc = mom.MomentScalars.make(t, (0.9, 0.999), 1e-6)
        n, m_st, v_st, used = mom.adam_moments(r, m_st, v_st, fmt, sc, seed, offset, backend=backend)
        offset += used
        outs.append((n.clone(), {k: v.clone() for k, v in m_st.items()}, {k: v.clone() for k, v in v_st.items()}))
    return outs


def _assert_same(a, b):
    for (na, ma, va), (nb, mb, vb) in zip(a, b):
        torch.testing.assert_close(na, nb, rtol=0, atol=0)
        for x, y in ((ma, mb), (va, vb)):
            assert x.keys() == y.keys()
            for k in x:
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("fmt", FORMATS + ["fp32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(backend, fmt, shape):
    ref = _run("reference", fmt, shape, steps=3)
    got = _run(backend, fmt, shape, steps=3)
    _assert_same(ref, got)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
def test_tiny_and_huge_gradients(backend, fmt):
    """Scales at the ends of the range (and zero rows) stay bit-exact."""
    for scale in (1e-20, 1e12):
        _assert_same(_run("reference", fmt, (4, 48), 2, scale=scale), _run(backend, fmt, (4, 48), 2, scale=scale))
    z = torch.zeros(3, 40)
    m_st, v_st = mom.zeros(z.shape, fmt)
    sc = mom.MomentScalars.make(1, (0.9, 0.999), 1e-8)
    n_ref = mom.adam_moments(z, *mom.zeros(z.shape, fmt), fmt, sc, backend="reference")[0]
    n = mom.adam_moments(z, m_st, v_st, fmt, sc, backend=backend)[0]
    assert torch.equal(n, n_ref) and not n.any()


def test_reference_is_the_equations():
    """fp32 state: the reference against the equations in float64 (differences at fp32 rounding)."""
    gen = torch.Generator().manual_seed(0)
    r1, r2 = torch.randn(2, 6, 10, generator=gen)
    m_st, v_st = mom.zeros(r1.shape, "fp32")
    for t, r in ((1, r1), (2, r2)):
        sc = mom.MomentScalars.make(t, (0.9, 0.99), 1e-8)
        n, m_st, v_st, used = mom.adam_moments(r, m_st, v_st, "fp32", sc, backend="reference")
        assert used == 0
    rd1, rd2 = r1.double(), r2.double()
    m = 0.1 * 0.9 * rd1 + 0.1 * rd2
    v = 0.01 * 0.99 * rd1 ** 2 + 0.01 * rd2 ** 2
    expect = (m / (1 - 0.9 ** 2)) / ((v / (1 - 0.99 ** 2)).sqrt() + 1e-8)
    torch.testing.assert_close(n.double(), expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_st["value"].double(), m, rtol=1e-6, atol=1e-7)


def test_lowbit_reference_stores_what_state_store_would():
    """The low-bit reference = decode, update, and ``state.store`` of m' and sqrt(v') at the
    documented Philox offsets (so the op and the stored-state format are one contract)."""
    fmt, shape, seed, off = "nvfp4", (5, 20), 3, 64
    gen = torch.Generator().manual_seed(1)
    m0, _ = lowbit.store(torch.randn(shape, generator=gen), fmt, 1, 0)
    s0, _ = lowbit.store(torch.rand(shape, generator=gen), fmt, 2, 0)
    r = torch.randn(shape, generator=gen)
    sc = mom.MomentScalars.make(4, (0.9, 0.999), 1e-6)
    n, m1, s1, used = mom.adam_moments(r, m0, s0, fmt, sc, seed, off, backend="reference")
    m = lowbit.load(m0, fmt, shape)
    v = lowbit.load(s0, fmt, shape, sqrt=True)
    m2 = m * sc.beta1 + r * sc.c1
    v2 = v * sc.beta2 + (r * r) * sc.c2
    pad = lowbit.padded_numel(shape, lowbit.state_format(fmt).block_size)
    assert used == 2 * pad
    want_m, _ = lowbit.store(m2, fmt, seed, off, backend="reference")
    want_s, _ = lowbit.store(sqrt_rn(v2), fmt, seed, off + pad, backend="reference")
    for k in want_m:
        assert torch.equal(m1[k], want_m[k]) and torch.equal(s1[k], want_s[k])
    assert torch.equal(n, (m2 * sc.ibc1) / (sqrt_rn(v2 * sc.ibc2) + sc.eps))


def test_bad_inputs():
    sc = mom.MomentScalars.make(1, (0.9, 0.999), 1e-6)
    m_st, v_st = mom.zeros((4, 8), "mxfp8")
    with pytest.raises(ValueError, match="unknown state format"):
        mom.adam_moments(torch.zeros(4, 8), m_st, v_st, "int3", sc)
    with pytest.raises(TypeError, match="fp32"):
        mom.adam_moments(torch.zeros(4, 8, dtype=torch.bfloat16), m_st, v_st, "mxfp8", sc)
    with pytest.raises(ValueError, match="2-D"):
        mom.adam_moments(torch.zeros(32), m_st, v_st, "mxfp8", sc)
    with pytest.raises(ValueError, match="step counts from 1"):
        mom.MomentScalars.make(0, (0.9, 0.999), 1e-6)


@pytest.mark.skipif(not ops.backend_status("cpp")[0], reason="lowprec._C is not built")
def test_opcheck_cpp_ops():
    from torch.library import opcheck
    r = torch.randn(4, 20)
    opcheck(torch.ops.lowprec.galore_adam_fp32_, (r, torch.zeros(4, 20), torch.zeros(4, 20), [0.9, 0.999, 0.1,
                                                                                                 0.001, 10.0, 1000.0,
                                                                                                 1e-6]))
    fmt = lowbit.state_format("nvfp4")
    from lowprec._backends.blocked import format_params
    ints, floats = format_params(fmt)
    m_st, v_st = mom.zeros(r.shape, "nvfp4")
    args = (r, m_st["codes"], m_st["scales"], v_st["codes"], v_st["scales"], fmt.element.table().float(),
            fmt.scale.table().float(), ints, floats, [0.9, 0.999, 0.1, 0.001, 10.0, 1000.0, 1e-6], 16)
    opcheck(torch.ops.lowprec.galore_adam_lowbit, args + (0, 1.0, 1.0, 1.0, 1.0, 5, 0, 64))
    opcheck(torch.ops.lowprec.galore_adam_lowbit, args + (1, 1.0, 1.0, 2.0, 3.0, 5, 0, 64))
    opcheck(torch.ops.lowprec.galore_adam_lowbit, args + (2, 1.0, 1.0, 1.0, 1.0, 5, 0, 64))
