"""Converter configs for ``lowprec.convert_model``: which layers become what.

Each is a frozen dataclass with ``can_convert(module)`` and
``convert_module(module, name, seed=0)`` (a module, or a string saying why the layer is
skipped), so ``lowprec.convert_model(model, sparse.ASTConfig())`` swaps layers without
lowprec importing sparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Union

import torch
from torch import nn

from lowprec.nn import linear_subclass_reason
from lowprec.recipe import Recipe, get as get_recipe

from .nn import CASTLinear, SparseLinear


def _linear_like(module: nn.Module) -> bool:
    """Every linear layer, so that those a sparse layer cannot replace are reported with a
    reason instead of being passed over silently."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _unsupported(module: nn.Module) -> Optional[str]:
    """Why a linear-like layer is not converted (None for a plain nn.Linear)."""
    if type(module).__name__ == "Conv1D":
        return ("transformers Conv1D (GPT-2) stores W as [in, out] and the 2:4 groups run along in_features "
                "of an [out, in] weight; not converted")
    return linear_subclass_reason(module)


@dataclass(frozen=True)
class _MaskedConfig:
    n: int = 2
    m: int = 4
    score: str = "magnitude"
    transposable: bool = False
    input_norms: Optional[Dict[str, torch.Tensor]] = field(default=None, compare=False, repr=False)
    # "nm": any N of M; "pairwise": 4:8 as 2 of 4 aligned pairs (sparse FP4 tensor cores)
    pattern: str = "nm"

    def __post_init__(self):
        if not 0 < self.n <= self.m:
            raise ValueError(f"need 0 < n <= m, got {self.n}:{self.m}")
        if self.pattern not in ("nm", "pairwise"):
            raise ValueError(f"unknown pattern {self.pattern!r}: 'nm' or 'pairwise'")
        if self.pattern == "pairwise" and (self.n, self.m) != (4, 8):
            raise ValueError(f"the pair-wise pattern is 4:8 (n=4, m=8), got {self.n}:{self.m}")
        if self.score not in ("magnitude", "wanda"):
            raise ValueError(f"unknown score {self.score!r}: 'magnitude' or 'wanda'")
        if self.score == "wanda" and self.input_norms is None:
            raise ValueError("score='wanda' needs input_norms (sparse.collect_input_norms on calibration batches)")
        if self.transposable and self.pattern == "nm" and (self.n, self.m) != (2, 4):
            raise ValueError("transposable masks are 2:4 or 4:8 pair-wise")

    def can_convert(self, module: nn.Module) -> bool:
        return _linear_like(module)

    def _reason(self, module: nn.Linear, name: str, extra_divisor: int = 0) -> Optional[str]:
        if _unsupported(module):
            return _unsupported(module)
        if module.in_features % self.m:
            return f"in_features {module.in_features} is not a multiple of the group size {self.m}"
        t = 8 if self.pattern == "pairwise" else 4
        if self.transposable and module.out_features % t:
            return f"out_features {module.out_features} is not a multiple of {t} (transposable masks)"
        if extra_divisor and module.in_features % extra_divisor:
            return f"in_features {module.in_features} is not a multiple of the SLoRB block {extra_divisor}"
        if self.score == "wanda" and name not in self.input_norms:
            return "no calibration input norms for this layer (Wanda scores)"
        return None

    def _common(self, name: str) -> dict:
        norm = self.input_norms.get(name) if self.input_norms is not None else None
        return dict(n=self.n, m=self.m, score=self.score, transposable=self.transposable, input_norm=norm,
                    pattern=self.pattern)


@dataclass(frozen=True)
class SRSTEConfig(_MaskedConfig):
    """SR-STE: mask refreshed every ``mask_interval`` forwards, decay λ_w (1 − M) ⊙ W on the gradient."""
    decay: float = 2e-4
    mask_interval: int = 1

    def convert_module(self, module, name: str = "", seed: int = 0):
        why = self._reason(module, name)
        return why or SparseLinear.from_linear(module, mask_interval=self.mask_interval, srste_decay=self.decay,
                                               name=name, seed=seed, **self._common(name))


@dataclass(frozen=True)
class ASTConfig(_MaskedConfig):
    """AST: mask every T_m forwards, annealed decay in ``ASTAdamW`` (lam, ramp_steps), SLoRB
    with block ``slorb_k`` (0 disables), distillation α CE + (1 − α) T² KL."""
    mask_interval: int = 10
    lam: float = 1e-4
    ramp_steps: int = 250
    slorb_k: int = 16
    slorb_train_p: bool = False
    alpha: float = 1 / 3
    temperature: float = 2.0
    hidden_weight: float = 0.0

    def convert_module(self, module, name: str = "", seed: int = 0):
        why = self._reason(module, name, self.slorb_k)
        return why or SparseLinear.from_linear(module, mask_interval=self.mask_interval, slorb_k=self.slorb_k,
                                               slorb_train_p=self.slorb_train_p, name=name, seed=seed,
                                               **self._common(name))


@dataclass(frozen=True)
class CASTConfig:
    """CAST: dense forward with weight scaling A (R × n_scale); AdamS (lam, mask_interval,
    total_steps) owns the mask; distillation η KL + (1 − η) CE at temperature 1."""
    n_scale: int = 2
    lam: float = 4e-7
    mask_interval: int = 10
    eta: float = 1 / 3
    temperature: float = 1.0

    def __post_init__(self):
        if self.n_scale < 1 or self.mask_interval < 1 or not 0 <= self.eta <= 1:
            raise ValueError("need n_scale >= 1, mask_interval >= 1 and 0 <= eta <= 1")

    def can_convert(self, module: nn.Module) -> bool:
        return _linear_like(module)

    def convert_module(self, module, name: str = "", seed: int = 0):
        if _unsupported(module):
            return _unsupported(module)
        if module.in_features % 4:
            return f"in_features {module.in_features} is not a multiple of 4 (2:4 groups)"
        if module.in_features % self.n_scale:
            return f"in_features {module.in_features} is not divisible by n_scale={self.n_scale}"
        return CASTLinear(module, self.n_scale, name=name)


@dataclass(frozen=True)
class SparseFP4Config:
    """N:M sparsity composed with FP4: the kept weights W ⊙ M go through ``recipe``'s
    quantized GEMMs (block scales over the kept values, pruned entries are zeros). With
    ``sparse=SRSTEConfig(n=4, m=8, pattern="pairwise")`` (or ASTConfig) the mask has the 4:8
    pair-wise pattern that sparse FP4 tensor cores take on one operand."""
    sparse: Union[SRSTEConfig, ASTConfig] = field(default_factory=SRSTEConfig)
    recipe: Union[Recipe, str] = "nvfp4"

    def __post_init__(self):
        if not isinstance(self.sparse, (SRSTEConfig, ASTConfig)):
            raise TypeError("SparseFP4Config composes FP4 with SRSTEConfig or ASTConfig (CAST's forward is dense)")
        object.__setattr__(self, "recipe", get_recipe(self.recipe))

    def can_convert(self, module: nn.Module) -> bool:
        return self.sparse.can_convert(module)

    def convert_module(self, module, name: str = "", seed: int = 0):
        why = _unsupported(module) or self.recipe.shape_mismatch(module.in_features, module.out_features)
        if why:
            return why
        new = self.sparse.convert_module(module, name, seed=seed)
        if isinstance(new, str):
            return new
        new.set_recipe(self.recipe)
        return new
