"""Exact optimizer-state loading, shared by every lowprec optimizer.

``torch.optim.Optimizer.load_state_dict`` casts each floating (and bool) state tensor to
its parameter's dtype: a bf16 parameter's fp32 master copy and fp32 moments come back as
bf16, and a bool 2:4 mask on an fp32 parameter comes back as float32.  lowprec's optimizers
choose their state dtypes on purpose (fp32 masters and moments, bool masks, quantized codes
with fp32 scales), so :class:`ExactStateLoad` restores every state tensor with the dtype it
was saved with: a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy

import torch


def state_to_device(obj, device):
    """State tensors onto the parameter's device with their dtype unchanged; 0-d integer
    counters (step, Philox seed and offset) stay on the CPU, as they are created, so reading
    them never waits on a GPU.  Nested dicts are walked."""
    if torch.is_tensor(obj):
        counter = obj.dim() == 0 and not obj.is_floating_point() and obj.dtype != torch.bool
        return obj.cpu() if counter else obj.to(device)
    if isinstance(obj, dict):
        return {k: state_to_device(v, device) for k, v in obj.items()}
    return obj


class ExactStateLoad:
    """Mixin (before ``torch.optim.Optimizer`` in the bases): ``load_state_dict`` keeps the
    saved dtype of every state tensor.  Subclasses may override :meth:`_after_state_load`."""

    def load_state_dict(self, state_dict: dict) -> None:
        saved = copy.deepcopy(state_dict["state"])
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)         # validates groups, loads hyper-parameters
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, p in zip(saved_ids, params):
            if idx in saved:
                self.state[p] = state_to_device(saved[idx], p.device)
        self._after_state_load()

    def _after_state_load(self) -> None:
        pass
