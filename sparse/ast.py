"""AST: AdamW with the annealed decay of masked weights (docs/sparse.md, "AST").

    m ← β1 m + (1−β1) g
    u ← m + λ_t (1 − M) ⊙ W,         λ_t = λ · min(t / T_ramp, 1)
    v ← β2 v + (1−β2) u²
    W ← W − lr (u / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)        (and decoupled weight decay)

The mask M of each weight is the ``mask`` buffer of its ``SparseLinear`` (refreshed there
every T_m forwards and checkpointed with the model); the optimizer holds a reference.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from lowprec.sharding import local_rows

from .nn import SparseLinear
from .optim import MaskedAdamBase


class ASTAdamW(MaskedAdamBase):
    mode = "ast"

    def __init__(self, params, masks: Dict[torch.Tensor, torch.Tensor], lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, lam: float = 1e-4, ramp_steps: int = 250,
                 backend: str = "auto"):
        if ramp_steps < 1:
            raise ValueError("ramp_steps must be >= 1")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, lam=lam,
                                      ramp_steps=ramp_steps), backend=backend)
        self._masks = {id(p): k for p, k in masks.items()}
        for group in self.param_groups:
            if group["sparse"]:
                for p in group["params"]:
                    if id(p) not in self._masks:
                        raise ValueError(f"sparse parameter of shape {tuple(p.shape)} has no mask")
                    if self._masks[id(p)].shape != p.shape or self._masks[id(p)].dtype != torch.bool:
                        raise ValueError("masks must be bool with their parameter's shape")

    @classmethod
    def for_model(cls, model: nn.Module, **kw) -> "ASTAdamW":
        """SparseLinear weights get the masked decay; every other parameter plain AdamW."""
        layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
        masks = {m.weight: m.mask for m in layers}
        sparse_ids = {id(p) for p in masks}
        wd = kw.get("weight_decay", 0.0)
        groups = [{"params": list(masks), "sparse": True, "weight_decay": wd},
                  {"params": [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad],
                   "sparse": False, "weight_decay": wd}]
        return cls(groups, masks, **kw)

    def progress(self, group, step):
        return min(step / group["ramp_steps"], 1.0)

    def mask_for(self, p, group, state, step):
        return local_rows(self._masks[id(p)], p)        # FSDP2: the rows of the local shard
