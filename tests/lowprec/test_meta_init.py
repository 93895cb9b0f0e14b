"""Meta-device initialization: ``to_empty`` + ``load_state_dict`` gives the exact model (and
the exact stochastic-rounding stream) of building it on the CPU; no uninitialized offsets.

Before, ``to_empty`` left sr_offset/sr_seed as whatever the fresh memory held (offsets like
94026188403760), and loading a plain checkpoint kept that garbage."""

import torch
from torch import nn

import lowprec


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))


def _train(model, steps=3):
    torch.manual_seed(1)
    out = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        loss = model(torch.randn(16, 64)).square().mean()
        loss.backward()
        out.append([p.grad.clone() for p in model.parameters()])
    return out


def _garbage_memory():
    """Fill freed allocator memory with a recognisable pattern, so an uninitialized buffer
    shows up as that pattern instead of a lucky zero."""
    torch.full((1 << 16,), 0x5A5A5A5A5A5A, dtype=torch.int64)


def test_to_empty_then_plain_checkpoint_matches_cpu_build():
    plain = _net()
    ref = lowprec.convert_model(_net(), "nvfp4")
    with torch.device("meta"):
        meta = lowprec.convert_model(nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)), "nvfp4")
    _garbage_memory()
    meta.to_empty(device="cpu")
    for m in meta.modules():
        if isinstance(m, lowprec.QuantLinear):
            assert int(m.sr_offset) == 0 and int(m.sr_seed) == m.seed
    meta.load_state_dict(plain.state_dict())                  # a plain (unconverted) checkpoint
    for (k, a), (_, b) in zip(ref.state_dict().items(), meta.state_dict().items()):
        assert torch.equal(a, b), k
    for ga, gb in zip(_train(ref), _train(meta)):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))


def test_to_empty_then_converted_checkpoint_resumes_the_stream():
    trained = lowprec.convert_model(_net(), "nvfp4")
    _train(trained, steps=2)
    sd = trained.state_dict()
    with torch.device("meta"):
        meta = lowprec.convert_model(nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)), "nvfp4")
    meta.to_empty(device="cpu")
    meta.load_state_dict(sd)
    assert int(meta[0].sr_offset) == int(trained[0].sr_offset) > 0
    for ga, gb in zip(_train(trained), _train(meta)):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
