"""AdamS and AST's AdamW against the equations of docs/sparse.md, worked by hand on a
tiny tensor in float64 scalar arithmetic, and checkpoint resume."""

import math

import pytest
import torch

import lowprec
from lowprec import sparse

B1, B2, EPS = 0.9, 0.999, 1e-8
BACKENDS = [b for b in ("reference", "cpp", "triton") if lowprec.ops.backend_status(b)[0]]


def sign(x):
    return (x > 0) - (x < 0)


def adams_by_hand(w, g, mu, v, kept, t, T, lr, lam):
    """One AdamS step on python floats, straight from the equations."""
    a = t / T
    out = []
    for wi, gi, mi, vi, ki in zip(w, g, mu, v, kept):
        mi = B1 * mi + (1 - B1) * gi
        mt = mi if ki else (1 - a) * mi + a * lam * sign(wi)
        vi = B2 * vi + (1 - B2) * mt * mt
        wi = wi - lr * (mt / (1 - B1 ** t)) / (math.sqrt(vi / (1 - B2 ** t)) + EPS)
        out.append((wi, mi, vi))
    return [list(c) for c in zip(*out)]


def ast_by_hand(w, g, m, v, kept, t, ramp, lr, lam):
    lt = lam * min(t / ramp, 1.0)
    out = []
    for wi, gi, mi, vi, ki in zip(w, g, m, v, kept):
        mi = B1 * mi + (1 - B1) * gi
        u = mi + (0.0 if ki else lt * wi)
        vi = B2 * vi + (1 - B2) * u * u
        wi = wi - lr * (u / (1 - B1 ** t)) / (math.sqrt(vi / (1 - B2 ** t)) + EPS)
        out.append((wi, mi, vi))
    return [list(c) for c in zip(*out)]


