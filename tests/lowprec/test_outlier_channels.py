"""OutControl (TetraJet-v2, ``Recipe.outlier_channels``): the k input channels with the
largest |x| go through a bf16 GEMM, the rest through the quantized GEMMs.

What must hold: the chosen channels are the largest by max |x| (ties to the lower index); an
outlier channel no longer inflates its blocks' scales, so the output error drops; with every
channel kept in bf16 the layer is the bf16 GEMM; the gradients of the kept channels are the
bf16 GEMMs' and the others' are the quantized ones'; old recipes keep their JSON."""

import pytest
import torch
from torch import nn

import lowprec
from lowprec.autograd import outlier_channel_indices


def _pair(k, recipe="nvfp4", seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(64, 32)
    m = lowprec.convert_model(nn.Sequential(nn.Linear(64, 32)), lowprec.recipes.get(recipe, outlier_channels=k))
    with torch.no_grad():
        m[0].weight.copy_(lin.weight)
        m[0].bias.copy_(lin.bias)
    return lin, m


def test_channel_choice():
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    x[1, 3, 7] = 50.0
    x[0, 0, 2] = -40.0
    assert outlier_channel_indices(x, 2).tolist() == [2, 7]
    assert outlier_channel_indices(torch.ones(4, 6), 3).tolist() == [0, 1, 2]        # ties: lower channels


def test_an_outlier_channel_no_longer_costs_accuracy():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    x[:, 5] *= 100.0
    errors = {}
    for k in (0, 1):
        lin, m = _pair(k)
        ref = lin(x).detach()
        errors[k] = float((m(x).detach() - ref).norm() / ref.norm())
    assert errors[1] < errors[0] / 4, errors


def test_all_channels_in_bf16_is_the_bf16_gemm():
    lin, m = _pair(64)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    want = torch.nn.functional.linear(x.bfloat16(), lin.weight.bfloat16()).float() + lin.bias
    assert torch.equal(m(x), want)


def test_gradients_split_by_channel():
    """dX and dW of the bf16 channels are the bf16 GEMMs' (dY in bf16 times the bf16 operand);
    the quantized GEMMs give those channels nothing (their X is zeroed)."""
    lin, m = _pair(2)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    x[:, [9, 40]] *= 30.0
    x.requires_grad_(True)
    dy = torch.randn(32, 32, generator=torch.Generator().manual_seed(4))
    m(x).backward(dy)
    idx = [9, 40]
    w = lin.weight.detach()
    want_dx = (dy.bfloat16() @ w[:, idx].bfloat16()).float()
    assert torch.equal(x.grad[:, idx], want_dx)
    want_dw = (dy.bfloat16().t() @ x.detach()[:, idx].bfloat16()).float()
    assert torch.equal(m[0].weight.grad[:, idx], want_dw)
    # the other channels: the quantized path alone (the same as a layer fed X with those columns zeroed)
    _, q = _pair(0)
    x0 = x.detach().clone()
    x0[:, idx] = 0.0
    x0.requires_grad_(True)
    q(x0).backward(dy)
    rest = [j for j in range(64) if j not in idx]
    assert torch.equal(x.grad[:, rest], x0.grad[:, rest])
    assert torch.equal(m[0].weight.grad[:, rest], q[0].weight.grad[:, rest])


def test_recipe_field_and_json():
    r = lowprec.recipes.get("nvfp4", outlier_channels=8)
    assert type(r).from_json(r.to_json()) == r and "outliers=8xbf16" in r.describe()
    assert "outlier_channels" not in lowprec.recipes.get("nvfp4").to_dict()
    with pytest.raises(ValueError, match="outlier_channels"):
        lowprec.recipes.get("nvfp4", outlier_channels=-1)


def test_trains_and_compiles():
    torch.manual_seed(0)
    m = lowprec.convert_model(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)),
                              lowprec.recipes.get("nvfp4", outlier_channels=4))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    data, target = torch.randn(64, 32), torch.randn(64, 8)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = (m(data) - target).pow(2).mean()
        loss.backward()
        opt.step()
        first = first or loss.item()
    assert loss.item() < first
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(data), m(data))
