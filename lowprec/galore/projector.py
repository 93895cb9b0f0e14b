"""GaLore projectors: the low-rank subspace of a 2-D gradient G (m × n), refreshed every
``update_proj_gap`` steps (docs/galore.md).

Projection types (``side`` is what a type resolves to for a given shape):
  right: P = V[:, :r]^T (r × n);  R = G P^T (m × r);   back: ΔW = N P
  left:  P = U[:, :r]   (m × r);  R = P^T G (r × n);   back: ΔW = P N
  std:   right if m >= n else left;   reverse_std: left if m >= n else right
  full:  P_l = U[:, :r], P_r = V[:, :r]^T;  R = P_l^T G P_r^T (r × r);  back: ΔW = P_l N P_r

Refresh: thin SVD in fp32 (whatever the gradient's dtype), or a randomized range finder
(Gaussian sketch of r + p columns from a seeded generator, q power iterations with QR
re-orthonormalization, QR, SVD of the small matrix).  With ``lazy_threshold`` s, each
refresh measures the overlap of the old and new subspaces, sim = ||P_old^T P_new||_F^2 / r
(1 = same subspace, the mean squared cosine of the principal angles); when sim >= s the
gap until the next refresh doubles (up to ``max_gap``), otherwise it falls back to
``update_proj_gap``: SVDs are skipped while the subspace barely moves.

A rank at or above the projected dimension is no compression: the projector is then the
identity (canonical basis), so GaLore at full rank is exactly AdamW; any other orthonormal
basis spans the same space but changes Adam's per-coordinate normalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
REFRESH = ("svd", "randomized")


@dataclass(frozen=True)
class ProjectorConfig:
    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: str = "std"
    refresh: str = "svd"
    oversample: int = 8
    power_iters: int = 2
    lazy_threshold: Optional[float] = None
    max_gap: int = 3200

    def __post_init__(self):
        if self.rank < 1 or self.update_proj_gap < 1:
            raise ValueError(f"rank and update_proj_gap must be >= 1, got {self.rank}, {self.update_proj_gap}")
        if self.proj_type not in PROJ_TYPES:
            raise ValueError(f"unknown proj_type {self.proj_type!r}; expected one of {PROJ_TYPES}")
        if self.refresh not in REFRESH:
            raise ValueError(f"unknown refresh {self.refresh!r}; expected one of {REFRESH}")
        if self.lazy_threshold is not None and not 0 < self.lazy_threshold <= 1:
            raise ValueError(f"lazy_threshold must be in (0, 1], got {self.lazy_threshold}")
        if self.oversample < 0 or self.power_iters < 0:
            raise ValueError("oversample and power_iters must be >= 0")


def resolve_side(proj_type: str, shape) -> str:
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def thin_svd(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, V^T of fp32 ``g``."""
    return torch.linalg.svd(g.float(), full_matrices=False)


