"""Export a trained sparse model to plain modules whose weights are exactly 2:4.

- ``SparseLinear``  -> ``nn.Linear`` with W ⊙ M; with SLoRB, ``SparseWithLowRank``: the
  2:4 linear plus a separate dense low-rank side path (x P^T) S^T, since folding S P into W
  would break the 2:4 pattern; with an FP4 recipe, a ``lowprec.QuantLinear`` under the same
  recipe holding W ⊙ M.
- ``CASTLinear``    -> ``nn.Linear`` with (A ⊙ W) ⊙ M, M the optimizer's final mask.
- ``compress_model`` / ``decompress_model``: ``Compressed24Linear`` stores the kept values
  (half the weights) and 2-bit indices (4 bits per group of 4); the round trip is lossless.
- ``to_semi_structured``: on a GPU, hands each 2:4 weight to
  ``torch.sparse.to_sparse_semi_structured`` after checking its limits, with a clear error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

import lowprec
from lowprec.hf import record_conversion
from lowprec.nn import QuantLinear

from .cast import cast_masks
from .masks import nm_mask, pairwise_48_mask
from .nn import CASTLinear, SparseLinear


class SparseWithLowRank(nn.Module):
    """y = sparse(x) + up(down(x)): the exported SLoRB layer (sparse: exactly 2:4)."""

    def __init__(self, sparse: nn.Module, down: nn.Linear, up: nn.Linear):
        super().__init__()
        self.sparse, self.down, self.up = sparse, down, up

    def forward(self, x):
        return self.sparse(x) + self.up(self.down(x))


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


LOW_RANK_CHOICES = ("keep", "fold", "drop")


@torch.no_grad()
def _export_sparse_linear(mod: SparseLinear, low_rank: Optional[str]) -> nn.Module:
    w = mod.weight * mod.mask
    if mod.slorb_k and low_rank == "fold":                 # the function kept, the 2:4 pattern not
        w = w + mod.slorb_s @ mod.slorb_p
    if mod.recipe is not None and mod.recipe.quantized:
        base = QuantLinear.from_module(_linear(w, mod.bias), mod.recipe, name=mod.name)
        base.seed = mod.seed
        base.sr_offset.copy_(mod.sr_offset)
    else:
        base = _linear(w, mod.bias)
    folded = bool(mod.slorb_k and low_rank == "fold")
    # the flag follows the weights themselves: every group of 4 along in_features with at most
    # 2 non-zeros (a 4:8 mask generally is not 2:4; a 2:8 one is)
    base.is_2to4 = not folded and (w.shape[-1] % 4 == 0) and bool(((w.reshape(-1, 4) != 0).sum(-1) <= 2).all())
    if not folded:
        base.sparsity_pattern = "4:8 pair-wise" if mod.pattern == "pairwise" else f"{mod.n}:{mod.m}"
    if not mod.slorb_k or low_rank in ("fold", "drop"):
        return base
    down = nn.Linear(mod.in_features, mod.in_features // mod.slorb_k, bias=False, device=w.device, dtype=w.dtype)
    up = nn.Linear(mod.in_features // mod.slorb_k, mod.out_features, bias=False, device=w.device, dtype=w.dtype)
    down.weight.copy_(mod.slorb_p)
    up.weight.copy_(mod.slorb_s)
    return SparseWithLowRank(base, down, up)


@torch.no_grad()
def export(model: nn.Module, optimizer=None, inplace: bool = False, low_rank: Optional[str] = None) -> nn.Module:
    """Plain modules with exactly 2:4 weights (a copy unless ``inplace``).  ``optimizer``:
    the AdamS that trained CAST layers (its masks); without it CAST layers use top-2:4 of |W|.

    ``low_rank`` says what becomes of AST's SLoRB side path (x Pᵀ) Sᵀ; a model with SLoRB
    layers must choose, since no choice keeps everything:

    - ``"keep"``: ``SparseWithLowRank`` = the exact 2:4 linear + the dense side path.  The same
      function, 2:4 weights; loading it needs lowprec (``lowprec.load_pretrained`` rebuilds
      it from ``save_pretrained``; transformers alone would not know the side path).
    - ``"fold"``: one dense ``nn.Linear`` with W ⊙ M + S P.  The same function (up to float
      rounding) and loadable by transformers alone, but the weights are no longer 2:4.
    - ``"drop"``: the 2:4 linear alone.  Loadable by transformers alone and exactly 2:4, but
      the side path's contribution is gone (the function changes).

    A Hugging Face model's ``config.lowprec`` is updated: "fold" and "drop" leave a plain
    model (``from_pretrained`` of the original class loads it exactly), "keep" records the
    side paths for ``lowprec.load_pretrained``."""
    if low_rank is not None and low_rank not in LOW_RANK_CHOICES:
        raise ValueError(f"low_rank must be one of {LOW_RANK_CHOICES}, got {low_rank!r}")
    with_side = [n for n, m in model.named_modules() if isinstance(m, SparseLinear) and m.slorb_k]
    if with_side and low_rank is None:
        raise ValueError(
            f"{len(with_side)} layers (e.g. {with_side[0]!r}) carry an SLoRB low-rank side path: pass "
            "low_rank='keep' (exact function and 2:4 weights, loads with lowprec.load_pretrained), 'fold' "
            "(exact function, dense weights, loads with transformers alone) or 'drop' (2:4 weights, loads "
            "with transformers alone, the side path's contribution removed)")
    masks = cast_masks(model, optimizer)
    cast = {name: masks[mod] for name, mod in model.named_modules() if mod in masks}
    out = model if inplace else copy.deepcopy(model)
    side_ranks = {}

    def new_module(name, mod):
        if isinstance(mod, SparseLinear):
            new = _export_sparse_linear(mod, low_rank)
            if isinstance(new, SparseWithLowRank):
                side_ranks[name] = new.down.out_features
            return new
        if isinstance(mod, CASTLinear):
            lin = _linear(mod.effective_weight() * cast[name].to(mod.weight.device), mod.bias)
            lin.is_2to4 = True
            return lin
        return None

    replaced = _replace(out, new_module)
    if not replaced:
        raise ValueError("the model holds no SparseLinear or CASTLinear layer to export")
    hf_config = getattr(out, "config", None)
    if hf_config is not None and callable(getattr(hf_config, "to_dict", None)):
        hf_config.lowprec = None
        if side_ranks:
            record_conversion(out, SideLowRankLayout(side_ranks), 0, sorted(side_ranks))
    return out


@dataclass(frozen=True)
class SideLowRankLayout:
    """The converter ``lowprec.load_pretrained`` uses to rebuild an export with
    ``low_rank="keep"``: each named nn.Linear becomes a ``SparseWithLowRank`` shell of the
    recorded rank (its weights then come from the saved state)."""
    ranks: Dict[str, int] = field(default_factory=dict)

    def can_convert(self, module: nn.Module) -> bool:
        return type(module) is nn.Linear

    def convert_module(self, module: nn.Linear, name: str = ""):
        if name not in self.ranks:
            return "not an exported SLoRB layer"
        r = self.ranks[name]
        dev, dt = module.weight.device, module.weight.dtype
        down = nn.Linear(module.in_features, r, bias=False, device=dev, dtype=dt)
        up = nn.Linear(r, module.out_features, bias=False, device=dev, dtype=dt)
        module.is_2to4 = True
        return SparseWithLowRank(module, down, up)


def _replace(model: nn.Module, fn, prefix: str = "") -> int:
    count = 0
    for child_name, child in list(model.named_children()):
        fqn = f"{prefix}.{child_name}" if prefix else child_name
        new = fn(fqn, child)
        if new is not None:
            setattr(model, child_name, new)
            count += 1
        else:
            count += _replace(child, fn, fqn)
    return count


def sparse_linears(model: nn.Module, pattern: Optional[str] = None):
    """(name, module) of every layer ``export`` made sparse: flagged with its
    ``sparsity_pattern`` ("2:4", "4:8 pair-wise", ...) or ``is_2to4``; only those of
    ``pattern`` when given."""
    out = []
    for name, mod in model.named_modules():
        found = getattr(mod, "sparsity_pattern", "2:4" if getattr(mod, "is_2to4", False) else None)
        if found is not None and (pattern is None or found == pattern):
            out.append((name, mod))
    return out


class _CompressedLinear(nn.Module):
    """A sparse linear layer stored compressed: ``values`` (out, in/2) and ``meta`` uint8;
    subclasses give the pattern (``PATTERN``), its checks and its codec."""

    PATTERN = ""

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features, self.out_features = values.shape[1] * 2, values.shape[0]

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def to_linear(self) -> nn.Linear:
        lin = _linear(self.dense_weight(), self.bias)
        lin.is_2to4 = self.PATTERN == "2:4"
        lin.sparsity_pattern = self.PATTERN
        return lin

    def forward(self, x):
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.PATTERN} compressed"


class Compressed24Linear(_CompressedLinear):
    """A 2:4 linear layer stored compressed: ``values`` (out, in/2) and ``meta`` (out, in/8) uint8."""

    PATTERN = "2:4"

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Compressed24Linear":
        w = lin.weight.detach()
        groups = (w.reshape(-1, 4) != 0).sum(-1)
        if bool((groups > 2).any()):
            raise ValueError("weight is not 2:4 (a group of 4 holds more than 2 non-zeros)")
        mask = nm_mask(w.float().abs())                  # keeps every non-zero (ties: lower index)
        values, meta = lowprec.reference.sparsity.compress_24(w, mask)
        return cls(values, meta, lin.bias)

    def dense_weight(self) -> torch.Tensor:
        return lowprec.reference.sparsity.decompress_24(self.values, self.meta)


class Compressed48PairwiseLinear(_CompressedLinear):
    """A 4:8 pair-wise sparse linear layer stored compressed: ``values`` (out, in/2) and
    ``meta`` (out, in/16) uint8, two 2-bit kept-pair indices per group of 8."""

    PATTERN = "4:8 pair-wise"

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Compressed48PairwiseLinear":
        w = lin.weight.detach()
        pairs_nonzero = (w.reshape(-1, 4, 2) != 0).any(-1)
        if bool((pairs_nonzero.sum(-1) > 2).any()):
            raise ValueError("weight is not 4:8 pair-wise (a group of 8 holds non-zeros in more than 2 pairs)")
        # keeps every non-zero pair (a pair with a non-zero has score > 0; ties: lower pair)
        mask = pairwise_48_mask(pairs_nonzero.to(torch.float32).repeat_interleave(2, -1).reshape(w.shape))
        values, meta = lowprec.reference.sparsity.compress_48_pairwise(w, mask)
        return cls(values, meta, lin.bias)

    def dense_weight(self) -> torch.Tensor:
        return lowprec.reference.sparsity.decompress_48_pairwise(self.values, self.meta)


def compress_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Every exported plain nn.Linear (also inside SparseWithLowRank) that is 2:4 ->
    Compressed24Linear, and every one trained 4:8 pair-wise -> Compressed48PairwiseLinear."""
    out = model if inplace else copy.deepcopy(model)
    def fn(name, mod):
        if type(mod) is not nn.Linear:
            return None
        if getattr(mod, "sparsity_pattern", None) == "4:8 pair-wise" and mod.in_features % 16 == 0:
            return Compressed48PairwiseLinear.from_linear(mod)
        if getattr(mod, "is_2to4", False) and mod.in_features % 8 == 0:
            return Compressed24Linear.from_linear(mod)
        return None
    _replace(out, fn)
    return out


