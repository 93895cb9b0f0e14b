"""N:M masks: scores, the stable top-k mask, transposable 2:4 masks, 1-bit packing.

A mask keeps N of every M consecutive weights along in_features (the last dim of an
``nn.Linear`` weight).  Scores:

- ``magnitude``: |W| (the default);
- ``wanda``: |W[r, j]| * ||X[:, j]||_2, the input-activation norm of column j over
  calibration tokens (``collect_input_norms``);
- a user tensor of W's shape.

Ties go to the lower index (a stable descending sort), so exactly N survive per group.
A transposable 2:4 mask is 2:4 along the rows *and* the columns of every 4x4 tile; per
tile it is the pattern, among the 90 such 4x4 patterns, with the largest kept score (ties:
the first pattern in lexicographic order of its 16 bits, row-major).

4:8 pair-wise masks (the pattern of sparse FP4 tensor-core operands): in every group of 8
along the last dim, the 8 elements form 4 aligned pairs (2i, 2i + 1), and exactly 2 whole
pairs are kept. They are chosen by pair score, the fp32 sum of the pair's two scores (ties:
the lower pair). A transposable 4:8 pair-wise mask is pair-wise 4:8 along the rows and the
columns. A row pair must then keep the same column pairs in both rows, so the mask is
constant on 2x2 cells. It is therefore a transposable 2:4 mask over the 2x2 cells (scored by
the fp64 sum of each cell's four scores), each cell spread over its four elements.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Dict, Iterable, Optional, Union

import torch
from torch import nn

import lowprec
from lowprec.reference.sparsity import check_groups

ScoreSpec = Union[str, torch.Tensor]


def scores_for(weight: torch.Tensor, score: ScoreSpec = "magnitude",
               input_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fp32 scores of ``weight`` (out, in) under ``score``."""
    w = weight.detach().float()
    if isinstance(score, torch.Tensor):
        if score.shape != weight.shape:
            raise ValueError(f"user score tensor has shape {tuple(score.shape)}, weight {tuple(weight.shape)}")
        return score.detach().float().to(w.device)
    if score == "magnitude":
        return w.abs()
    if score == "wanda":
        if input_norm is None:
            raise ValueError("wanda scores need the input-activation norms (collect_input_norms on calibration batches)")
        if input_norm.shape != (weight.shape[-1],):
            raise ValueError(f"input norms have shape {tuple(input_norm.shape)}, expected ({weight.shape[-1]},)")
        return w.abs() * input_norm.float().to(w.device)[None, :]
    raise ValueError(f"unknown score {score!r}: use 'magnitude', 'wanda' or a tensor")


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, backend: str = "auto") -> torch.Tensor:
    """Boolean mask with exactly n of every m kept along the last dim (ties: lower index)."""
    return lowprec.nm_mask(scores.float().contiguous(), n, m, backend=backend)


def magnitude_mask(weight: torch.Tensor, n: int = 2, m: int = 4, backend: str = "auto") -> torch.Tensor:
    return nm_mask(weight.detach().float().abs(), n, m, backend=backend)


@lru_cache(maxsize=None)
def _transposable_patterns_cpu() -> torch.Tensor:
    pats = []
    for bits in itertools.product((0, 1), repeat=16):
        t = torch.tensor(bits, dtype=torch.int64).reshape(4, 4)
        if bool((t.sum(0) == 2).all()) and bool((t.sum(1) == 2).all()):
            pats.append(t.flatten())
    return torch.stack(pats)                              # itertools.product order: ascending lexicographic


def transposable_patterns() -> torch.Tensor:
    """The 90 4x4 0/1 patterns with two ones in every row and column, (90, 16) bool, in
    ascending lexicographic order of their row-major bits."""
    return _transposable_patterns_cpu().bool()


