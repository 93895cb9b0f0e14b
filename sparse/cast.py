"""CAST: AdamS (sparsity-aware Adam with adaptive L1 decay of pruned weights), weight
scaling and the distillation loss (docs/sparse.md, "CAST").

AdamS, at step t of T planned steps, for a sparse parameter W with mask M (state):
    M       = top-n of m by |W| along in_features, recomputed before the step when
              (t - 1) % T_m == 0
    μ ← β1 μ + (1−β1) g
    α_t = t / T
    μ̃ = (1 − α_t) μ + α_t λ sign(W)  where M = 0;   μ̃ = μ where M = 1
    v ← β2 v + (1−β2) μ̃²
    W ← W − lr (μ̃ / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)       (and decoupled weight decay)
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from lowprec.sharding import local, shard_like

from .masks import nm_mask
from .nn import CASTLinear
from .optim import MaskedAdamBase


class AdamS(MaskedAdamBase):
    """torch.optim-style AdamS; the mask is optimizer state (``state[p]['mask']``, bool)."""

    mode = "adams"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 lam: float = 4e-7, total_steps: int = 1000, mask_interval: int = 10, n: int = 2, m: int = 4,
                 backend: str = "auto"):
        if total_steps < 1 or mask_interval < 1:
            raise ValueError("total_steps and mask_interval must be >= 1")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, lam=lam,
                                      total_steps=total_steps, mask_interval=mask_interval, n=n, m=m),
                         backend=backend)
        for group in self.param_groups:
            if group["sparse"]:
                for p in group["params"]:
                    if p.dim() != 2 or p.shape[-1] % group["m"]:
                        raise ValueError(f"a sparse AdamS parameter must be 2-D with in_features a multiple of "
                                         f"{group['m']}, got shape {tuple(p.shape)}")

    def progress(self, group, step):
        return min(step / group["total_steps"], 1.0)

    def mask_for(self, p, group, state, step):
        if "mask" not in state or (step - 1) % group["mask_interval"] == 0:
            w = local(state["master"]) if "master" in state else local(p)   # rows are whole: a shard is masked alone
            state["mask"] = shard_like(nm_mask(w.abs(), group["n"], group["m"]), p)
        return local(state["mask"])

    def masks(self) -> dict:
        """{parameter: current mask} of the sparse parameters that have stepped."""
        return {p: self.state[p]["mask"] for g in self.param_groups for p in g["params"]
                if "mask" in self.state.get(p, {})}


def cast_param_groups(model: nn.Module, weight_decay: float = 0.0):
    """Groups for AdamS: CASTLinear weights sparse; everything else (scales, biases,
    embeddings, norms, layers left dense) plain AdamW."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, CASTLinear)}
    sparse_params = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    return [{"params": sparse_params, "sparse": True, "weight_decay": weight_decay},
            {"params": dense, "sparse": False, "weight_decay": weight_decay}]


def cast_masks(model: nn.Module, optimizer: Optional[AdamS] = None) -> dict:
    """{CASTLinear: mask}: AdamS's current mask, or top-2:4 of |W| where the optimizer has none."""
    out = {}
    for mod in model.modules():
        if isinstance(mod, CASTLinear):
            st = optimizer.state.get(mod.weight, {}) if optimizer is not None else {}
            out[mod] = st["mask"] if "mask" in st else nm_mask(mod.weight.detach().float().abs())
    return out
