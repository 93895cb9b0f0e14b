"""Every lowprec optimizer resumes bit-identically through the plain torch.optim API, at any
step (between mask refreshes too) and for fp32 and bf16 parameters.

torch.optim's generic load casts each state tensor to its parameter's dtype: AdamS's bool
mask came back as float32 (the next step raised) and bf16 parameters lost their fp32 master
copies and moments (the run drifted).  These tests fail on that behaviour."""

import io

import pytest
import torch
from torch import nn

import lowprec
from lowprec import sparse
from lowprec.galore import GaLoreAdafactor, GaLoreAdamW

STEPS = 5


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).to(dtype)


def _adams(dtype):
    model = lowprec.convert_model(_model(dtype), sparse.CASTConfig())
    opt = sparse.AdamS(sparse.cast_param_groups(model), lr=1e-2, lam=1e-3, total_steps=STEPS, mask_interval=3)
    return model, opt


def _ast(dtype):
    model = lowprec.convert_model(_model(dtype), sparse.ASTConfig(mask_interval=3, slorb_k=4))
    return model, sparse.ASTAdamW.for_model(model, lr=1e-2, lam=1e-2, ramp_steps=4)


def _galore(dtype):
    model = _model(dtype)
    groups = [{"params": [model[0].weight, model[2].weight], "rank": 4, "update_proj_gap": 2},
              {"params": [model[0].bias, model[2].bias]}]
    return model, GaLoreAdamW(groups, lr=1e-2)


def _galore_lowbit(dtype):
    model = _model(dtype)
    groups = [{"params": [model[0].weight, model[2].weight], "rank": 4, "update_proj_gap": 2,
               "state_format": "mxfp8"}, {"params": [model[0].bias, model[2].bias]}]
    return model, GaLoreAdamW(groups, lr=1e-2)


def _galore_adafactor(dtype):
    model = _model(dtype)
    groups = [{"params": [model[0].weight, model[2].weight], "rank": 4, "update_proj_gap": 2},
              {"params": [model[0].bias, model[2].bias]}]
    return model, GaLoreAdafactor(groups, lr=1e-2, beta1=0.9)


FACTORIES = {"adams": _adams, "ast": _ast, "galore": _galore, "galore_mxfp8_state": _galore_lowbit,
             "galore_adafactor": _galore_adafactor}


def _batches(dtype):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g).to(dtype), torch.randn(8, 8, generator=g).to(dtype))
            for _ in range(STEPS)]


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = (model(x) - y).float().pow(2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def _state_tensors(opt):
    return [(k, v) for s in opt.state.values() for k, v in sorted(s.items()) if torch.is_tensor(v)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stop_at", [1, 2, 3])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_resume_is_bit_identical(name, stop_at, dtype):
    make = FACTORIES[name]
    batches = _batches(dtype)
    model_a, opt_a = make(dtype)
    straight = [_step(model_a, opt_a, x, y) for x, y in batches]

    model_b, opt_b = make(dtype)
    first = [_step(model_b, opt_b, x, y) for x, y in batches[:stop_at]]
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, buf)
    del model_b, opt_b                                   # the interrupted run is gone
    buf.seek(0)
    ckpt = torch.load(buf)                               # weights_only: plain tensors and numbers
    model_c, opt_c = make(dtype)
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    saved_dtypes = [(k, v.dtype) for s in ckpt["opt"]["state"].values() for k, v in sorted(s.items())
                    if torch.is_tensor(v)]
    assert [(k, v.dtype) for k, v in _state_tensors(opt_c)] == saved_dtypes
    second = [_step(model_c, opt_c, x, y) for x, y in batches[stop_at:]]

    assert first + second == straight
    for (n, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), n
    for (k, a), (_, c) in zip(_state_tensors(opt_a), _state_tensors(opt_c)):
        assert a.dtype == c.dtype and torch.equal(a, c), k


def test_adams_mask_stays_bool_after_load():
    model, opt = _adams(torch.float32)
    x, y = _batches(torch.float32)[0]
    _step(model, opt, x, y)
    opt2 = sparse.AdamS(sparse.cast_param_groups(model), lr=1e-2, total_steps=STEPS, mask_interval=3)
    opt2.load_state_dict(opt.state_dict())
    masks = [s["mask"] for s in opt2.state.values() if "mask" in s]
    assert masks and all(m.dtype == torch.bool for m in masks)
