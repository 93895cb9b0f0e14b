"""GaLore optimizers: AdamW at full rank, state bytes, low-precision state, resume, DDP,
layer-wise hooks, and the fused update kernels."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import lowprec
from lowprec.galore import (GaLoreAdafactor, GaLoreAdamW, LayerwiseOptimizer, galore_param_groups,
                            optimizer_state_formula)
from lowprec.galore import state as lowbit
from lowprec.galore.fused import reference_update

FAST = [b for b in ("cpp", "triton") if lowprec.ops.backend_status(b)[0]]


@pytest.mark.parametrize("proj_type", ["std", "full", "left", "right"])
@pytest.mark.parametrize("shape", [(16, 12), (12, 16)])
def test_full_rank_equals_adamw(proj_type, shape):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape))
    q = nn.Parameter(p.detach().clone())
    o1 = GaLoreAdamW([{"params": [p], "rank": max(shape), "scale": 1.0, "proj_type": proj_type}], lr=1e-2,
                     weight_decay=0.1, eps=1e-8)
    o2 = torch.optim.AdamW([q], lr=1e-2, weight_decay=0.1, eps=1e-8)
    for _ in range(6):
        g = torch.randn(shape)
        p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_plain_groups_and_non_2d_params_take_adamw():
    torch.manual_seed(0)
    b = nn.Parameter(torch.randn(8))
    b2 = nn.Parameter(b.detach().clone())
    o1 = GaLoreAdamW([{"params": [b], "rank": 2}], lr=1e-2, eps=1e-8)
    o2 = torch.optim.AdamW([b2], lr=1e-2, eps=1e-8, weight_decay=0.0)
    for _ in range(3):
        g = torch.randn(8)
        b.grad, b2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(b, b2, atol=1e-6)
    assert "projector" not in o1.state[b]


def _tensor_bytes(d):
    return sum(t.numel() * t.element_size() for t in d.values() if torch.is_tensor(t)) if d else 0


@pytest.mark.parametrize("proj_type", ["std", "reverse_std"])
def test_state_bytes_equal_the_formula(proj_type):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(96, 64)), nn.Parameter(torch.randn(32, 80))]
    opt = GaLoreAdamW([{"params": params, "rank": 8, "proj_type": proj_type}], lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    formula = optimizer_state_formula(params, 8, proj_type)
    for i, p in enumerate(params):
        st = opt.state[p]
        measured = _tensor_bytes(st["exp_avg"]) + _tensor_bytes(st["exp_avg_sq"]) + _tensor_bytes(st["projector"])
        assert measured == 4 * formula[i]
    adamw_numbers = sum(2 * p.numel() for p in params)
    assert sum(formula.values()) < 0.3 * adamw_numbers


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_stochastic_rounding_of_moments_is_unbiased(fmt):
    torch.manual_seed(0)
    x = torch.randn(4, 64) * 1e-3
    draws = torch.stack([lowbit.load(lowbit.store(x, fmt, seed=7, offset=i * 256)[0], fmt, x.shape)
                         for i in range(400)])
    mean = draws.mean(0)
    spread = draws.std(0) / 20.0 + 1e-9                      # standard error of the mean of 400 draws
    assert ((mean - x).abs() <= 4.5 * spread).float().mean() > 0.99
    nearest = lowprec.quantize(x, fmt).dequantize(torch.float32)
    assert (mean - x).abs().mean() < 0.25 * (nearest - x).abs().mean()
    v = x.abs()
    v_draws = torch.stack([lowbit.load(lowbit.store(v, fmt, 3, i * 256, sqrt=True)[0], fmt, v.shape, sqrt=True)
                           for i in range(50)])
    assert (v_draws >= 0).all()


def _tiny_lm_loss(opt_kwargs, steps=60):
    from lowprec.sim.data import ByteCorpus
    from lowprec.sim.model import TinyLM, TinyLMConfig
    cfg = TinyLMConfig(d_model=64, n_layers=1, n_heads=4, d_ff=128, seq_len=32)
    torch.manual_seed(0)
    model = TinyLM(cfg)
    opt = GaLoreAdamW(galore_param_groups(model, rank=16, update_proj_gap=20, scale=1.0, **opt_kwargs), lr=3e-3)
    corpus, g = ByteCorpus(), torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x, y = corpus.batch("train", 8, cfg.seq_len, g)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


@pytest.mark.slow
def test_low_precision_state_stays_within_bound_of_fp32_state():
    base = _tiny_lm_loss({})
    for fmt in ("mxfp8", "nvfp4"):
        assert abs(_tiny_lm_loss({"state_format": fmt}) - base) < 0.05, fmt
    assert abs(_tiny_lm_loss({"state_format": "mxfp8", "proj_format": "mxfp8"}) - base) < 0.05


@pytest.mark.parametrize("opt_cls,kw", [
    (GaLoreAdamW, dict(refresh="randomized", lazy_threshold=0.5, state_format="nvfp4", update_proj_gap=2)),
    (GaLoreAdamW, dict(moment_policy="reproject", proj_format="mxfp8", update_proj_gap=3, proj_type="full")),
    (GaLoreAdafactor, dict(update_proj_gap=2)),
], ids=["adamw-randomized-lazy-fp4", "adamw-reproject-proj8", "adafactor"])
def test_checkpoint_resume_is_bit_identical(opt_cls, kw, tmp_path):
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(24, 40, generator=g), torch.randn(24, generator=g)] for _ in range(8)]

    def make():
        torch.manual_seed(0)
        lin = nn.Linear(40, 24)
        return lin, opt_cls([{"params": [lin.weight], "rank": 6, **kw}, {"params": [lin.bias]}], lr=1e-2, seed=3)

    def run(lin, opt, gs):
        for gw, gb in gs:
            lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
            opt.step()

    lin_a, opt_a = make()
    run(lin_a, opt_a, grads)
    lin_b, opt_b = make()
    run(lin_b, opt_b, grads[:4])
    torch.save({"model": lin_b.state_dict(), "opt": opt_b.state_dict()}, tmp_path / "ck.pt")
    lin_c, opt_c = make()
    ck = torch.load(tmp_path / "ck.pt")                       # weights_only: the state is tensors and numbers
    lin_c.load_state_dict(ck["model"])
    opt_c.load_state_dict(ck["opt"])
    run(lin_c, opt_c, grads[4:])
    assert torch.equal(lin_a.weight, lin_c.weight) and torch.equal(lin_a.bias, lin_c.bias)


def test_bf16_weights_resume_exactly(tmp_path):
    lin = nn.Linear(16, 24).bfloat16()
    opt = GaLoreAdamW([{"params": [lin.weight], "rank": 4}], lr=1e-2)
    lin.weight.grad = torch.randn(24, 16).bfloat16()
    opt.step()
    sd = opt.state_dict()
    opt2 = GaLoreAdamW([{"params": [lin.weight], "rank": 4}], lr=1e-2)
    opt2.load_state_dict(sd)
    st = opt2.state[lin.weight]
    assert st["exp_avg"]["value"].dtype == torch.float32 and st["projector"]["p"].dtype == torch.float32
    assert torch.equal(st["master"], opt.state[lin.weight]["master"])


def test_layerwise_hooks_match_a_plain_step_and_free_gradients():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    b = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    b.load_state_dict(a.state_dict())
    oa = GaLoreAdamW(galore_param_groups(a, rank=4, update_proj_gap=2), lr=1e-2)
    ob = LayerwiseOptimizer(b, GaLoreAdamW(galore_param_groups(b, rank=4, update_proj_gap=2), lr=1e-2))
    for i in range(4):
        x = torch.randn(5, 16, generator=torch.Generator().manual_seed(i))
        oa.zero_grad()
        a(x).pow(2).sum().backward()
        oa.step()
        b(x).pow(2).sum().backward()
        assert all(p.grad is None for p in b.parameters())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    ob.remove()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "galore_ddp_worker.py")
    out = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "GaLore DDP == single" in out.stdout


def _gemm_bound(w, a, b, coef, c_wd, got):
    exact = (w.double() * c_wd - coef * (a.double() @ b.double()))
    ref = w.clone()
    reference_update(ref, a, b, coef, c_wd)
    ref_err = (ref.double() - exact).abs().max().item()
    err = (got.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-6, (err, ref_err)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("m,k,n", [(70, 12, 50), (33, 40, 64), (128, 8, 96)])
def test_fused_update_within_gemm_bound(backend, m, k, n):
    from lowprec import ops
    torch.manual_seed(m)
    w, a, b = torch.randn(m, n), torch.randn(m, k), torch.randn(k, n)
    got = w.clone()
    ops.resolve("galore_update_", backend, "cpu")(got, a, b, 0.01, 0.999)
    _gemm_bound(w, a, b, 0.01, 0.999, got)


@pytest.mark.skipif("triton" not in FAST, reason="triton is not installed")
@pytest.mark.parametrize("fmt,q_is_a", [("nvfp4", True), ("mxfp4", False), ("mxfp8", True), ("mxfp8", False)])
def test_fused_update_reads_microscaled_projector(fmt, q_is_a):
    from lowprec.triton.galore import launch_update_q
    torch.manual_seed(0)
    w, a, b = torch.randn(64, 48), torch.randn(64, 32), torch.randn(32, 48)
    q = lowprec.quantize(a if q_is_a else b, fmt)
    deq = q.dequantize(torch.float32)
    got = w.clone()
    launch_update_q(got, b if q_is_a else a, q, q_is_a, 0.01, 0.999)
    _gemm_bound(w, deq if q_is_a else a, b if q_is_a else deq, 0.01, 0.999, got)


def test_optimizers_validate_groups():
    p = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="moment_policy"):
        GaLoreAdamW([{"params": [p], "rank": 2, "moment_policy": "average"}])
    with pytest.raises(ValueError, match="state format"):
        GaLoreAdamW([{"params": [p], "rank": 2, "state_format": "int3"}])
    with pytest.raises(ValueError, match="proj_type"):
        GaLoreAdamW([{"params": [p], "rank": 2, "proj_type": "diag"}])
    with pytest.raises(ValueError, match="DDP"):
        LayerwiseOptimizer(nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel),
                           GaLoreAdamW([p]))


def test_unknown_options_raise_like_torch_optim():
    """galore-torch raises on these; before, GaLoreAdamW accepted them silently."""
    from lowprec.galore import GaLoreAdafactor, GaLoreAdamW
    w = torch.nn.Parameter(torch.randn(16, 32))
    with pytest.raises(TypeError, match="amsgrad"):
        GaLoreAdamW([w], amsgrad=True)
    with pytest.raises(TypeError, match="updat_proj_gap"):
        GaLoreAdafactor([w], updat_proj_gap=10)
    with pytest.raises(KeyError, match="updat_proj_gap"):
        GaLoreAdamW([{"params": [w], "rank": 4, "updat_proj_gap": 10}])
    GaLoreAdamW([{"params": [w], "rank": 4, "update_proj_gap": 10}])   # the right spelling works
