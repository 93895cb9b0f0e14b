"""Activation-checkpointing replay of a module's stochastic state.

``torch.utils.checkpoint`` (reentrant or not, and Hugging Face's
``gradient_checkpointing_enable``) runs a region's forward a second time during backward and
differentiates that recompute.  A layer whose forward draws stochastic-rounding bits from an
advancing Philox offset, or counts steps and refreshes a 2:4 mask, would see new bits and
count twice: the gradients would belong to a different forward than the one that produced
the loss.

Each training forward of such a layer therefore records what it used (a :class:`Record`:
the ``(seed, offset)`` pair handed to the kernels, and whatever the layer adds) and advances
as usual.  A forward that runs while autograd is executing a backward pass is a recompute:
it takes the most recent record not yet replayed and uses exactly that, advancing nothing.
Recomputes come in the reverse order of the forwards (backward walks the graph backwards),
so the records form a stack.  A record is dropped when it is replayed or when the autograd
graph of its forward is freed (no checkpointing), so nothing accumulates; forwards under
``no_grad`` in training mode (the first pass of a reentrant checkpoint) are kept, at most
``MAX_PENDING`` per module.

Supported: each converted module runs at most once per checkpointed region (the pattern of
every per-block checkpointing scheme).  A module called twice inside one region would be
recomputed in forward order, so the stack would hand its two calls each other's records.

Under ``torch.compile`` nothing is recorded: the compiled graph recomputes from the values
it traced, which are already the first forward's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import weakref
from typing import Any, Dict, List, Optional

import torch

MAX_PENDING = 64


def recomputing() -> bool:
    """True while autograd executes a backward pass: a forward now is a checkpoint recompute."""
    return torch._C._current_graph_task_id() != -1


@dataclass
class Record:
    """What one forward used: ``rng`` is the (seed, offset) int64 pair given to the kernels;
    ``extra`` holds layer-specific state (a SparseLinear's mask)."""
    rng: torch.Tensor
    extra: Dict[str, Any] = field(default_factory=dict)


class ReplayStack:
    """The pending records of one module (see the module docstring).

    A record whose forward built an autograd graph is owned by that graph (a hook on the
    output's node holds it) and the stack keeps only a weak reference: it lives exactly as
    long as a backward could still recompute it.  A record without a graph (a ``no_grad``
    first pass of a reentrant checkpoint, or a layer whose output needs no gradient) is held
    here, at most ``MAX_PENDING`` of them, until it is replayed."""

    def __init__(self) -> None:
        self._entries: list = []

    def _live(self) -> List[Record]:
        out = []
        for e in self._entries:
            r = e() if isinstance(e, weakref.ref) else e
            if r is not None:
                out.append(r)
        return out

    def __len__(self) -> int:
        return len(self._live())

    def push(self, record: Record, output: Optional[torch.Tensor]) -> None:
        self._entries = [e for e in self._entries if not isinstance(e, weakref.ref) or e() is not None]
        node = output.grad_fn if output is not None else None
        if node is not None:
            node.register_hook(_Keep(record))
            self._entries.append(weakref.ref(record))
        else:
            self._entries.append(record)
            held = [i for i, e in enumerate(self._entries) if not isinstance(e, weakref.ref)]
            if len(held) > MAX_PENDING:
                del self._entries[held[0]]

    def pop(self, who: str) -> Record:
        while self._entries:
            e = self._entries.pop()
            r = e() if isinstance(e, weakref.ref) else e
            if r is not None:
                return r
        raise RuntimeError(
            f"{who}: a forward ran during backward (an activation-checkpoint recompute) but no "
            "earlier training forward of this module is waiting to be replayed; was the first "
            "forward run in eval mode, or the module called twice inside one checkpointed region?")

    def pending(self) -> List[Record]:
        return self._live()


class _Keep:
    """A no-op node hook whose only job is to own a record for the node's lifetime."""

    def __init__(self, record: Record) -> None:
        self.record = record

    def __call__(self, grad_inputs, grad_outputs):
        return None
