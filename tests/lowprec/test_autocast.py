"""Converted layers under torch.autocast: the output dtype is what nn.Linear gives, and the
quantized GEMMs keep the recipe's numerics (autocast does not recast the reference's fp32
matmul of the fake-quantized operands to bf16), in forward and backward."""

import pytest
import torch

import lowprec
from lowprec import sparse


@pytest.mark.parametrize("config", ["nvfp4", "mxfp4", sparse.SparseFP4Config()], ids=["nvfp4", "mxfp4", "sparse_fp4"])
def test_autocast_dtype_follows_linear_and_numerics_stay(config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    conv = lowprec.convert_model(torch.nn.Sequential(*[m for m in model]), config,
                                 module_filter_fn=lambda m, name: name == "2")
    x = torch.randn(16, 64)
    with torch.autocast("cpu", torch.bfloat16):
        ref_hidden = torch.relu(model[0](x))
        expect = model[2](ref_hidden)               # what nn.Linear gives: bf16
        got = conv(x)
    assert got.dtype == expect.dtype == torch.bfloat16
    # the converted layer under autocast equals the converted layer outside it on the same input
    layer = conv[2]
    state = {k: v.clone() for k, v in layer.state_dict(keep_vars=False).items()}
    offset = layer.sr_offset.clone() if hasattr(layer, "sr_offset") else None
    h = ref_hidden.detach().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        y_ac = layer(h)
    y_ac.float().sum().backward()
    g_ac = h.grad.clone()
    if offset is not None:
        layer.sr_offset.copy_(offset)
    layer.load_state_dict(state)
    h2 = ref_hidden.detach().requires_grad_()
    y = layer(h2)
    y.float().to(torch.bfloat16).float().sum().backward()
    assert torch.equal(y_ac, y.to(torch.bfloat16))
    assert torch.equal(g_ac, h2.grad)
