"""The stochastic-rounding stream of a module (its Philox seed and the offset that advances
every call) as part of the module's ``state_dict()``, so that ``torch.save(model.state_dict())``
and every checkpoint built on it (Hugging Face Trainer, ``save_pretrained``, distributed
checkpoints) resume the exact bits of an uninterrupted run.

Both live in persistent int64 buffers, ``sr_seed`` and ``sr_offset``. The seed is also kept as
a Python int (``module.seed``) because the forward pass hands it to kernels and Hadamard sign
caches as a constant. Loading a checkpoint without these keys (one saved before conversion, or
by an older lowprec) works with ``strict=True``: the module keeps its own seed and offset.
"""

from __future__ import annotations

import torch
from torch import nn

SR_KEYS = ("sr_seed", "sr_offset")


class SRStateMixin:
    """Mixed into nn.Module subclasses that quantize with stochastic rounding."""

    def _init_sr_state(self, seed: int, device=None) -> None:
        nn.Module.register_buffer(self, "sr_seed", torch.tensor(int(seed), dtype=torch.int64, device=device))
        nn.Module.register_buffer(self, "sr_offset", torch.zeros((), dtype=torch.int64, device=device))
        object.__setattr__(self, "_seed", int(seed))

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        object.__setattr__(self, "_seed", int(value))
        if "sr_seed" in self._buffers and not self.sr_seed.is_meta:
            self.sr_seed.fill_(int(value))

    def rng_state(self) -> dict:
        return {"seed": self.seed, "offset": int(self.sr_offset)}

    def load_rng_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.sr_offset.fill_(int(state["offset"]))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in SR_KEYS:      # a checkpoint without the stream (plain, or older): keep this module's
            if prefix + name not in state_dict and not self._buffers[name].is_meta:
                state_dict[prefix + name] = self._buffers[name].detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not self.sr_seed.is_meta:
            object.__setattr__(self, "_seed", int(self.sr_seed))
