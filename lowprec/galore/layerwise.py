"""Layer-wise updates: each parameter steps inside its post-accumulate-grad hook and its
gradient is freed at once, so the full gradients of all layers never coexist.

Under DDP the hook fires before the gradient all-reduce finishes, so layer-wise stepping
is refused for DDP-wrapped models (use the plain optimizer step there).  Under FSDP2 the
sharded gradient is assigned after the reduce-scatter and the hook never fires: refused
too.  (Wrap the model with fully_shard before building the optimizer: FSDP2 replaces the
parameters, so hooks registered on the old ones would be lost.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..sharding import is_dtensor


class LayerwiseOptimizer:
    """Wraps a GaLore optimizer (anything with ``step_param(p, group)``) into hooks."""

    def __init__(self, model: nn.Module, optimizer):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError("layer-wise updates run before DDP's all-reduce completes; use optimizer.step() "
                             "under DDP")
        if not hasattr(optimizer, "step_param"):
            raise TypeError(f"{type(optimizer).__name__} has no step_param(p, group)")
        self.optimizer = optimizer
        self._group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._handles = []
        model_params = {id(p) for p in model.parameters()}
        for p in self._group_of:
            if is_dtensor(p):
                raise NotImplementedError(
                    "layer-wise updates under FSDP2: the sharded gradient is assigned after FSDP2's "
                    "reduce-scatter, not accumulated, so the hook would never fire; use optimizer.step()")
            if id(p) not in model_params:
                raise ValueError("the optimizer holds a parameter that is not in the model")
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook))

    def _hook(self, p: torch.Tensor) -> None:
        self.optimizer.step_param(p, self._group_of[p])
        p.grad = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
