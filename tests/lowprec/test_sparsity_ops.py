"""2:4 masks and compressed storage: exactly N:M (ties included), lossless round trip,
and the C++ kernels bit-exact against the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowprec
from lowprec import ops
from lowprec.reference.sparsity import compress_24, decompress_24, nm_mask

FAST = [b for b in ("cpp",) if ops.backend_status(b)[0] and b in ops.implementations("nm_mask")]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.sampled_from([(2, 4), (1, 4), (2, 8), (4, 8)]), st.integers(0, 10_000),
       st.booleans())
def test_masks_are_exactly_n_of_m(rows, groups, nm, seed, ties):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups * m, generator=g)
    if ties:
        w = torch.randint(-2, 3, w.shape, generator=g).float()       # many equal magnitudes
    mask = nm_mask(w.abs(), n, m)
    assert (mask.reshape(rows, groups, m).sum(-1) == n).all()
    # every kept score is >= every pruned score of its group
    gs, gm = w.abs().reshape(rows, groups, m), mask.reshape(rows, groups, m)
    kept_min = torch.where(gm, gs, torch.full_like(gs, float("inf"))).amin(-1)
    pruned_max = torch.where(~gm, gs, torch.full_like(gs, -float("inf"))).amax(-1)
    assert (kept_min >= pruned_max).all()
    for b in FAST:
        assert torch.equal(lowprec.nm_mask(w.abs(), n, m, backend=b), mask)


def test_ties_go_to_the_lower_index():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]])
    assert nm_mask(s).tolist() == [[True, True, False, False, False, True, True, False]]
    for b in FAST:
        assert torch.equal(lowprec.nm_mask(s, backend=b), nm_mask(s))


@pytest.mark.parametrize("shape", [(8,), (3, 16), (2, 4, 64)])
def test_compress_round_trip_lossless(shape):
    w = torch.randn(shape)
    mask = nm_mask(w.abs())
    values, meta = compress_24(w, mask)
    assert values.shape[-1] == shape[-1] // 2 and meta.shape[-1] == shape[-1] // 8 and meta.dtype == torch.uint8
    assert torch.equal(decompress_24(values, meta), w * mask)
    for b in FAST:
        v2, m2 = lowprec.compress_24(w, mask, backend=b)
        assert torch.equal(v2, values) and torch.equal(m2, meta)


def test_errors():
    with pytest.raises(ValueError, match="multiple of the group size 4"):
        nm_mask(torch.randn(3, 6))
    with pytest.raises(ValueError, match="NaN"):
        nm_mask(torch.tensor([1.0, float("nan"), 0.0, 2.0]))
    with pytest.raises(ValueError, match="not exactly 2:4"):
        compress_24(torch.randn(8), torch.ones(8, dtype=torch.bool))
    for b in FAST:   # the same error, type and text, as the reference (checked at the op's boundary)
        with pytest.raises(ValueError, match="not exactly 2:4"):
            lowprec.compress_24(torch.randn(8), torch.ones(8, dtype=torch.bool), backend=b)
        with pytest.raises(ValueError, match="NaN"):
            lowprec.nm_mask(torch.tensor([1.0, float("nan"), 0.0, 2.0]), backend=b)


def test_opcheck_sparsity_ops():
    if not FAST:
        pytest.skip("lowprec._C is not built")
    w = torch.randn(4, 16)
    torch.library.opcheck(torch.ops.lowprec.nm_mask.default, (w.abs(), 2, 4))
    torch.library.opcheck(torch.ops.lowprec.compress_24.default, (w, nm_mask(w.abs())))
