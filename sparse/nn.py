"""Sparse linear layers.

``SparseLinear`` (SR-STE and AST):  y = x (W ⊙ M)^T + b  [+ (x P^T) S^T with SLoRB]
  - M is a bool buffer (checkpointed), recomputed from the score of W every
    ``mask_interval`` training forwards; each refresh logs the flip rate against the
    previous and the initial mask.
  - SLoRB: P ∈ {0,1}^{(d/k)×d} sums each block of k inputs; S ∈ R^{out×d/k} starts at the
    block means of the pruned weights, S[r, i] = mean_{c in block i} ((1 − M) ⊙ W)[r, c].
  - With a lowprec ``Recipe`` the masked weight goes through the recipe's FP4 GEMMs, so
    block scales are taken over the kept values (pruned entries are zeros).
``CASTLinear``: dense forward with learnable weight scaling,
  W_eff[r, c] = A[r, ⌊c / (C / n)⌋] · W[r, c], A initialized to ones; AdamS owns the mask.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowprec.autograd import plan_for, quant_linear, slot_offsets
from lowprec.replay import Record, recomputing
from lowprec.sr_state import SRStateMixin
from lowprec.nn import layer_seed
from lowprec.recipe import get as get_recipe

from .autograd import masked_weight
from .masks import flip_rate, scores_for, sparsity_mask


def slorb_projection(in_features: int, k: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """P (d/k × d): row i is 1 on columns [ik, ik + k)."""
    if k <= 0 or in_features % k:
        raise ValueError(f"SLoRB block size {k} must divide in_features {in_features}")
    return torch.repeat_interleave(torch.eye(in_features // k, device=device, dtype=dtype), k, dim=1)


def slorb_init(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """S[r, i] = mean over block i of the pruned weights ((1 − M) ⊙ W)[r, ik:ik+k]."""
    pruned = weight.detach().float() * torch.logical_not(mask)
    return pruned.reshape(weight.shape[0], -1, k).mean(-1).to(weight.dtype)


class SparseLinear(SRStateMixin, nn.Module):
    """N:M-masked linear layer with straight-through gradients (SR-STE / AST)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, **options):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self._configure(**options)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "SparseLinear":
        """Wrap ``linear`` reusing its weight and bias parameters (options as in __init__)."""
        s = cls.__new__(cls)
        nn.Module.__init__(s)
        s.in_features, s.out_features = linear.in_features, linear.out_features
        s.weight, s.bias = linear.weight, linear.bias
        s._configure(**options)
        return s

    def _configure(self, *, n: int = 2, m: int = 4, mask_interval: int = 1, srste_decay: float = 0.0,
                   score: str = "magnitude", transposable: bool = False, slorb_k: int = 0,
                   slorb_train_p: bool = False, recipe=None, input_norm: Optional[torch.Tensor] = None,
                   seed: int = 0, name: str = "", pattern: str = "nm"):
        if self.in_features % m:
            raise ValueError(f"in_features {self.in_features} is not a multiple of the group size m={m}")
        if pattern == "pairwise" and (n, m) != (4, 8):
            raise ValueError(f"the pair-wise pattern is 4:8, got {n}:{m}")
        if pattern == "pairwise" and transposable and self.out_features % 8:
            raise ValueError("transposable 4:8 pair-wise masks need out_features to be a multiple of 8")
        if pattern == "nm" and transposable and ((n, m) != (2, 4) or self.out_features % 4):
            raise ValueError("transposable masks are 2:4 and need out_features to be a multiple of 4")
        if score not in ("magnitude", "wanda"):
            raise ValueError(f"unknown score {score!r}: 'magnitude' or 'wanda'")
        self.n, self.m = n, m
        self.mask_interval, self.srste_decay = int(mask_interval), float(srste_decay)
        self.score, self.transposable, self.pattern = score, transposable, pattern
        dev = self.weight.device
        if input_norm is not None:
            self.register_buffer("input_norm", input_norm.detach().float().to(dev))
        else:
            self.input_norm = None
        mask = self.compute_mask()
        self.register_buffer("mask", mask)
        self.register_buffer("initial_mask", mask.clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=dev))
        self.flip_history: List[dict] = []
        self.slorb_k = int(slorb_k)
        if self.slorb_k:
            p = slorb_projection(self.in_features, self.slorb_k, dev, self.weight.dtype)
            if slorb_train_p:
                self.slorb_p = nn.Parameter(p)
            else:
                self.register_buffer("slorb_p", p)
            self.slorb_s = nn.Parameter(slorb_init(self.weight, mask, self.slorb_k))
            for p_ in (self.slorb_s, getattr(self, "slorb_p", None)):   # a frozen base stays frozen
                if isinstance(p_, nn.Parameter):
                    p_.requires_grad_(self.weight.requires_grad)
        self.name = name
        self._init_sr_state(layer_seed(seed, name), dev)    # SR seed and offset live in state_dict()
        self.set_recipe(recipe)

    def set_recipe(self, recipe) -> None:
        """Run the masked weight through ``recipe``'s quantized GEMMs (None: plain GEMM)."""
        self.recipe = get_recipe(recipe) if recipe is not None else None
        if self.recipe is not None:
            why = self.recipe.shape_mismatch(self.in_features, self.out_features)
            if why:
                raise ValueError(why)
            self._plan = plan_for(self.recipe)

    # -- mask ---------------------------------------------------------------------------
    @torch.no_grad()
    def compute_mask(self) -> torch.Tensor:
        scores = scores_for(self.weight, self.score, self.input_norm)
        return sparsity_mask(scores.float().contiguous(), self.n, self.m, self.pattern, self.transposable)

    @torch.no_grad()
    def refresh_mask(self) -> dict:
        """Recompute M from the current weights (in place) and log the flip rates."""
        new = self.compute_mask()
        rec = {"step": int(self.step), "vs_previous": flip_rate(new, self.mask),
               "vs_initial": flip_rate(new, self.initial_mask)}
        for pending in self._replay.pending():   # forwards awaiting a recompute keep the mask they used
            if pending.extra.get("mask") is self.mask:
                pending.extra["mask"] = self.mask.clone()
        self.mask.copy_(new)
        self.flip_history.append(rec)
        return rec

    def sparse_weight(self) -> torch.Tensor:
        return (self.weight * self.mask).detach()

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x (W ⊙ M)ᵀ + b (+ the SLoRB path).  In training mode every forward counts a step,
        and M is refreshed first when the count reaches a multiple of ``mask_interval``
        (evaluate under ``model.eval()``).  An activation-checkpoint recompute replays the
        mask and stochastic-rounding offsets of the forward it recomputes and counts nothing
        (lowprec.replay).  Under torch.compile the bookkeeping runs eagerly (a graph break:
        it branches on the step count) and the GEMMs compile."""
        mask, rng, record = self._begin_forward(x.numel() // x.shape[-1])
        w = masked_weight(self.weight, mask, self.srste_decay)
        if rng is None:
            y = F.linear(x, w, self.bias)
        else:
            y = quant_linear(x, w, self.bias, self._plan, rng, self.seed)
        if self.slorb_k:
            y = y + F.linear(F.linear(x, self.slorb_p), self.slorb_s)
        if record is not None:
            self._end_forward(record, y)
        return y

    @torch.compiler.disable
    def _begin_forward(self, tokens: int):
        """(mask, SR (seed, offset) pair or None when unquantized, replay record to push or None)."""
        quantized = self.recipe is not None and self.recipe.quantized
        if recomputing():
            replay = self._replay.pop(f"SparseLinear {self.name!r}")
            return replay.extra["mask"], replay.rng, None
        if self.training:
            if int(self.step) > 0 and self.mask_interval > 0 and int(self.step) % self.mask_interval == 0:
                self.refresh_mask()
            self.step.add_(1)
        rng = None
        if quantized:
            _, consumed = slot_offsets(tokens, self.in_features, self.out_features, self._plan)
            rng, _ = self._forward_rng(consumed)
        keep = self.training or torch.is_grad_enabled()
        return self.mask, rng, (Record(rng, {"mask": self.mask}) if keep else None)

    @torch.compiler.disable
    def _end_forward(self, record: Record, y: torch.Tensor) -> None:
        self._replay.push(record, y)

    def revert(self) -> nn.Linear:
        """A plain dense nn.Linear sharing the (unmasked) weight and bias."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        pattern = " pair-wise" if self.pattern == "pairwise" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.n}:{self.m}{pattern}, "
                f"mask_interval={self.mask_interval}, srste_decay={self.srste_decay}, score={self.score!r}, "
                f"transposable={self.transposable}, slorb_k={self.slorb_k}, "
                f"recipe={self.recipe.name if self.recipe is not None else None}")


class CASTLinear(nn.Module):
    """Dense forward with learnable per-(row, column-group) weight scaling A (R × n)."""

    def __init__(self, linear: nn.Linear, n_scale: int = 2, name: str = ""):
        super().__init__()
        if linear.in_features % n_scale:
            raise ValueError(f"in_features {linear.in_features} is not divisible by n_scale={n_scale}")
        self.in_features, self.out_features, self.n_scale = linear.in_features, linear.out_features, n_scale
        self.weight, self.bias = linear.weight, linear.bias
        self.scale = nn.Parameter(torch.ones(linear.out_features, n_scale, device=linear.weight.device,
                                             dtype=linear.weight.dtype),
                                  requires_grad=linear.weight.requires_grad)     # a frozen base stays frozen
        self.name = name

    def effective_weight(self) -> torch.Tensor:
        """W_eff[r, c] = A[r, ⌊c / (C / n)⌋] · W[r, c]."""
        return self.weight * torch.repeat_interleave(self.scale, self.in_features // self.n_scale, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def revert(self) -> nn.Linear:
        """A plain nn.Linear holding the folded weight A ⊙ W (dense, not pruned)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.effective_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_scale={self.n_scale}"