def transposable_24_mask(scores: torch.Tensor) -> torch.Tensor:
    """Per 4x4 tile, the transposable pattern with the largest total score (fp64 sums;
    ties: the first pattern).  W and W^T masked by it are both 2:4."""
    if scores.dim() != 2 or scores.shape[0] % 4 or scores.shape[1] % 4:
        raise ValueError(f"a transposable 2:4 mask needs a 2-D tensor with both dims multiples of 4, "
                         f"got {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores hold NaN: a mask needs a total order")
    r, c = scores.shape
    tiles = scores.detach().double().reshape(r // 4, 4, c // 4, 4).permute(0, 2, 1, 3).reshape(r // 4, c // 4, 16)
    pats = _transposable_patterns_cpu().to(device=scores.device, dtype=torch.float64)
    best = torch.argmax(tiles @ pats.T, dim=-1)           # first maximum
    mask = pats.bool()[best]                              # (r/4, c/4, 16)
    return mask.reshape(r // 4, c // 4, 4, 4).permute(0, 2, 1, 3).reshape(r, c).contiguous()


def is_nm(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m along the last dim holds exactly n kept entries."""
    check_groups(mask.shape, m)
    return bool((mask.reshape(-1, m).sum(-1) == n).all())


def fraction_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> float:
    """Fraction of groups of m (along the last dim) with at most n non-zeros."""
    check_groups(weight.shape, m)
    return float(((weight.reshape(-1, m) != 0).sum(-1) <= n).float().mean())


def flip_rate(new: torch.Tensor, old: torch.Tensor) -> float:
    """Fraction of positions whose kept/pruned state differs."""
    return float((new != old).float().mean())


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 bit per weight: uint8 of ceil(numel/8) bytes; bit i of byte j is mask.flatten()[8j + i]."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_mask takes a bool mask, got {mask.dtype}")
    flat = mask.flatten()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    bits = flat.reshape(-1, 8).to(torch.int32)
    weights = 2 ** torch.arange(8, device=mask.device, dtype=torch.int32)
    return (bits * weights).sum(-1).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of ``pack_mask`` for a mask of ``shape``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_mask takes uint8, got {packed.dtype}")
    numel = 1
    for d in shape:
        numel *= int(d)
    if packed.numel() != (numel + 7) // 8:
        raise ValueError(f"{packed.numel()} packed bytes cannot hold a mask of shape {tuple(shape)}")
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.flatten()[:, None] >> shifts) & 1).bool().flatten()[:numel].reshape(shape)


@torch.no_grad()
def collect_input_norms(model: nn.Module, batches: Iterable, forward=None) -> Dict[str, torch.Tensor]:
    """||X[:, j]||_2 over all calibration tokens, for every nn.Linear input (Wanda scores).

    ``batches`` yields model inputs; ``forward(model, batch)`` runs one (default ``model(batch)``).
    """
    sums: Dict[str, torch.Tensor] = {}
    hooks = []

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq = (x * x).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            (forward or (lambda mdl, x: mdl(x)))(model, b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {k: v.sqrt() for k, v in sums.items()}


PATTERNS = ("nm", "pairwise")


def pair_scores(scores: torch.Tensor) -> torch.Tensor:
    """Score of each aligned pair (2i, 2i + 1) along the last dim: the fp32 sum of the two."""
    s = scores.float()
    return s[..., 0::2] + s[..., 1::2]


def pairwise_48_mask(scores: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """4:8 pair-wise mask: in every group of 8 along the last dim, the 2 of its 4 aligned
    pairs with the largest pair score (ties: the lower pair), each kept pair both kept."""
    check_groups(scores.shape, 8)
    if torch.isnan(scores).any():
        raise ValueError("scores hold NaN: a mask needs a total order")
    return nm_mask(pair_scores(scores), 2, 4, backend=backend).repeat_interleave(2, dim=-1)


def transposable_pairwise_48_mask(scores: torch.Tensor) -> torch.Tensor:
    """A mask that is pair-wise 4:8 along the rows and along the columns: the transposable
    2:4 mask of the 2x2 cell scores (fp64 sums), each cell spread over its four elements."""
    if scores.dim() != 2 or scores.shape[0] % 8 or scores.shape[1] % 8:
        raise ValueError(f"a transposable 4:8 pair-wise mask needs a 2-D tensor with both dims multiples of 8, "
                         f"got {tuple(scores.shape)}")
    r, c = scores.shape
    cells = scores.detach().double().reshape(r // 2, 2, c // 2, 2).sum(dim=(1, 3))
    return transposable_24_mask(cells).repeat_interleave(2, dim=0).repeat_interleave(2, dim=1).contiguous()


def is_pairwise_48(mask: torch.Tensor) -> bool:
    """True when every group of 8 along the last dim keeps exactly 2 whole aligned pairs."""
    check_groups(mask.shape, 8)
    pairs = mask.reshape(-1, 4, 2)
    whole = bool((pairs[..., 0] == pairs[..., 1]).all())
    return whole and bool((pairs[..., 0].sum(-1) == 2).all())


def sparsity_mask(scores: torch.Tensor, n: int, m: int, pattern: str = "nm", transposable: bool = False,
                  backend: str = "auto") -> torch.Tensor:
    """The mask of a sparse layer: N:M (``pattern="nm"``, transposable 2:4 when asked) or 4:8
    pair-wise (``pattern="pairwise"``, n:m must be 4:8; transposable when asked)."""
    if pattern == "pairwise":
        if (n, m) != (4, 8):
            raise ValueError(f"the pair-wise pattern is 4:8, got {n}:{m}")
        return transposable_pairwise_48_mask(scores) if transposable else pairwise_48_mask(scores, backend)
    if pattern != "nm":
        raise ValueError(f"unknown sparsity pattern {pattern!r}; expected one of {PATTERNS}")
    if transposable:
        return transposable_24_mask(scores)
    return nm_mask(scores, n, m, backend=backend)