def decompress_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    out = model if inplace else copy.deepcopy(model)
    _replace(out, lambda name, mod: mod.to_linear() if isinstance(mod, _CompressedLinear) else None)
    return out


def semi_structured_limits(weight: torch.Tensor) -> Optional[str]:
    """Why ``torch.sparse.to_sparse_semi_structured`` cannot take ``weight`` (None if it can)."""
    if weight.device.type != "cuda":
        return f"semi-structured sparse GEMMs run on CUDA only, the weight is on {weight.device}"
    if weight.dim() != 2 or not weight.is_contiguous():
        return "the weight must be a contiguous 2-D tensor"
    from torch.sparse import SparseSemiStructuredTensor as S, SparseSemiStructuredTensorCUSPARSELT as L
    from torch.sparse import SparseSemiStructuredTensorCUTLASS as C
    cls = C if S._FORCE_CUTLASS else L
    limits = cls._DTYPE_SHAPE_CONSTRAINTS
    if weight.dtype not in limits:
        return f"dtype {weight.dtype} is not supported by {cls.__name__} (supported: {sorted(map(str, limits))})"
    r, c = weight.shape
    lim = limits[weight.dtype]
    if r < lim.sparse_min_rows or r % lim.sparse_min_rows or c < lim.sparse_min_cols or c % lim.sparse_min_cols:
        return (f"shape {tuple(weight.shape)} is not a multiple of ({lim.sparse_min_rows}, {lim.sparse_min_cols}) "
                f"required by {cls.__name__} for {weight.dtype}")
    if not bool(((weight.reshape(-1, 4) != 0).sum(-1) <= 2).all()):
        return "the weight is not 2:4"
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> nn.Module:
    """Swap every exported 2:4 nn.Linear weight for a SparseSemiStructuredTensor (in place).
    Raises with the reason for the first weight that does not meet the limits."""
    for name, mod in sparse_linears(model):
        if type(mod) is nn.Linear:
            why = semi_structured_limits(mod.weight)
            if why:
                raise ValueError(f"{name}: {why}")
            mod.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(mod.weight), requires_grad=False)
    return model