W0 = [0.5, -0.1, 0.0, 0.3, 0.02, -0.7, 0.04, 0.01]
G = [[0.1, 0.2, -0.3, 0.0, 0.05, -0.01, 0.02, -0.04],
     [-0.2, 0.1, 0.1, 0.3, -0.05, 0.02, 0.0, 0.01]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_adams_two_steps_by_hand(backend):
    lr, lam, T = 0.01, 0.05, 4
    p = torch.nn.Parameter(torch.tensor([W0]))
    opt = sparse.AdamS([p], lr=lr, lam=lam, total_steps=T, mask_interval=10, backend=backend)
    w, mu, v = list(W0), [0.0] * 8, [0.0] * 8
    kept = [True, False, False, True, False, True, True, False]    # top-2 |w| of each group of 4
    for t, g in enumerate(G, start=1):
        p.grad = torch.tensor([g])
        opt.step()
        w, mu, v = adams_by_hand(w, g, mu, v, kept, t, T, lr, lam)
        st = opt.state[p]
        assert st["mask"].tolist() == [kept]                        # refreshed at t=1 only (T_m = 10)
        assert st["exp_avg"].tolist()[0] == pytest.approx(mu, rel=1e-6, abs=1e-12)
        assert st["exp_avg_sq"].tolist()[0] == pytest.approx(v, rel=1e-5, abs=1e-14)
        assert p.tolist()[0] == pytest.approx(w, rel=1e-6, abs=1e-7)
    # worked by hand for the pruned zero weight (index 2): at t=1, α=1/4 and sign(0)=0, so
    # μ̃ = (3/4)(0.1 · -0.3) = -0.0225 and the step is lr · (μ̃/0.1) / |μ̃| / ... = +lr/(1-β1) · ...
    p2 = torch.nn.Parameter(torch.tensor([W0]))
    o2 = sparse.AdamS([p2], lr=lr, lam=lam, total_steps=T, mask_interval=10, backend=backend)
    p2.grad = torch.tensor([G[0]])
    o2.step()
    mt = 0.75 * 0.1 * -0.3
    want = 0.0 - lr * (mt / 0.1) / (math.sqrt(0.001 * mt * mt / 0.001) + EPS)
    assert float(p2.detach()[0, 2]) == pytest.approx(want, rel=1e-6)
    assert float(o2.state[p2]["exp_avg"][0, 2]) == pytest.approx(-0.03, rel=1e-6)   # μ keeps the raw momentum


def test_adams_ramp_reaches_pure_decay_at_T():
    """At t = T the pruned direction is λ sign(W) alone: the gradient no longer matters."""
    p = torch.nn.Parameter(torch.tensor([[0.5, -0.1, 0.2, 0.3]]))
    opt = sparse.AdamS([p], lr=0.001, lam=0.05, total_steps=1, mask_interval=10)
    p.grad = torch.tensor([[0.0, 123.0, 0.0, 0.0]])
    opt.step()
    # index 1 pruned, α = 1: μ̃ = λ sign(-0.1) = -0.05 → W = -0.1 - lr (μ̃/0.1) / (|μ̃| + ε) = -0.09
    mt = -0.05
    assert float(p.detach()[0, 1]) == pytest.approx(-0.1 - 0.001 * (mt / 0.1) / (abs(mt) + EPS), rel=1e-6)
    assert float(p.detach()[0, 1]) == pytest.approx(-0.09, rel=1e-6)


def test_adams_mask_refresh_interval():
    """T_m = 2: the mask is top-2 of |W| taken before steps 1, 3, 5, ... and kept in between."""
    p = torch.nn.Parameter(torch.tensor([[1.0, 0.9, 0.1, 0.0]]))
    opt = sparse.AdamS([p], lr=0.5, lam=0.0, total_steps=10, mask_interval=2)
    masks, before = [], []
    for _ in range(4):
        before.append(sparse.nm_mask(p.detach().abs()).tolist()[0])
        p.grad = torch.tensor([[1.0, 1.0, -1.0, -1.0]])             # shrinks 0, 1 and grows 2, 3
        opt.step()
        masks.append(opt.state[p]["mask"].tolist()[0])
    assert masks[0] == before[0] == [True, True, False, False]
    assert masks[1] == masks[0]
    assert masks[2] == before[2] != masks[0]                          # the weights crossed: refreshed at t=3
    assert masks[3] == masks[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ast_adamw_two_steps_by_hand(backend):
    lr, lam, ramp = 0.01, 0.5, 4
    layer = sparse.SparseLinear(8, 1, bias=False, mask_interval=0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([W0]))
    layer.mask.copy_(sparse.nm_mask(layer.weight.detach().abs()))
    kept = layer.mask.tolist()[0]
    opt = sparse.ASTAdamW([layer.weight], {layer.weight: layer.mask}, lr=lr, lam=lam, ramp_steps=ramp,
                          backend=backend)
    w, m, v = list(W0), [0.0] * 8, [0.0] * 8
    for t, g in enumerate(G, start=1):
        layer.weight.grad = torch.tensor([g])
        opt.step()
        w, m, v = ast_by_hand(w, g, m, v, kept, t, ramp, lr, lam)
        assert layer.weight.tolist()[0] == pytest.approx(w, rel=1e-6, abs=1e-7)
        assert opt.state[layer.weight]["exp_avg"].tolist()[0] == pytest.approx(m, rel=1e-6, abs=1e-12)


def test_dense_groups_are_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(16, 8))
    b = torch.nn.Parameter(a.detach().clone())
    o1 = sparse.AdamS([{"params": [a], "sparse": False}], lr=1e-2, weight_decay=0.1)
    o2 = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(16, 8)
        a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_bf16_params_keep_fp32_master_and_state():
    p = torch.nn.Parameter(torch.randn(4, 8).bfloat16())
    opt = sparse.AdamS([p], lr=1e-3, lam=1e-7, total_steps=10)
    p.grad = torch.randn(4, 8).bfloat16()
    opt.step()
    st = opt.state[p]
    assert st["master"].dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.float32
    assert torch.equal(p.detach(), st["master"].bfloat16())


def test_adams_rejects_ungroupable_params():
    with pytest.raises(ValueError, match="2-D"):
        sparse.AdamS([torch.nn.Parameter(torch.randn(6))], total_steps=5)


def _run(trainer_factory, batches):
    tr = trainer_factory()
    return [tr.step(x, y) for x, y in batches], tr


@pytest.mark.parametrize("config", [sparse.CASTConfig(lam=1e-3, mask_interval=3),
                                    sparse.ASTConfig(mask_interval=3, lam=0.01, ramp_steps=4, slorb_k=8),
                                    sparse.SRSTEConfig(mask_interval=2)], ids=["cast", "ast", "srste"])
def test_checkpoint_resume_is_identical(config, tmp_path):
    """Train 6 steps straight, or 3 + save + load into fresh objects + 3: same losses and weights."""
    from lowprec.sim.model import TinyLM, TinyLMConfig
    cfg = TinyLMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=16)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (4, 16), generator=g), torch.randint(0, 256, (4, 16), generator=g))
               for _ in range(6)]

    def factory():
        torch.manual_seed(0)
        return sparse.SparseTrainer(TinyLM(cfg), config, total_steps=6, lr=3e-3,
                                    module_filter_fn=lambda m, n: n != "head")
    straight, tr_a = _run(factory, batches)
    first, tr_b = _run(factory, batches[:3])
    torch.save(tr_b.state_dict(), tmp_path / "ckpt.pt")
    tr_c = factory()
    tr_c.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    second = [tr_c.step(x, y) for x, y in batches[3:]]
    assert first + second == straight
    for (n, a), (_, c) in zip(tr_a.model.state_dict().items(), tr_c.model.state_dict().items()):
        assert torch.equal(a, c), n
    masks_a = [s["mask"] for s in tr_a.optimizer.state.values() if "mask" in s]
    masks_c = [s["mask"] for s in tr_c.optimizer.state.values() if "mask" in s]
    assert len(masks_a) == len(masks_c) and all(torch.equal(a, c) for a, c in zip(masks_a, masks_c))
    if isinstance(config, sparse.CASTConfig):
        assert masks_a                                              # CAST's masks live in the optimizer


