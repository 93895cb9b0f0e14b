"""Masked Adam optimizers: the shared machinery of AdamS (CAST) and AST's AdamW.

Both keep fp32 master weights (for non-fp32 parameters) and fp32 moments, count steps per
parameter from 1, and run the fused step of ``sparse.kernels`` on the chosen backend.
Param groups carry ``sparse`` (bool): sparse parameters get the masked update, the others
plain AdamW (the same kernel with no mask).  Under FSDP2 each rank steps its local rows of a
sharded parameter: the update is elementwise and 2:4 groups run within a row, so the result
is the unsharded step's, row for row, and the state is sharded as the parameter is.
"""

from __future__ import annotations

from typing import Optional

import torch

from lowprec.optim_state import ExactStateLoad
from lowprec.sharding import local, row_shard_only, shard_like

from .kernels import masked_adam_step
from .reference import StepScalars


class MaskedAdamBase(ExactStateLoad, torch.optim.Optimizer):
    mode: str = ""

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        lr = defaults["lr"]
        b1, b2 = defaults["betas"]
        if lr < 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or defaults["eps"] <= 0:
            raise ValueError(f"invalid hyper-parameters lr={lr}, betas={defaults['betas']}, eps={defaults['eps']}")
        defaults.setdefault("sparse", True)
        super().__init__(params, defaults)
        self.backend = backend

    # subclasses: progress of the decay schedule, and the mask of a sparse parameter
    def progress(self, group: dict, step: int) -> float:
        raise NotImplementedError

    def mask_for(self, p: torch.Tensor, group: dict, state: dict, step: int) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def _init_state(self, p, state):
        """Moments (and the fp32 master of a non-fp32 weight), of the local shard under FSDP2,
        kept as DTensors sharded like the parameter."""
        w = local(p)
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["exp_avg"] = shard_like(torch.zeros_like(w, dtype=torch.float32, memory_format=torch.contiguous_format), p)
        state["exp_avg_sq"] = shard_like(torch.zeros_like(w, dtype=torch.float32,
                                                          memory_format=torch.contiguous_format), p)
        if w.dtype != torch.float32:
            state["master"] = shard_like(w.detach().float().contiguous(), p)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                row_shard_only(p)           # FSDP2: step the local rows (the math is row-local)
                w, grad = local(p), local(p.grad)
                state = self.state[p]
                if not state:
                    self._init_state(p, state)
                state["step"] += 1
                t = int(state["step"])
                master = local(state["master"]) if "master" in state else w
                if not master.is_contiguous():
                    raise ValueError("parameters must be contiguous")
                mask = self.mask_for(p, group, state, t) if group["sparse"] else None
                b1, b2 = group["betas"]
                scalars = StepScalars.make(self.mode, t, group["lr"], b1, b2, group["eps"],
                                           group["weight_decay"], group.get("lam", 0.0),
                                           self.progress(group, t) if group["sparse"] else 0.0)
                masked_adam_step(master, grad, local(state["exp_avg"]), local(state["exp_avg_sq"]), mask, scalars,
                                 backend=self.backend)
                if master is not w:
                    w.copy_(master)
        return loss

    def state_bytes(self) -> int:
        """Bytes held in the optimizer state tensors."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if torch.is_tensor(t))
