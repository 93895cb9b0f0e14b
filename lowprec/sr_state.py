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

from typing import Optional, Tuple

import torch
from torch import nn

from .replay import Record, ReplayStack, recomputing

SR_KEYS = ("sr_seed", "sr_offset")


class SRStateMixin:
    """Mixed into nn.Module subclasses that quantize with stochastic rounding."""

    def _init_sr_state(self, seed: int, device=None) -> None:
        nn.Module.register_buffer(self, "sr_seed", torch.tensor(int(seed), dtype=torch.int64, device=device))
        nn.Module.register_buffer(self, "sr_offset", torch.zeros((), dtype=torch.int64, device=device))
        object.__setattr__(self, "_seed", int(seed))
        object.__setattr__(self, "_replay", ReplayStack())

    def _forward_rng(self, consumed: int) -> Tuple[torch.Tensor, Optional[Record]]:
        """The (seed, offset) pair this forward hands to the kernels, and the replay record
        to push once the output exists (None when there is nothing to record).

        An ordinary forward takes the current offset and advances it by ``consumed``; an
        activation-checkpoint recompute (lowprec.replay) reuses the first forward's pair and
        advances nothing."""
        compiling = torch.compiler.is_compiling()
        if not compiling and recomputing():
            return self._replay.pop(type(self).__name__ + (f" {self.name!r}" if getattr(self, "name", "") else "")).rng, None
        rng = torch.stack((torch.full((), self.seed, dtype=torch.int64, device=self.sr_offset.device),
                           self.sr_offset))
        if consumed:
            self.sr_offset.add_(consumed)
        keep = not compiling and (self.training or torch.is_grad_enabled())
        return rng, (Record(rng) if keep else None)

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

    def _apply(self, fn, recurse=True):
        """Materializing from the meta device (``to_empty``) leaves buffers uninitialized:
        the stream restarts at this module's own seed and offset 0, never at garbage."""
        was_meta = self._buffers["sr_offset"].is_meta
        out = super()._apply(fn, recurse)
        if was_meta and not self.sr_offset.is_meta:
            with torch.no_grad():
                self.sr_seed.fill_(self._seed)
                self.sr_offset.zero_()
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "sr_seed" not in state_dict:  # a checkpoint without the stream (plain, or older):
            state_dict[prefix + "sr_seed"] = torch.tensor(self._seed, dtype=torch.int64)   # keep this module's
        if prefix + "sr_offset" not in state_dict and not self._buffers["sr_offset"].is_meta:
            state_dict[prefix + "sr_offset"] = self._buffers["sr_offset"].detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not self.sr_seed.is_meta:
            object.__setattr__(self, "_seed", int(self.sr_seed))
