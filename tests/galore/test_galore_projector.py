"""Projector shapes, orthonormality, randomized refresh, lazy refresh."""

import pytest
import torch

from lowprec.galore import GaLoreProjector, ProjectorConfig, randomized_svd, subspace_similarity

SHAPES = [(48, 32), (32, 48)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right", "full"])
def test_shapes_and_orthonormality(shape, proj_type):
    m, n = shape
    g = torch.randn(m, n)
    proj = GaLoreProjector(ProjectorConfig(rank=8, proj_type=proj_type), shape)
    proj.refresh(g)
    side = {"std": "right" if m >= n else "left", "reverse_std": "left" if m >= n else "right"}.get(proj_type,
                                                                                                     proj_type)
    assert proj.side == side
    r = proj.project(g)
    assert r.shape == {"left": (8, n), "right": (m, 8), "full": (8, 8)}[side] == proj.projected_shape()
    eye = torch.eye(8)
    if side in ("left", "full"):
        assert proj.p.shape == (m, 8) and torch.allclose(proj.p.T @ proj.p, eye, atol=1e-5)
    if side == "right":
        assert proj.p.shape == (8, n) and torch.allclose(proj.p @ proj.p.T, eye, atol=1e-5)
    if side == "full":
        assert proj.p_right.shape == (8, n) and torch.allclose(proj.p_right @ proj.p_right.T, eye, atol=1e-5)
    assert proj.project_back(r).shape == shape


def test_projection_of_a_rank_r_gradient_is_lossless():
    u, v = torch.randn(40, 4), torch.randn(4, 24)
    g = u @ v
    for t in ("left", "right", "full"):
        proj = GaLoreProjector(ProjectorConfig(rank=4, proj_type=t), g.shape)
        proj.refresh(g)
        assert torch.allclose(proj.project_back(proj.project(g)), g, atol=1e-4)


def test_svd_runs_in_fp32_for_bf16_gradients():
    g = torch.randn(32, 16).bfloat16()
    proj = GaLoreProjector(ProjectorConfig(rank=4), g.shape)
    proj.refresh(g)
    assert proj.p.dtype == torch.float32


def _gapped(m, n, r, gap, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    s = torch.cat([torch.linspace(10, 5, r), torch.linspace(5 / gap, 0.01, min(m, n) - r)])
    return (u[:, : len(s)] * s) @ v[:, : len(s)].T, u[:, :r], v[:, :r]


@pytest.mark.parametrize("power_iters", [0, 2])
def test_randomized_refresh_spans_top_subspace_with_spectral_gap(power_iters):
    a, u_true, v_true = _gapped(128, 96, 8, gap=20.0)
    u, s, vt = randomized_svd(a, 8, oversample=8, power_iters=power_iters, generator=torch.Generator().manual_seed(0))
    sim_u = subspace_similarity(u_true, u[:, :8], "left")
    sim_v = subspace_similarity(v_true.T, vt[:8], "right")
    assert sim_u > (0.999 if power_iters else 0.99) and sim_v > (0.999 if power_iters else 0.99)
    proj = GaLoreProjector(ProjectorConfig(rank=8, refresh="randomized", power_iters=power_iters), a.shape)
    proj.refresh(a)
    assert subspace_similarity(v_true.T, proj.p, "right") > 0.99


def test_lazy_refresh_doubles_the_gap_while_the_subspace_stays():
    a, _, _ = _gapped(64, 48, 4, gap=50.0)
    cfg = ProjectorConfig(rank=4, update_proj_gap=2, lazy_threshold=0.9, max_gap=8)
    proj = GaLoreProjector(cfg, a.shape)
    refreshed = [proj.maybe_refresh(a + 0.001 * torch.randn_like(a), step) for step in range(20)]
    assert [i for i, r in enumerate(refreshed) if r] == [0, 2, 6, 14]      # gaps 2, 4, 8, 8
    assert proj.last_similarity > 0.9
    proj.maybe_refresh(torch.randn(64, 48), 22)                           # subspace moved: gap resets
    assert proj.gap == 2 and proj.last_similarity < 0.9


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="proj_type"):
        ProjectorConfig(proj_type="diagonal")
    with pytest.raises(ValueError, match="refresh"):
        ProjectorConfig(refresh="qr")
    with pytest.raises(ValueError, match="2-D"):
        GaLoreProjector(ProjectorConfig(), (4, 4, 4))
