"""Export: exactly 2:4, same outputs as the trained model, lossless compressed storage,
state_dict round trips, and the semi-structured hand-off."""

import copy

import pytest
import torch
from torch import nn

import lowprec
from lowprec import sparse
from lowprec.sim.model import TinyLM
from sparse_helpers import CFG, train_tiny


def _trained(config, steps=5):
    return train_tiny(config, steps)[0]


@pytest.mark.parametrize("config", [sparse.SRSTEConfig(), sparse.ASTConfig(slorb_k=8, mask_interval=2),
                                    sparse.SparseFP4Config(sparse.SRSTEConfig(), "mxfp4")],
                         ids=["srste", "ast-slorb", "srste-fp4"])
def test_export_is_exactly_24_and_matches_the_training_model(config):
    tr = _trained(config)
    model = tr.model.eval()
    out = sparse.export(model, low_rank="keep")
    layers = sparse.sparse_linears(out)
    assert len(layers) == len(tr.report.converted) > 0
    for name, mod in layers:
        assert sparse.fraction_nm(mod.weight.detach()) == 1.0, name
        assert not isinstance(mod, sparse.SparseLinear)
    assert not any(isinstance(m, sparse.SparseLinear) for m in out.modules())
    x = torch.randint(0, 256, (3, 16))
    with torch.no_grad():
        assert torch.equal(out(x), model(x))


def test_cast_export_folds_scaling_and_applies_the_optimizers_mask():
    tr = _trained(sparse.CASTConfig(mask_interval=2), steps=4)
    out = tr.export()
    masks = sparse.cast_masks(tr.model, tr.optimizer)
    x = torch.randint(0, 256, (3, 16))
    with torch.no_grad():
        hard = copy.deepcopy(tr.model)
        for (name, mod), (_, m2) in zip(tr.model.named_modules(), hard.named_modules()):
            if isinstance(mod, sparse.CASTLinear):
                m2.weight.copy_(mod.weight * masks[mod])
        assert torch.allclose(out(x), hard(x), atol=1e-5)
    for (name, mod) in sparse.sparse_linears(out):
        assert type(mod) is nn.Linear and sparse.fraction_nm(mod.weight.detach()) == 1.0
        assert torch.equal(mod.weight != 0, (mod.weight != 0) & masks[dict(tr.model.named_modules())[name]])


def test_compressed_storage_round_trip_is_lossless():
    tr = _trained(sparse.ASTConfig(slorb_k=8))
    out = sparse.export(tr.model, low_rank="keep")
    small = sparse.compress_model(out)
    comp = [m for m in small.modules() if isinstance(m, sparse.Compressed24Linear)]
    assert len(comp) == len(sparse.sparse_linears(out))
    for m in comp:
        assert m.values.shape[1] * 2 == m.in_features and m.meta.dtype == torch.uint8
        assert m.meta.shape[1] * 8 == m.in_features
    back = sparse.decompress_model(small)
    for (n, a), (_, b) in zip(out.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(small(x), out(x))
    dense_bytes = sum(m.in_features * m.out_features * 4 for m in comp)
    stored = sum(m.values.numel() * 4 + m.meta.numel() for m in comp)
    assert stored == dense_bytes // 2 + dense_bytes // 32        # half the values + 4 bits per group of 4
    with pytest.raises(ValueError, match="not 2:4"):
        sparse.Compressed24Linear.from_linear(nn.Linear(8, 2))


def test_state_dict_round_trip_carries_masks():
    tr = _trained(sparse.ASTConfig(mask_interval=2, slorb_k=8))
    sd = tr.model.state_dict()
    assert any(k.endswith(".mask") for k in sd) and any(k.endswith(".initial_mask") for k in sd)
    torch.manual_seed(123)
    fresh = lowprec.convert_model(TinyLM(CFG), sparse.ASTConfig(mask_interval=2, slorb_k=8),
                                  lambda m, n: n != "head")
    fresh.load_state_dict(sd)
    for (n, a), (_, b) in zip(sd.items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), tr.model.eval()(x))


def test_semi_structured_limits_say_why_on_cpu():
    w = sparse.nm_mask(torch.rand(64, 64)).float()
    why = sparse.semi_structured_limits(w)
    assert "CUDA" in why
    out = sparse.export(_trained(sparse.SRSTEConfig()).model)
    with pytest.raises(ValueError, match="CUDA"):
        sparse.to_semi_structured(out)


@pytest.mark.gpu
def test_semi_structured_on_gpu_matches_dense():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64).cuda().half()
    layer = sparse.SparseLinear.from_linear(lin, mask_interval=0)
    out = sparse.export(nn.Sequential(layer))
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    want = out(x)
    fast = sparse.to_semi_structured(copy.deepcopy(out))
    assert torch.allclose(fast(x), want, atol=1e-2, rtol=1e-2)
    bad = sparse.export(nn.Sequential(sparse.SparseLinear.from_linear(nn.Linear(24, 8).cuda().half())))
    with pytest.raises(ValueError, match="multiple"):
        sparse.to_semi_structured(bad)
