"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): DTensors whose local
shard is a block of rows (``Shard(0)``).  Optimizers whose math is shard-local (elementwise
Adam updates, 2:4 groups along in_features, i.e. within a row) step on the local shard;
these helpers find it and cut replicated per-parameter state (a layer's mask) to match.
torch.distributed is imported only when a DTensor is seen."""

from __future__ import annotations

import torch


def is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: writing it writes the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def row_shard_only(p: torch.Tensor) -> None:
    """Raise unless ``p`` is a plain tensor or a DTensor sharded along dim 0 only (FSDP2's
    layout), the case whose local shard is a contiguous block of whole rows."""
    if not is_dtensor(p):
        return
    from torch.distributed.tensor import Replicate, Shard
    if not all(isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0) for pl in p.placements):
        raise NotImplementedError(f"lowprec optimizers step DTensors sharded along dim 0 (FSDP2), got placements "
                                  f"{p.placements}")


def local_rows(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The rows of a replicated tensor shaped like ``p`` that ``p``'s local shard holds."""
    if not is_dtensor(p):
        return full
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    row_shard_only(p)
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return full.narrow(0, offset[0], shape[0]) if len(shape) else full


def shard_like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Optimizer state ``t`` computed on ``p``'s local shard, as a DTensor sharded like ``p``
    (plain ``t`` for a plain ``p``).  Sharded state must be DTensors: torch.distributed.checkpoint
    treats a plain tensor as replicated and would keep one rank's shard for all."""
    if not is_dtensor(p):
        return t
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
