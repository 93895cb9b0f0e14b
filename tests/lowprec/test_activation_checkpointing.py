"""Activation checkpointing recomputes exactly the first forward: gradients, stochastic-rounding
offsets, AST step counters and masks are bitwise those of a run without checkpointing, for
every preset recipe and sparse config, with torch.utils.checkpoint (reentrant and not).

Before lowprec.replay, the recompute drew new SR bits (gradients of a different forward) and
counted AST steps twice (a mask refresh every other step)."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import lowprec
from lowprec import sparse

D, H, TOKENS = 64, 128, 32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(D, H), nn.Linear(H, D)

    def forward(self, h):
        return h + self.down(torch.nn.functional.gelu(self.up(h)))


class Net(nn.Module):
    def __init__(self, n_blocks=2):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(n_blocks))
        self.ckpt = None                         # None | "reentrant" | "non_reentrant"

    def forward(self, h):
        for b in self.blocks:
            if self.ckpt is None:
                h = b(h)
            else:
                h = checkpoint(b, h, use_reentrant=self.ckpt == "reentrant")
        return h


CONFIGS = {name: name for name in lowprec.recipe.names() if name != "bf16"}
CONFIGS.update({
    "srste": sparse.SRSTEConfig(mask_interval=2),
    "ast_slorb": sparse.ASTConfig(mask_interval=2, slorb_k=8),
    "sparse_nvfp4": sparse.SparseFP4Config(sparse.ASTConfig(mask_interval=2), "nvfp4"),
})


def _states(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _train(model, steps=4):
    torch.manual_seed(3)
    grads = []
    for _ in range(steps):
        x = torch.randn(TOKENS, D, requires_grad=True)
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad.clone()])
        with torch.no_grad():                    # a plain SGD step, so masks can move
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(0.05 * p.grad)
    return grads


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpointed_gradients_are_bitwise_equal(name, mode):
    torch.manual_seed(0)
    plain = lowprec.convert_model(Net(), CONFIGS[name])
    ckpt = copy.deepcopy(plain)
    ckpt.ckpt = mode
    g_plain, g_ckpt = _train(plain), _train(ckpt)
    for step, (a, b) in enumerate(zip(g_plain, g_ckpt)):
        assert len(a) == len(b)
        for i, (u, v) in enumerate(zip(a, b)):
            assert torch.equal(u, v), (step, i)
    sa, sb = _states(plain), _states(ckpt)
    assert sa.keys() == sb.keys()
    for k in sa:                                 # sr_offset, step, mask, initial_mask, weights
        assert torch.equal(sa[k], sb[k]), k
    for m in ckpt.modules():                     # nothing left waiting for a replay
        if hasattr(m, "_replay"):
            assert len(m._replay) == 0


def test_ast_counts_one_step_per_forward_under_checkpointing():
    model = lowprec.convert_model(Net(1), sparse.ASTConfig(mask_interval=3))
    model.ckpt = "non_reentrant"
    _train(model, steps=3)
    layer = model.blocks[0].up
    assert int(layer.step) == 3
    assert len(layer.flip_history) == 0          # refreshes at step 3, 6, ...: none yet


def test_sr_offset_advances_once_per_forward_under_checkpointing():
    model = lowprec.convert_model(Net(1), "nvfp4")
    plain = copy.deepcopy(model)
    model.ckpt = "non_reentrant"
    _train(model, steps=2)
    _train(plain, steps=2)
    layer = model.blocks[0].up
    assert int(layer.sr_offset) > 0 and int(layer.sr_offset) == int(plain.blocks[0].up.sr_offset)


def test_no_records_accumulate_without_checkpointing():
    model = lowprec.convert_model(Net(1), "nvfp4")
    _train(model, steps=3)
    with torch.no_grad():
        model.eval()
        model(torch.randn(TOKENS, D))
    assert all(len(m._replay) == 0 for m in model.modules() if hasattr(m, "_replay"))


def test_recompute_without_a_recorded_forward_is_an_error():
    layer = lowprec.convert_model(nn.Sequential(nn.Linear(D, H)), "nvfp4")[0]
    x = torch.randn(TOKENS, D, requires_grad=True)

    class CallsLayerInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            with torch.enable_grad():
                layer(torch.randn(TOKENS, D))
            return g

    with pytest.raises(RuntimeError, match="no earlier training forward"):
        CallsLayerInBackward.apply(x).sum().backward()
