"""Every backend of the sparse kernels is bit-exact with the reference (Triton under
TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

import lowprec
from lowprec import sparse  # noqa: F401  (registers the masked-Adam op)
from lowprec.reference.sparsity import compress_24, decompress_24, nm_mask
from lowprec.sparse.kernels import masked_adam_step
from lowprec.sparse.reference import StepScalars

FAST = [b for b in ("cpp", "triton") if lowprec.ops.backend_status(b)[0]]


def _state(n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    w[::7] = 0.0                                     # sign(0) = 0
    return (w, torch.randn(n, generator=g) * 1e-3, torch.randn(n, generator=g) * 1e-3,
            torch.rand(n, generator=g) * 1e-6, torch.rand(n, generator=g) > 0.5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", ["adams", "ast"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("step,progress,wd", [(1, 0.25, 0.0), (7, 1.0, 0.01), (3, 0.5, 0.1)])
def test_masked_adam_step_bit_exact(backend, mode, masked, step, progress, wd):
    w, g, m, v, k = _state(3000, step)
    s = StepScalars.make(mode, step, 1e-3, 0.9, 0.999, 1e-8, wd, 1e-3, progress)
    ref = [t.clone() for t in (w, m, v)]
    fast = [t.clone() for t in (w, m, v)]
    masked_adam_step(ref[0], g, ref[1], ref[2], k if masked else None, s, backend="reference")
    masked_adam_step(fast[0], g, fast[1], fast[2], k if masked else None, s, backend=backend)
    for a, b in zip(ref, fast):
        assert torch.equal(a, b)


def test_masked_adam_step_checks_inputs():
    w, g, m, v, k = _state(16, 0)
    s = StepScalars.make("adams", 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1e-3, 0.1)
    with pytest.raises(TypeError, match="fp32"):
        masked_adam_step(w.double(), g, m, v, k, s)
    with pytest.raises(ValueError, match="bool"):
        masked_adam_step(w, g, m, v, k.int(), s)
    with pytest.raises(ValueError, match="mode"):
        StepScalars.make("sgd", 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("backend", FAST)
def test_compress_24_and_mask_kernels_match_reference(backend):
    torch.manual_seed(1)
    w = torch.randint(-2, 3, (24, 64)).float()                 # ties
    mask = lowprec.nm_mask(w.abs(), backend=backend)
    assert torch.equal(mask, nm_mask(w.abs()))
    v, meta = lowprec.compress_24(w, mask, backend=backend)
    v_ref, meta_ref = compress_24(w, mask)
    assert torch.equal(v, v_ref) and torch.equal(meta, meta_ref)
    assert torch.equal(decompress_24(v, meta), w * mask)
    bad = mask.clone()
    bad[0, :4] = True
    with pytest.raises((ValueError, RuntimeError), match="2:4"):
        lowprec.compress_24(w, bad, backend=backend)
