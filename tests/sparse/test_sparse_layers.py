"""SparseLinear (STE, SR-STE, mask refresh, SLoRB, FP4), CASTLinear, configs, distillation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowprec
from lowprec import sparse


def test_ste_forward_masks_and_backward_is_straight_through():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    layer = sparse.SparseLinear.from_linear(lin, mask_interval=0)
    x = torch.randn(5, 8)
    y = layer(x)
    assert torch.allclose(y, F.linear(x, lin.weight * layer.mask, lin.bias))
    y.sum().backward()
    assert torch.allclose(lin.weight.grad, torch.ones(5, 4).T @ x)         # dense gradient, pruned ones too


def test_srste_decay_hits_pruned_weights_only_with_the_right_sign():
    torch.manual_seed(0)
    layer = sparse.SparseLinear(8, 4, bias=False, mask_interval=0, srste_decay=0.5)
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    dense = torch.ones(3, 4).T @ x
    extra = layer.weight.grad - dense
    pruned = ~layer.mask
    assert torch.allclose(extra[pruned], 0.5 * layer.weight.detach()[pruned], atol=1e-6)
    assert torch.allclose(extra[layer.mask], torch.zeros_like(extra[layer.mask]), atol=1e-6)
    with pytest.raises(TypeError, match="bool"):
        sparse.masked_weight(layer.weight, layer.mask.int(), 0.1)


def test_mask_refresh_every_interval_logs_flip_rates():
    torch.manual_seed(0)
    layer = sparse.SparseLinear(8, 4, mask_interval=2)
    x = torch.randn(2, 8)
    layer(x)                                    # step 0: no refresh
    with torch.no_grad():
        layer.weight.neg_().mul_(torch.rand_like(layer.weight))     # new magnitudes
    layer(x)                                    # step 1: no refresh
    assert layer.flip_history == []
    want = sparse.nm_mask(layer.weight.detach().abs())
    layer(x)                                    # step 2: refresh
    assert torch.equal(layer.mask, want)
    rec = layer.flip_history[-1]
    assert rec["vs_previous"] == pytest.approx(sparse.flip_rate(want, layer.initial_mask))
    assert rec["vs_initial"] == rec["vs_previous"]
    layer.eval()
    layer(x)
    layer(x)
    assert len(layer.flip_history) == 1         # eval forwards never refresh


def test_slorb_init_is_block_means_and_zero_s_is_plain_sparse():
    torch.manual_seed(0)
    lin = nn.Linear(32, 6)
    layer = sparse.SparseLinear.from_linear(lin, slorb_k=8, mask_interval=0)
    pruned = lin.weight.detach() * ~layer.mask
    want = torch.stack([pruned[:, 8 * i:8 * i + 8].mean(-1) for i in range(4)], dim=1)
    assert torch.allclose(layer.slorb_s, want)
    p = layer.slorb_p
    assert p.shape == (4, 32) and torch.equal(p.sum(1), torch.full((4,), 8.0))
    assert torch.equal(p[1, 8:16], torch.ones(8)) and p[1].sum() == 8
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), F.linear(x, lin.weight * layer.mask, lin.bias)
                          + (x.reshape(3, 4, 8).sum(-1)) @ want.T, atol=1e-6)
    with torch.no_grad():
        layer.slorb_s.zero_()
    plain = sparse.SparseLinear.from_linear(lin, mask_interval=0)
    assert torch.equal(layer(x), plain(x))
    assert sparse.SparseLinear.from_linear(nn.Linear(32, 6), slorb_k=8, slorb_train_p=True).slorb_p.requires_grad


def test_transposable_layer_mask():
    layer = sparse.SparseLinear(16, 8, transposable=True)
    assert sparse.is_nm(layer.mask) and sparse.is_nm(layer.mask.T.contiguous())
    with pytest.raises(ValueError, match="transposable"):
        sparse.SparseLinear(16, 6, transposable=True)


def test_fp4_composition_quantizes_the_kept_weights():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    model = nn.Sequential(lin)
    model = lowprec.convert_model(model, sparse.SparseFP4Config(sparse.SRSTEConfig(mask_interval=0), "nvfp4"))
    layer = model[0]
    assert isinstance(layer, sparse.SparseLinear) and layer.recipe.name == "nvfp4"
    x = torch.randn(4, 64)
    q = lowprec.QuantLinear.from_module(nn.Linear(64, 32), lowprec.recipes.get("nvfp4"))
    with torch.no_grad():
        q.weight.copy_(lin.weight * layer.mask)
        q.bias.copy_(lin.bias)
    q.seed = layer.seed
    assert torch.equal(layer(x), q(x))
    assert not torch.allclose(layer(x), F.linear(x, lin.weight * layer.mask, lin.bias))   # really quantized


def test_cast_linear_scaling():
    torch.manual_seed(0)
    lin = nn.Linear(8, 3)
    cast = sparse.CASTLinear(lin, n_scale=2)
    with torch.no_grad():
        cast.scale.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 1.0]]))
    w = lin.weight.detach()
    eff = torch.cat([w[:, :4] * cast.scale[:, :1], w[:, 4:] * cast.scale[:, 1:]], dim=1)
    assert torch.allclose(cast.effective_weight(), eff)
    x = torch.randn(2, 8)
    assert torch.allclose(cast(x), F.linear(x, eff, lin.bias))
    assert torch.allclose(cast.revert()(x), cast(x))


def test_configs_convert_and_skip_with_reasons():
    for cfg, kind in [(sparse.SRSTEConfig(), sparse.SparseLinear), (sparse.ASTConfig(slorb_k=4), sparse.SparseLinear),
                      (sparse.CASTConfig(), sparse.CASTLinear)]:
        m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.Linear(6, 4))
        m, report = lowprec.convert_model(m, cfg, return_report=True)
        assert isinstance(m[0], kind) and isinstance(m[2], kind)
        assert isinstance(m[3], nn.Linear) and "3" in report.skipped and "not a multiple of" in report.skipped["3"]
        assert lowprec.revert_model(m)[0].__class__ is nn.Linear
    with pytest.raises(ValueError, match="input_norms"):
        sparse.SRSTEConfig(score="wanda")
    with pytest.raises(ValueError, match="transposable"):
        sparse.ASTConfig(n=1, transposable=True)
    with pytest.raises(TypeError):
        sparse.SparseFP4Config(sparse.CASTConfig())


def test_wanda_config_uses_calibration_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    norms = sparse.collect_input_norms(model, [torch.randn(16, 8) * torch.arange(1, 9)])
    w0 = model[0].weight.detach().clone()
    model = lowprec.convert_model(model, sparse.SRSTEConfig(score="wanda", input_norms=norms))
    assert torch.equal(model[0].mask, sparse.nm_mask(w0.abs() * norms["0"][None]))


def test_distillation_losses():
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    y = torch.randint(0, 11, (2, 3))
    ce = F.cross_entropy(zs.reshape(-1, 11), y.reshape(-1))
    pt = F.softmax(zt.reshape(-1, 11) / 2, -1)
    kl = (pt * (pt.log() - F.log_softmax(zs.reshape(-1, 11) / 2, -1))).sum(-1).mean()
    assert torch.allclose(sparse.ast_distillation_loss(zs, zt, y), ce / 3 + (2 / 3) * 4 * kl, atol=1e-6)
    pt1 = F.softmax(zt.reshape(-1, 11), -1)
    kl1 = (pt1 * (pt1.log() - F.log_softmax(zs.reshape(-1, 11), -1))).sum(-1).mean()
    assert torch.allclose(sparse.cast_distillation_loss(zs, zt, y), kl1 / 3 + (2 / 3) * ce, atol=1e-6)
    assert float(sparse.kl_teacher_student(zs, zs)) == pytest.approx(0.0, abs=1e-6)
    hs, ht = [torch.randn(4, 5)], [torch.randn(4, 5)]
    with_h = sparse.ast_distillation_loss(zs, zt, y, student_hidden=hs, teacher_hidden=ht, hidden_weight=0.5)
    assert torch.allclose(with_h, ce / 3 + (2 / 3) * 4 * kl + 0.5 * F.mse_loss(hs[0], ht[0]), atol=1e-6)
    with pytest.raises(ValueError, match="hidden"):
        sparse.ast_distillation_loss(zs, zt, y, hidden_weight=0.5)


@pytest.mark.parametrize("config", [sparse.SRSTEConfig(), sparse.ASTConfig(slorb_k=8), sparse.CASTConfig(),
                                    sparse.SparseFP4Config(sparse.ASTConfig(), "nvfp4")],
                         ids=["srste", "ast", "cast", "sparse_fp4"])
def test_layers_a_sparse_config_cannot_replace_are_reported(config):
    """GPT-2's Conv1D and nn.MultiheadAttention's out_proj used to be passed over silently
    (the report listed nothing): they are skipped with the reason."""
    from transformers.pytorch_utils import Conv1D
    model = torch.nn.ModuleDict({"conv": Conv1D(32, 64), "mha": torch.nn.MultiheadAttention(64, 4),
                                 "lin": torch.nn.Linear(64, 32)})
    model, report = lowprec.convert_model(model, config, return_report=True)
    assert report.converted == ["lin"]
    assert "Conv1D" in report.skipped["conv"] and "out_proj" in report.skipped["mha.out_proj"]


def test_ships_as_lowprec_sparse_and_not_as_a_top_level_sparse(tmp_path):
    """A top-level ``sparse`` would clash with PyData's package on PyPI.  Outside the source
    tree, ``lowprec.sparse`` imports and a ``sparse`` module, if any, is not ours."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import importlib.util, lowprec.sparse as s; spec = importlib.util.find_spec('sparse'); "
            "print(s.SparseLinear.__module__); print(spec.origin if spec else None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr
    module, origin = out.stdout.split()
    assert module == "lowprec.sparse.nn"
    assert origin == "None" or not origin.startswith(repo)      # PyData's, if installed
