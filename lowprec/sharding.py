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
    row_shard_only(p)
    return _local_chunk(full, p)


def _local_chunk(full: torch.Tensor, p) -> torch.Tensor:
    """The block of ``full``'s rows this rank holds when ``full`` (any shape, dim >= 1) is laid
    out with ``p``'s mesh and placements (FSDP2's chunking of dim 0)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(full.shape, p.device_mesh, p.placements)
    return full.narrow(0, offset[0], shape[0]) if len(shape) else full


# Optimizer state stored sharded: every tensor of at least this many elements (and dim >= 1) is
# kept as a DTensor laid out like its parameter; smaller ones (counters, shapes) stay replicated.
SHARD_MIN_NUMEL = 64


def shard_state(obj, p):
    """Replicated optimizer state (a tensor, or dicts / lists of them) -> the same structure
    with each tensor of ``SHARD_MIN_NUMEL`` or more elements replaced by a DTensor whose local
    shard is this rank's block of its rows, laid out with ``p``'s mesh and placements.  Every
    rank must call it with the same values (it cuts, it does not communicate).  The cut is
    storage only: ``gather_state`` restores the replicated values bit for bit."""
    if torch.is_tensor(obj):
        if is_dtensor(obj) or obj.dim() == 0 or obj.numel() < SHARD_MIN_NUMEL:
            return obj
        from torch.distributed.tensor import DTensor
        return DTensor.from_local(_local_chunk(obj, p).clone(), p.device_mesh, p.placements, run_check=False,
                                  shape=obj.shape, stride=obj.stride())
    if isinstance(obj, dict):
        return {k: shard_state(v, p) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(shard_state(v, p) for v in obj)
    return obj


def gather_state(obj):
    """The inverse of ``shard_state``: every DTensor in the structure all-gathered to a plain
    replicated tensor (a collective: every rank calls it on the same structure)."""
    if is_dtensor(obj):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: gather_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_state(v) for v in obj)
    return obj


def shard_like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Optimizer state ``t`` computed on ``p``'s local shard, as a DTensor sharded like ``p``
    (plain ``t`` for a plain ``p``).  Sharded state must be DTensors: torch.distributed.checkpoint
    treats a plain tensor as replicated and would keep one rank's shard for all."""
    if not is_dtensor(p):
        return t
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
