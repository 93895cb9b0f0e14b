"""4:8 pair-wise sparsity (the pattern sparse FP4 tensor cores take on one operand): in every
group of 8 along in_features, 2 of the 4 aligned pairs (2i, 2i + 1) are kept whole.

What must hold: every mask has the hardware pattern (and its transposable variant along both
axes); the choice keeps the highest-scoring pairs (magnitude or Wanda); it composes with the
FP4 recipes in SparseFP4Config and trains; export and compressed storage keep the pattern
exactly; a 4:8 export is never flagged 2:4.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowprec
from lowprec import sparse
from lowprec.reference.sparsity import compress_48_pairwise, decompress_48_pairwise
from sparse_helpers import train_tiny


def brute_force_pairs(scores_row8: torch.Tensor) -> tuple:
    """The best 2 of 4 pairs of one group by exhaustive search (ties: lexicographically first)."""
    ps = [float(scores_row8[2 * i]) + float(scores_row8[2 * i + 1]) for i in range(4)]
    best = max(itertools.combinations(range(4), 2), key=lambda c: (ps[c[0]] + ps[c[1]], -c[0], -c[1]))
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), rows=st.integers(1, 6), groups=st.integers(1, 4))
def test_mask_has_the_hardware_pattern_and_keeps_the_best_pairs(seed, rows, groups):
    w = torch.randn(rows, 8 * groups, generator=torch.Generator().manual_seed(seed))
    mask = sparse.pairwise_48_mask(w.abs())
    assert sparse.is_pairwise_48(mask) and mask.dtype == torch.bool
    assert int(mask.sum()) == w.numel() // 2
    for r in range(rows):
        for g in range(groups):
            seg = w.abs()[r, 8 * g:8 * g + 8]
            kept = tuple(i for i in range(4) if bool(mask[r, 8 * g + 2 * i]))
            assert kept == brute_force_pairs(seg), (r, g)


def test_ties_go_to_the_lower_pair_and_nan_is_refused():
    mask = sparse.pairwise_48_mask(torch.ones(1, 8))
    assert mask.tolist() == [[True, True, True, True, False, False, False, False]]
    with pytest.raises(ValueError, match="NaN"):
        sparse.pairwise_48_mask(torch.tensor([[float("nan")] + [1.0] * 7]))
    with pytest.raises(ValueError, match="multiple of the group size 8"):
        sparse.pairwise_48_mask(torch.ones(2, 12))


def test_a_24_mask_is_not_pairwise_and_vice_versa():
    """The two patterns differ: a 2:4 mask keeps one of each pair's neighbours, a pair-wise one
    keeps 4 adjacent weights in some group of 4."""
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    m24, m48 = sparse.nm_mask(w.abs()), sparse.pairwise_48_mask(w.abs())
    assert not sparse.is_pairwise_48(m24)
    assert not sparse.is_nm(m48, 2, 4)


@pytest.mark.parametrize("shape", [(8, 8), (16, 24), (32, 64)])
def test_transposable_variant_is_pairwise_along_both_axes(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1]))
    mask = sparse.transposable_pairwise_48_mask(w.abs())
    assert sparse.is_pairwise_48(mask) and sparse.is_pairwise_48(mask.t().contiguous())
    # it is the best such mask per 8x8 tile: no other mask with both properties scores more
    free = sparse.pairwise_48_mask(w.abs())
    assert float((w.abs() * mask).sum()) <= float((w.abs() * free).sum()) + 1e-4


def test_wanda_scores_choose_by_activation_norms():
    """With Wanda scores a pair of small weights on high-norm inputs beats larger weights."""
    w = torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 0.5, 0.5]])
    norms = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0, 100.0])
    scores = sparse.scores_for(w, "wanda", norms)
    mask = sparse.sparsity_mask(scores, 4, 8, "pairwise")
    assert mask.tolist() == [[False, False, False, False, True, True, True, True]]
    assert sparse.sparsity_mask(w.abs(), 4, 8, "pairwise").tolist() == [[False, False, True, True, True, True,
                                                                         False, False]]


def test_config_checks():
    with pytest.raises(ValueError, match="pair-wise pattern is 4:8"):
        sparse.SRSTEConfig(n=2, m=4, pattern="pairwise")
    with pytest.raises(ValueError, match="unknown pattern"):
        sparse.SRSTEConfig(pattern="blocky")
    cfg = sparse.SRSTEConfig(n=4, m=8, pattern="pairwise", transposable=True)
    assert "multiple of 8" in cfg.convert_module(nn.Linear(16, 12))
    assert isinstance(cfg.convert_module(nn.Linear(16, 16)), sparse.SparseLinear)


PAIRWISE_CONFIGS = {
    "srste": sparse.SRSTEConfig(n=4, m=8, pattern="pairwise"),
    "srste-transposable": sparse.SRSTEConfig(n=4, m=8, pattern="pairwise", transposable=True),
    "ast": sparse.ASTConfig(n=4, m=8, pattern="pairwise", slorb_k=8, mask_interval=2),
    "nvfp4": sparse.SparseFP4Config(sparse.SRSTEConfig(n=4, m=8, pattern="pairwise"), "nvfp4"),
    "nvfp4_4over6": sparse.SparseFP4Config(sparse.SRSTEConfig(n=4, m=8, pattern="pairwise"), "nvfp4_4over6"),
}


@pytest.mark.parametrize("name", list(PAIRWISE_CONFIGS))
def test_training_keeps_the_pattern_and_export_is_exact(name):
    tr, losses = train_tiny(PAIRWISE_CONFIGS[name], 6)
    assert all(l == l and l < 20 for l in losses), losses                                  # finite, bounded
    layers = [m for m in tr.model.modules() if isinstance(m, sparse.SparseLinear)]
    assert layers and all(m.pattern == "pairwise" for m in layers)
    for m in layers:
        assert sparse.is_pairwise_48(m.mask)
        if m.transposable:
            assert sparse.is_pairwise_48(m.mask.t().contiguous())
        if "nvfp4" in name:
            assert m.recipe is not None and m.recipe.quantized
    model = tr.model.eval()
    out = sparse.export(model, low_rank="keep")
    exported = sparse.sparse_linears(out, "4:8 pair-wise")
    assert len(exported) == len(layers)
    for _, mod in exported:
        nz_pairs = (mod.weight.detach().reshape(-1, 4, 2) != 0).any(-1).sum(-1)
        assert bool((nz_pairs <= 2).all())
        assert not mod.is_2to4                                   # 4:8 weights are not 2:4
    x = torch.randint(0, 256, (3, 16))
    with torch.no_grad():
        assert torch.equal(out(x), model(x))
    small = sparse.compress_model(out)
    comp = [m for m in small.modules() if isinstance(m, sparse.Compressed48PairwiseLinear)]
    if "nvfp4" not in name:                    # FP4 exports are QuantLinear layers, not plain nn.Linear
        assert len(comp) == len(layers)
        for m in comp:
            assert m.values.shape[1] * 2 == m.in_features and m.meta.shape[1] * 16 == m.in_features
        with torch.no_grad():
            assert torch.equal(small(x), out(x))
        back = sparse.decompress_model(small)
        assert len(sparse.sparse_linears(back, "4:8 pair-wise")) == len(layers)


def test_compressed_storage_round_trip():
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(9))
    mask = sparse.pairwise_48_mask(w.abs())
    v, meta = compress_48_pairwise(w, mask)
    assert v.shape == (6, 16) and meta.shape == (6, 2) and meta.dtype == torch.uint8
    assert torch.equal(decompress_48_pairwise(v, meta), w * mask)
    with pytest.raises(ValueError, match="not exactly 4:8 pair-wise"):
        compress_48_pairwise(w, sparse.nm_mask(w.abs()))
    dense = nn.Linear(32, 6)
    with torch.no_grad():
        dense.weight.copy_(w)
    with pytest.raises(ValueError, match="not 4:8 pair-wise"):
        sparse.Compressed48PairwiseLinear.from_linear(dense)


def test_fp4_layers_quantize_the_pairwise_weights():
    """Composed with NVFP4, the kept 4:8 weights go through the quantized GEMM: the layer's
    output differs from the bf16-GEMM sparse layer and is within the FP4 error of it."""
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    plain = sparse.SRSTEConfig(n=4, m=8, pattern="pairwise").convert_module(base)
    fp4 = sparse.SparseFP4Config(sparse.SRSTEConfig(n=4, m=8, pattern="pairwise"), "nvfp4").convert_module(base)
    assert torch.equal(plain.mask, fp4.mask)
    x = torch.randn(8, 64)
    with torch.no_grad():
        y0, y1 = plain(x), fp4(x)
    rel = float((y1 - y0).norm() / y0.norm())
    assert 0 < rel < 0.3, rel
    assert lowprec.recipes.get("nvfp4") == fp4.recipe


def test_a_dense_nm_export_is_not_flagged_24():
    """Before: every exported layer was flagged is_2to4 whatever its N:M, so a 4:8 (plain N:M)
    export claimed 2:4 and compress_model / to_semi_structured took it for 2:4."""
    tr, _ = train_tiny(sparse.SRSTEConfig(n=4, m=8), 3)
    out = sparse.export(tr.model.eval())
    layers = sparse.sparse_linears(out)
    assert layers and all(m.sparsity_pattern == "4:8" for _, m in layers)
    assert not any(m.is_2to4 for _, m in layers)
    tr2, _ = train_tiny(sparse.SRSTEConfig(), 3)
    assert all(m.is_2to4 for _, m in sparse.sparse_linears(sparse.export(tr2.model.eval())))
