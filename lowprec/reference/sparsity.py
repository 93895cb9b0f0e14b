"""N:M masks and 2:4 compressed storage: the executable spec (docs/sparse.md, "Masks").

nm_mask: in each group of m consecutive elements along the last dim, keep the n with the
largest score; ties go to the lower index (a stable descending sort), so exactly n survive.
compress_24: kept values in index order (half the weights) plus, per group of 4, the two
2-bit indices of the kept elements (first in bits 0-1, second in bits 2-3), two groups per
byte (even group in the low nibble): K/2 values and K/8 bytes of metadata per row.
compress_48_pairwise: a 4:8 pair-wise sparse weight (in every group of 8, 2 of the 4 aligned
pairs (2i, 2i + 1) kept) as its kept values in index order (half the weights) plus, per group
of 8, the two 2-bit indices of the kept pairs (first in bits 0-1, second in bits 2-3), two
groups per byte (even group in the low nibble): K/2 values and K/16 bytes per row.
"""

from __future__ import annotations

import torch


def check_groups(shape, m: int) -> None:
    if len(shape) == 0 or shape[-1] % m:
        raise ValueError(f"the last dim ({shape[-1] if shape else 'none'}) must be a multiple of the group size {m}")


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the n largest of every m along the last dim (ties: lower index)."""
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    check_groups(scores.shape, m)
    if torch.isnan(scores).any():
        raise ValueError("scores hold NaN: an N:M mask needs a total order")
    g = scores.reshape(*scores.shape[:-1], scores.shape[-1] // m, m)
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(scores.shape)


def compress_24(w: torch.Tensor, mask: torch.Tensor):
    """(values [..., K/2], metadata uint8 [..., K/8]) of a 2:4-sparse ``w`` under ``mask``."""
    check_groups(w.shape, 8)
    if mask.shape != w.shape or mask.dtype != torch.bool:
        raise ValueError("compress_24: w and a bool mask of one shape, last dim a multiple of 8")
    g = mask.reshape(*mask.shape[:-1], mask.shape[-1] // 4, 4)
    if not bool((g.sum(-1) == 2).all()):
        raise ValueError("mask is not exactly 2:4")
    idx = torch.nonzero(g.reshape(-1, 4))[:, 1].reshape(*g.shape[:-1], 2)           # kept positions, ascending
    values = torch.gather(w.reshape(*g.shape), -1, idx).reshape(*w.shape[:-1], w.shape[-1] // 2)
    nib = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)                         # one nibble per group
    meta = nib[..., 0::2] | (nib[..., 1::2] << 4)
    return values, meta


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense tensor with zeros at pruned positions (inverse of compress_24)."""
    nib = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(*meta.shape[:-1], -1).to(torch.int64)
    idx = torch.stack((nib & 3, nib >> 2), dim=-1)
    v = values.reshape(*values.shape[:-1], -1, 2)
    out = torch.zeros(*v.shape[:-1], 4, dtype=values.dtype, device=values.device)
    out.scatter_(-1, idx, v)
    return out.reshape(*values.shape[:-1], -1)


def compress_48_pairwise(w: torch.Tensor, mask: torch.Tensor):
    """(values [..., K/2], metadata uint8 [..., K/16]) of a 4:8 pair-wise sparse ``w`` under ``mask``."""
    check_groups(w.shape, 16)
    if mask.shape != w.shape or mask.dtype != torch.bool:
        raise ValueError("compress_48_pairwise: w and a bool mask of one shape, last dim a multiple of 16")
    pairs = mask.reshape(*mask.shape[:-1], mask.shape[-1] // 8, 4, 2)
    if not bool((pairs[..., 0] == pairs[..., 1]).all()) or not bool((pairs[..., 0].sum(-1) == 2).all()):
        raise ValueError("mask is not exactly 4:8 pair-wise (2 whole aligned pairs in every group of 8)")
    kept = pairs[..., 0]                                                             # [..., groups, 4]
    idx = torch.nonzero(kept.reshape(-1, 4))[:, 1].reshape(*kept.shape[:-1], 2)      # kept pairs, ascending
    wp = w.reshape(*kept.shape, 2)
    values = torch.gather(wp, -2, idx.unsqueeze(-1).expand(*idx.shape, 2)).reshape(*w.shape[:-1], w.shape[-1] // 2)
    nib = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)
    meta = nib[..., 0::2] | (nib[..., 1::2] << 4)
    return values, meta


def decompress_48_pairwise(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense tensor with zeros at pruned pairs (inverse of compress_48_pairwise)."""
    nib = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(*meta.shape[:-1], -1).to(torch.int64)
    idx = torch.stack((nib & 3, nib >> 2), dim=-1)                                   # [..., groups, 2]
    v = values.reshape(*values.shape[:-1], -1, 2, 2)                                 # [..., groups, kept pair, 2]
    out = torch.zeros(*v.shape[:-3], v.shape[-3], 4, 2, dtype=values.dtype, device=values.device)
    out.scatter_(-2, idx.unsqueeze(-1).expand(*idx.shape, 2), v)
    return out.reshape(*values.shape[:-1], -1)
