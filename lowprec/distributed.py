"""Data-parallel consistency of tensor-scaled quantization.

Under DDP or FSDP2 each rank quantizes its own slice of the batch.  Block scales depend only
on the block, but a tensor scale (NVFP4, UE5M3) depends on the amax of the whole tensor, so by
default each rank picks its own and the run differs from one process on the global batch.
With ``Recipe(sync_tensor_amax=True)`` (e.g. ``recipes.get("nvfp4", sync_tensor_amax=True)``)
the amax of every rank-local operand (X, dY) is all-reduced (max) over the data-parallel
group first: every rank then uses the tensor scale of the global batch.  Weights are the same
on every rank (FSDP2 gathers them for the forward) and are not reduced.

The group is the default (world) one unless :func:`set_data_parallel_group` names another
(with tensor or pipeline parallelism, the data-parallel group).
"""

from __future__ import annotations

from typing import Optional

import torch

from .reference.scales import finite_amax

_GROUP = None


def set_data_parallel_group(group) -> None:
    """The process group whose ranks hold slices of the same global batch (None: the world)."""
    global _GROUP
    _GROUP = group


def data_parallel_amax(x: torch.Tensor) -> Optional[torch.Tensor]:
    """max |x| over the finite elements of every rank's x (this rank's alone when no process
    group is initialized)."""
    amax = finite_amax(x).to(torch.float32).reshape(())
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(_GROUP) > 1:
        amax = amax.clone()
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=_GROUP)
    return amax


def data_parallel_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise max of ``values`` over the data-parallel group (``values`` itself when no
    process group is initialized): several tensor amaxes reduced in one all-reduce."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(_GROUP) > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_GROUP)
    return values