def randomized_svd(g: torch.Tensor, rank: int, oversample: int, power_iters: int,
                   generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate top-``rank`` U, S, V^T by a randomized range finder (Halko et al.)."""
    a = g.float()
    m, n = a.shape
    k = min(rank + oversample, m, n)
    omega = torch.randn(n, k, generator=generator, device="cpu").to(a.device)
    q, _ = torch.linalg.qr(a @ omega)
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(a.T @ q)
        q, _ = torch.linalg.qr(a @ z)
    ub, s, vt = torch.linalg.svd(q.T @ a, full_matrices=False)
    return q @ ub, s, vt


def subspace_similarity(p_old: torch.Tensor, p_new: torch.Tensor, side: str) -> float:
    """||P_old^T P_new||_F^2 / r for orthonormal bases (columns for left, rows for right)."""
    a, b = (p_old, p_new) if side == "left" else (p_old.T, p_new.T)
    return float((a.T.float() @ b.float()).pow(2).sum() / a.shape[1])


class GaLoreProjector:
    """Holds P (and P_r for ``full``); all of its state is tensors, for state_dict()."""

    def __init__(self, cfg: ProjectorConfig, shape, seed: int = 0):
        if len(shape) != 2:
            raise ValueError(f"GaLore projects 2-D gradients, got shape {tuple(shape)}")
        self.cfg, self.shape, self.seed = cfg, tuple(shape), int(seed)
        self.side = resolve_side(cfg.proj_type, shape)
        self.p: Optional[torch.Tensor] = None
        self.p_right: Optional[torch.Tensor] = None
        self.refreshes = 0
        self.gap = cfg.update_proj_gap
        self.next_refresh = 0
        self.last_similarity = float("nan")

    # -- shapes ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        m, n = self.shape
        dim = {"left": m, "right": n, "full": min(m, n)}[self.side]
        return min(self.cfg.rank, dim)

    @property
    def identity(self) -> bool:
        m, n = self.shape
        return self.cfg.rank >= {"left": m, "right": n, "full": max(m, n)}[self.side]

    def projected_shape(self):
        m, n = self.shape
        r = self.rank
        return {"left": (r, n), "right": (m, r), "full": (r, r)}[self.side] if not self.identity else (m, n)

    # -- refresh --------------------------------------------------------------------------
    def _decompose(self, g: torch.Tensor):
        if self.cfg.refresh == "svd":
            return thin_svd(g)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.refreshes) & 0x7FFFFFFFFFFFFFFF)
        return randomized_svd(g, self.rank, self.cfg.oversample, self.cfg.power_iters, gen)

    def refresh(self, g: torch.Tensor) -> None:
        if self.identity:
            self.p = torch.empty(0, device=g.device)
            return
        u, _, vt = self._decompose(g)
        r = self.rank
        old = self.p
        if self.side == "left":
            new, new_right = u[:, :r].contiguous(), None
        elif self.side == "right":
            new, new_right = vt[:r].contiguous(), None
        else:
            new, new_right = u[:, :r].contiguous(), vt[:r].contiguous()
        if old is not None and old.numel() and self.cfg.lazy_threshold is not None:
            self.last_similarity = subspace_similarity(old, new, "left" if self.side == "full" else self.side)
            stable = self.last_similarity >= self.cfg.lazy_threshold
            self.gap = min(2 * self.gap, self.cfg.max_gap) if stable else self.cfg.update_proj_gap
        self.p, self.p_right = new, new_right
        self.refreshes += 1

    def refresh_due(self, step: int) -> bool:
        """True at the first step and when ``step`` (0-based count of previous updates) reaches
        the next refresh.  (P may be None later on: the optimizer keeps it stored microscaled.)"""
        return (self.p is None and self.refreshes == 0) or step >= self.next_refresh

    def maybe_refresh(self, g: torch.Tensor, step: int) -> bool:
        if self.refresh_due(step):
            self.refresh(g)
            self.next_refresh = step + self.gap
            return True
        return False

    # -- maps -----------------------------------------------------------------------------
    def project(self, g: torch.Tensor) -> torch.Tensor:
        g = g.float()
        if self.identity:
            return g
        if self.side == "left":
            return self.p.T @ g
        if self.side == "right":
            return g @ self.p.T
        return self.p.T @ g @ self.p_right.T

    def project_back(self, n: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return n
        if self.side == "left":
            return self.p @ n
        if self.side == "right":
            return n @ self.p
        return self.p @ n @ self.p_right

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"p": self.p, "p_right": self.p_right, "refreshes": self.refreshes, "gap": self.gap,
                "next_refresh": self.next_refresh, "last_similarity": self.last_similarity, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.p_right = state["p"], state["p_right"]
        self.refreshes, self.gap = int(state["refreshes"]), int(state["gap"])
        self.next_refresh, self.seed = int(state["next_refresh"]), int(state["seed"])
        self.last_similarity = float(state["last_similarity"])

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.p, self.p_right) if t is not None)
