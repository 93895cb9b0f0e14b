"""OsciReset (TetraJet-v2): a weight whose forward FP4 value flips between two grid points is
reset to their midpoint; a weight drifting steadily (across one boundary, or across several)
is left alone; the detection state is in the state_dict, so a resumed run resets the same
weights at the same steps."""

import copy

import pytest
import torch
from torch import nn

import lowprec
from lowprec.osci_reset import OsciReset, OsciResetConfig, forward_weight_values


def _layer(seed=0):
    torch.manual_seed(seed)
    return lowprec.convert_model(nn.Sequential(nn.Linear(32, 16)), "nvfp4")


def _boundary(layer, i=0, j=0):
    """A master value m of weight (i, j) where its forward value changes, with the values below
    and above it (the other weights fixed)."""
    w = layer.weight
    with torch.no_grad():
        start = float(w[i, j])
        q0 = float(forward_weight_values(layer)[i, j])
        x = start
        for _ in range(10000):
            x += 1e-4
            w[i, j] = x
            q1 = float(forward_weight_values(layer)[i, j])
            if q1 != q0:
                w[i, j] = start
                return x - 0.5e-4, q0, q1
    raise AssertionError("no boundary found")


def test_oscillation_is_reset_to_the_midpoint():
    model = _layer()
    layer = model[0]
    m, lo, hi = _boundary(layer)
    reset = OsciReset(model, OsciResetConfig(window=8, min_flips=4))
    before = layer.weight.detach().clone()
    for t in range(8):
        with torch.no_grad():
            layer.weight[0, 0] = m + (1e-4 if t % 2 else -1e-4)
        done = reset.step()
    assert done == {"0": 1}
    assert float(layer.weight[0, 0].detach()) == pytest.approx((lo + hi) / 2, abs=1e-7)
    w = layer.weight.detach().clone()
    w[0, 0] = before[0, 0]
    assert torch.equal(w, before)               # no other weight touched


@pytest.mark.parametrize("kind", ["one boundary", "many boundaries"])
def test_monotone_drift_is_not_an_oscillation(kind):
    model = _layer(1)
    layer = model[0]
    m, lo, hi = _boundary(layer, 2, 3)
    reset = OsciReset(model, OsciResetConfig(window=8, min_flips=2))
    step = 2e-4 if kind == "one boundary" else 0.6 * abs(hi - lo)
    for t in range(8):
        if t == 7:   # before the window closes: what the detector saw for this weight
            flips, third = int(layer.osci_flips[2, 3]), bool(layer.osci_third[2, 3])
            assert (flips, third) == (1, False) if kind == "one boundary" else (flips >= 2 and third)
        with torch.no_grad():
            layer.weight[2, 3] = m - 4 * 2e-4 + t * step
        done = reset.step()
    assert done == {"0": 0}
    assert bool(layer.osci_flips.sum() == 0)        # the window restarted


def test_state_dict_resume_resets_the_same_weights():
    torch.manual_seed(0)
    x, y = torch.randn(64, 32), torch.randn(64, 16)

    def train(model, reset, opt, steps):
        out = []
        for _ in range(steps):
            opt.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            opt.step()
            out.append(reset.step())
        return out

    full = _layer(3)
    opt = torch.optim.SGD(full.parameters(), lr=0.5)
    log_full = train(full, OsciReset(full, OsciResetConfig(window=4, min_flips=2)), opt, 24)
    assert sum(sum(d.values()) for d in log_full) > 0, "the run should reset some weights"

    first = _layer(3)
    opt1 = torch.optim.SGD(first.parameters(), lr=0.5)
    log1 = train(first, OsciReset(first, OsciResetConfig(window=4, min_flips=2)), opt1, 10)
    state, opt_state = copy.deepcopy(first.state_dict()), copy.deepcopy(opt1.state_dict())
    assert "0.osci_flips" in state and "0.osci_count" in state
    second = _layer(99)
    reset2 = OsciReset(second, OsciResetConfig(window=4, min_flips=2))
    second.load_state_dict(state)
    opt2 = torch.optim.SGD(second.parameters(), lr=0.5)
    opt2.load_state_dict(opt_state)
    log2 = train(second, reset2, opt2, 14)
    assert log1 + log2 == log_full
    assert torch.equal(second[0].weight, full[0].weight)


def test_refuses_layers_without_a_per_weight_grid():
    model = lowprec.convert_model(nn.Sequential(nn.Linear(32, 16)), lowprec.recipes.get("ue5m3"))
    with pytest.raises(ValueError, match="Hadamard-transformed"):
        OsciReset(model)
    with pytest.raises(ValueError, match="min_flips"):
        OsciResetConfig(window=4, min_flips=4)