@pytest.mark.slow
def test_fsdp2_sparse_optimizers_match_one_process(tmp_path):
    """AdamS, ASTAdamW, GaLoreAdamW and GaLoreAdafactor under FSDP2 (2 gloo processes), and
    converted models under every preset and sparse config, equal one process bit for bit; they used to fail on DTensors ("nm_mask does not have a sharding strategy registered",
    "got mixed torch.Tensor and DTensor").  GaLore's state is stored sharded: each rank holds at
    most half of what a DDP rank holds (it used to hold all of it).  LayerwiseOptimizer refuses
    FSDP2 (its hook would never fire)."""
    import os
    import subprocess
    import sys
    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    out = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    sys.path.insert(0, os.path.dirname(__file__))
    from fsdp_worker import CASES
    for name in CASES:       # lowprec's optimizers, and AdamW on every preset and sparse layer config
        assert f"{name}: FSDP2 == DDP == single process (max |difference| 0.00e+00)" in out.stdout, out.stdout
        if name.startswith("galore"):    # GaLore's state is stored sharded by rows
            assert f"{name}: state bytes per rank FSDP2" in out.stdout, out.stdout
    assert "layerwise refused under FSDP2" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adams", "ast", "galore", "galore_mxfp8"])
def test_fsdp2_distributed_checkpoint_kill_and_resume(name, tmp_path):
    """Save with torch.distributed.checkpoint after 2 steps and exit; new processes load it and
    run 2 more: bit for bit the uninterrupted run.  (With the sharded optimizer state kept as
    plain local tensors, DCP took them for replicated and kept one rank's: AdamS resumed 0.2 off.)"""
    import os
    import subprocess
    import sys
    worker = os.path.join(os.path.dirname(__file__), "fsdp_dcp_worker.py")
    for phase in ("straight", "first", "resume"):
        out = subprocess.run([sys.executable, worker, str(tmp_path), phase, name], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, phase + out.stdout[-2000:] + out.stderr[-4000:]
    assert f"{name}: resumed through torch.distributed.checkpoint == uninterrupted" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adams", "ast", "galore"])
def test_fsdp2_distributed_checkpoint_resumes_on_another_world_size(name, tmp_path):
    """A 2-rank distributed checkpoint loaded into 4 ranks (DCP reshards the DTensor state):
    masks, counters and offsets exact, weights within 1e-6 of one process doing the same."""
    import os
    import subprocess
    import sys
    worker = os.path.join(os.path.dirname(__file__), "fsdp_dcp_worker.py")
    for phase in ("first", "resume4"):
        out = subprocess.run([sys.executable, worker, str(tmp_path), phase, name], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, phase + out.stdout[-2000:] + out.stderr[-4000:]
    assert f"{name}: 2-rank checkpoint resumed on 4 ranks == one process doing the same" in out.stdout
