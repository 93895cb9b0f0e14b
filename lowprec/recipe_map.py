"""Per-layer recipes: ``convert_model(model, {"lm_head": None, "*.mlp.*": "nvfp4", "*": "mxfp8"})``.

A mapping from layer-name patterns (``fnmatch`` syntax, matched against the fully qualified
name) to a recipe, a recipe name, or None (keep the layer in high precision).  The first
pattern that matches a layer decides, in the mapping's order; a layer no pattern matches is
left as it is and reported.  This is how a precision plan (which layers stay in BF16) is
applied, and it is recorded in ``config.lowprec`` like any conversion."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Dict, Optional, Union

from .recipe import Recipe, get


@dataclass(frozen=True)
class RecipeMap:
    rules: Dict[str, Optional[Union[Recipe, str]]] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.rules, dict) or not self.rules:
            raise TypeError("RecipeMap takes a non-empty dict {layer-name pattern: recipe, name or None}")
        resolved = {}
        for pattern, recipe in self.rules.items():
            if not isinstance(pattern, str):
                raise TypeError(f"RecipeMap patterns are strings, got {pattern!r}")
            resolved[pattern] = None if recipe is None else get(recipe)    # unknown names raise here
        object.__setattr__(self, "rules", resolved)

    def recipe_for(self, name: str):
        """(matched, recipe or None)."""
        for pattern, recipe in self.rules.items():
            if fnmatch.fnmatchcase(name, pattern):
                return True, recipe
        return False, None

    def can_convert(self, module) -> bool:
        from .nn import QuantLinear
        return QuantLinear.accepts(module)

    def convert_module(self, module, name: str = "", seed: int = 0):
        from .nn import QuantLinear
        matched, recipe = self.recipe_for(name)
        if not matched:
            return "no RecipeMap pattern matches this layer"
        if recipe is None:
            return "RecipeMap keeps it in high precision"
        return QuantLinear.from_module(module, recipe, name=name, seed=seed)
