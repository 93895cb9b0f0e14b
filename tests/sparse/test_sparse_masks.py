"""Masks: exactly N:M (ties included) on every backend, transposable 2:4, packing, Wanda."""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import lowprec
from lowprec import sparse
from lowprec.reference.sparsity import nm_mask as reference_nm_mask

BACKENDS = [b for b in ("reference", "cpp", "triton") if lowprec.ops.backend_status(b)[0]]


def brute_force_mask(scores, n, m):
    """Keep the n best of each group by (score desc, index asc), one group at a time."""
    out = torch.zeros_like(scores, dtype=torch.bool).reshape(-1, m)
    for gi, g in enumerate(scores.reshape(-1, m).tolist()):
        order = sorted(range(m), key=lambda i: (-g[i], i))[:n]
        out[gi, order] = True
    return out.reshape(scores.shape)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 5), nm=st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]),
       levels=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_nm_mask_exact_on_random_shapes_with_ties(rows, groups, nm, levels, seed):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, groups * m), generator=g).float()    # few levels: many ties
    want = brute_force_mask(scores, n, m)
    for backend in BACKENDS:
        mask = sparse.nm_mask(scores, n, m, backend=backend)
        assert mask.dtype == torch.bool
        assert torch.equal(mask, want), backend
        assert sparse.is_nm(mask, n, m)


def test_all_equal_group_keeps_the_lowest_indices():
    mask = sparse.nm_mask(torch.zeros(1, 8))
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_and_nan_raise(backend):
    with pytest.raises(ValueError, match="multiple"):
        sparse.nm_mask(torch.rand(3, 6), backend=backend)
    scores = torch.rand(2, 8)
    scores[1, 3] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="NaN"):
        sparse.nm_mask(scores, backend=backend)


def test_transposable_patterns_are_the_90():
    pats = sparse.transposable_patterns().reshape(-1, 4, 4)
    assert pats.shape[0] == 90 and len({tuple(p.flatten().tolist()) for p in pats}) == 90
    assert (pats.sum(1) == 2).all() and (pats.sum(2) == 2).all()
    count = sum(1 for bits in itertools.product((0, 1), repeat=16)
                if all(sum(bits[4 * r:4 * r + 4]) == 2 for r in range(4))
                and all(sum(bits[c::4]) == 2 for c in range(4)))
    assert count == 90


@settings(max_examples=20, deadline=None)
@given(tr=st.integers(1, 3), tc=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_transposable_mask_is_24_both_ways_and_best_per_tile(tr, tc, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4 * tr, 4 * tc, generator=g)
    mask = sparse.transposable_24_mask(w.abs())
    assert sparse.is_nm(mask) and sparse.is_nm(mask.T.contiguous())
    pats = sparse.transposable_patterns().reshape(-1, 4, 4).double()
    for i in range(tr):
        for j in range(tc):
            tile = w.abs()[4 * i:4 * i + 4, 4 * j:4 * j + 4].double()
            best = max(float((tile * p).sum()) for p in pats)
            got = float((tile * mask[4 * i:4 * i + 4, 4 * j:4 * j + 4]).sum())
            assert got == pytest.approx(best, rel=1e-12)


def test_transposable_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiples of 4"):
        sparse.transposable_24_mask(torch.rand(6, 8))


@pytest.mark.parametrize("shape", [(8, 16), (3, 12), (5,), (2, 3, 4)])
def test_pack_unpack_round_trip_one_bit_per_weight(shape):
    mask = torch.rand(shape) > 0.5
    packed = sparse.pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(sparse.unpack_mask(packed, shape), mask)
    with pytest.raises(TypeError):
        sparse.pack_mask(mask.int())


def test_wanda_scores_and_calibration_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(5, 8) for _ in range(3)]
    norms = sparse.collect_input_norms(model, batches)
    x = torch.cat(batches)
    assert torch.allclose(norms["0"], x.norm(dim=0))
    assert torch.allclose(norms["2"], torch.relu(model[0](x)).norm(dim=0), atol=1e-5)
    w = model[0].weight
    s = sparse.scores_for(w, "wanda", norms["0"])
    assert torch.allclose(s, w.abs() * norms["0"][None])
    mask = sparse.nm_mask(s)
    assert torch.equal(mask, reference_nm_mask(w.detach().abs() * norms["0"][None]))
    with pytest.raises(ValueError, match="wanda"):
        sparse.scores_for(w, "wanda")
    with pytest.raises(ValueError, match="unknown score"):
        sparse.scores_for(w, "random")
    user = torch.rand_like(w)
    assert torch.equal(sparse.scores_for(w, user), user)
